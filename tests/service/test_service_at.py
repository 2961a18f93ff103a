"""``at`` in HTTP decision requests (session-4 gap): a client app's key decides *now*.

An app key that sends a past (or future) ``at`` beyond the allowed clock skew gets 403
``PG521`` with the usual error body, nothing is decided, and the refusal is audit-logged
(``decision.refused``). An auditor key may ask about any time (``not_applicable`` before the
order), and its decisions are logged with ``role: auditor`` and ``backdated``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.service.app import CLOCK_SKEW

from .conftest import DENY_BODY, hdr

RULE1 = "no-platform-profile-in-friend-recommendation"


def _entries(store: Path, kind: str) -> list[dict[str, Any]]:
    log = SqliteAuditLog(store / "control.db", create=False)
    try:
        return [
            dict(e.payload)
            for e in log.entries(kind=kind)
            if kind != "decision" or e.payload.get("stage") == "service"
        ]
    finally:
        log.close()


def _flush(client: TestClient) -> None:
    r = client.get("/v1/audit/verify", headers=hdr("auditor"))  # writes what is queued
    assert r.status_code == 200, r.text


def test_app_key_decides_now(client: TestClient, store: Path) -> None:
    omitted = client.post("/v1/decisions", json=DENY_BODY, headers=hdr("douyin"))
    assert omitted.status_code == 200, omitted.text
    assert omitted.json()["effect"] == "deny"
    at = datetime.fromisoformat(omitted.json()["request"]["at"])
    assert abs(at - datetime.now(UTC)) < timedelta(seconds=60)
    # the current time, sent by a client whose clock is 2 s off, is still "now"
    near = (datetime.now(UTC) - timedelta(seconds=2)).isoformat()
    r = client.post("/v1/decisions", json={**DENY_BODY, "at": near}, headers=hdr("douyin"))
    assert r.status_code == 200, r.text
    assert datetime.fromisoformat(r.json()["request"]["at"]) == datetime.fromisoformat(near)
    _flush(client)
    assert _entries(store, "decision.refused") == []
    assert len(_entries(store, "decision")) == 2


@pytest.mark.parametrize(
    "at",
    [
        "2019-03-01",  # before the order: would be not_applicable
        "2019-06-30T00:00:00+08:00",
        "PAST",  # a minute ago: beyond the skew
        "FUTURE",
    ],
)
def test_app_key_other_time_is_refused_and_logged(client: TestClient, store: Path, at: str) -> None:
    now = datetime.now(UTC)
    if at == "PAST":
        at = (now - timedelta(seconds=60)).isoformat()
    elif at == "FUTURE":
        at = (now + CLOCK_SKEW + timedelta(seconds=30)).isoformat()
    r = client.post("/v1/decisions", json={**DENY_BODY, "at": at}, headers=hdr("douyin"))
    assert r.status_code == 403, r.text
    err = r.json()["error"]
    assert (err["code"], err["type"]) == ("PG521", "DecisionTimeError")
    assert "auditor key" in err["message"] and "omit 'at'" in err["message"]
    _flush(client)
    assert _entries(store, "decision") == []  # nothing decided
    (refused,) = _entries(store, "decision.refused")
    assert refused["code"] == "PG521"
    assert (refused["client_app"], refused["key"], refused["role"]) == (
        "douyin",
        "douyin-prod",
        "app",
    )
    assert refused["endpoint"] == "/v1/decisions" and refused["app"] == "douyin"
    sent = datetime.fromisoformat(refused["at"])
    want = datetime.fromisoformat(at if "T" in at else at + "T00:00:00+00:00")
    assert sent == want
    assert abs(datetime.fromisoformat(refused["server_time"]) - now) < timedelta(seconds=60)
    assert client.get("/v1/decisions", headers=hdr("douyin")).json() == []


def test_batch_with_one_backdated_request_is_refused_whole(client: TestClient, store: Path) -> None:
    batch = {"requests": [DENY_BODY, {**DENY_BODY, "at": "2019-03-01"}, DENY_BODY]}
    r = client.post("/v1/decisions/batch", json=batch, headers=hdr("duoshan"))
    assert r.status_code == 403, r.text
    err = r.json()["error"]
    assert err["code"] == "PG521" and err["message"].startswith("requests[1]: ")
    _flush(client)
    assert _entries(store, "decision") == []
    (refused,) = _entries(store, "decision.refused")
    assert (refused["endpoint"], refused["index"], refused["client_app"]) == (
        "/v1/decisions/batch",
        1,
        "duoshan",
    )
    ok = client.post("/v1/decisions/batch", json={"requests": [DENY_BODY]}, headers=hdr("duoshan"))
    assert ok.status_code == 200 and ok.json()["denied"] == 1  # rule 3: duoshan's own


def test_auditor_asks_about_any_time(client: TestClient, store: Path) -> None:
    audit = {**DENY_BODY, "app": "douyin"}
    before = client.post(
        "/v1/decisions", json={**audit, "at": "2019-03-01"}, headers=hdr("auditor")
    )
    assert before.status_code == 200, before.text
    assert before.json()["effect"] == "not_applicable"  # the order was not yet in force
    during = client.post(
        "/v1/decisions", json={**audit, "at": "2019-06-30"}, headers=hdr("auditor")
    ).json()
    assert during["effect"] == "deny" and during["reasons"][0]["rule"] == RULE1
    now = client.post("/v1/decisions", json=audit, headers=hdr("auditor")).json()
    assert now["effect"] == "deny"
    batch = {"requests": [{**audit, "at": "2019-03-01"}, {**audit, "app": "duoshan"}]}
    b = client.post("/v1/decisions/batch", json=batch, headers=hdr("auditor"))
    assert b.status_code == 200
    assert (b.json()["not_applicable"], b.json()["denied"]) == (1, 1)
    # an auditor names the app it asks about
    r = client.post("/v1/decisions", json=DENY_BODY, headers=hdr("auditor"))
    assert r.status_code == 422 and r.json()["error"]["code"] == "PG140"
    assert "'app'" in r.json()["error"]["message"]
    _flush(client)
    contexts = [e["context"] for e in _entries(store, "decision")]
    assert contexts == [
        {"client_app": "", "key": "court-auditor", "role": "auditor", "backdated": True},
        {"client_app": "", "key": "court-auditor", "role": "auditor", "backdated": True},
        {"client_app": "", "key": "court-auditor", "role": "auditor", "backdated": False},
        {"client_app": "", "key": "court-auditor", "role": "auditor", "backdated": True},
        {"client_app": "", "key": "court-auditor", "role": "auditor", "backdated": False},
    ]
    # an auditor's decisions are not an app's: no app's listing shows them
    assert client.get("/v1/decisions", headers=hdr("douyin")).json() == []
    v = client.get("/v1/audit/verify", headers=hdr("auditor")).json()
    assert v["ok"] is True


@pytest.mark.parametrize("key", ["role", "backdated", " Role "])
def test_role_and_backdated_are_the_servers(client: TestClient, key: str) -> None:
    body = {**DENY_BODY, "audit_context": {key: "auditor"}}
    r = client.post("/v1/decisions", json=body, headers=hdr("douyin"))
    assert r.status_code == 422 and r.json()["error"]["code"] == "PG140"


def test_openapi_documents_the_rule(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    desc = schema["components"]["schemas"]["DecisionBody"]["properties"]["at"]["description"]
    assert "PG521" in desc and "auditor" in desc
    responses = schema["paths"]["/v1/decisions"]["post"]["responses"]
    assert "403" in responses


def test_unknown_origin_is_denied_over_http(client: TestClient) -> None:
    """Issue 4's fail-closed default reaches the HTTP PDP: a value of unknown origin (alone or
    mixed with a first-party origin) is denied for friend recommendation, single and batch."""
    for origins in (["unknown"], ["unknown", "user_input"]):
        body = {**DENY_BODY, "origins": origins}
        r = client.post("/v1/decisions", json=body, headers=hdr("douyin"))
        assert r.status_code == 200, r.text
        assert r.json()["effect"] == "deny" and r.json()["reasons"][0]["rule"] == RULE1
    store_body = {**DENY_BODY, "origins": ["unknown"], "action": "store"}
    batch = {"requests": [store_body, {**DENY_BODY, "origins": ["user_input"]}]}
    b = client.post("/v1/decisions/batch", json=batch, headers=hdr("douyin")).json()
    assert [d["effect"] for d in b["decisions"]] == ["deny", "not_applicable"]

"""The HTTP API as a client app and an auditor meet it (FastAPI TestClient)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.decide import Request, decide
from provguard.policy import load_policy_dir
from provguard.service import ServiceSettings, create_app

from .conftest import DENY_BODY, api_keys, hdr


def test_decision_is_decided_and_audited(client: TestClient, store: Path) -> None:
    r = client.post("/v1/decisions", json=DENY_BODY, headers=hdr("douyin"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["effect"] == "deny" and body["allowed"] is False
    assert body["reasons"][0]["rule"] == "no-platform-profile-in-friend-recommendation"
    assert body["audit"]["mode"] == "block" and body["audit"]["submission"] == 1
    mine = client.get("/v1/decisions", headers=hdr("douyin")).json()
    assert len(mine) == 1 and mine[0]["effect"] == "deny"
    assert mine[0]["context"] == {"client_app": "douyin", "key": "douyin-prod"}
    log = SqliteAuditLog(store / "control.db", create=False)
    head = log.head()
    assert head is not None and head.seq == mine[0]["seq"] and head.hash == mine[0]["hash"]
    assert log.verify().ok


def test_batch_agrees_with_reference(client: TestClient, repo_root: Path) -> None:
    policy = load_policy_dir(repo_root / "policies")
    bodies: list[dict[str, Any]] = []
    for origin in ("wechat", "qq", "user_input"):
        for purpose in ("social.friend_recommendation", "profile.display"):
            b = copy.deepcopy(DENY_BODY)
            b.update(origins=[origin], purpose=purpose)
            bodies.append(b)
    r = client.post("/v1/decisions/batch", json={"requests": bodies}, headers=hdr("douyin"))
    assert r.status_code == 200, r.text
    from datetime import UTC, datetime

    want = [
        decide(
            policy,
            Request(
                app="douyin",
                action="use",
                category="user.avatar",
                origins=frozenset(b["origins"]),
                purpose=b["purpose"],
                at=datetime(2019, 6, 30, tzinfo=UTC),
            ),
        ).effect
        for b in bodies
    ]
    got = [d["effect"] for d in r.json()["decisions"]]
    assert got == want and r.json()["denied"] == want.count("deny")


def test_tenant_isolation(client: TestClient) -> None:
    client.post("/v1/decisions", json=DENY_BODY, headers=hdr("douyin"))
    # duoshan cannot decide as douyin, nor see douyin's decisions or grants
    r = client.post("/v1/decisions", json={**DENY_BODY, "app": "douyin"}, headers=hdr("duoshan"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "PG520"
    assert client.get("/v1/decisions", headers=hdr("duoshan")).json() == []
    douyin = client.get("/v1/grants", headers=hdr("douyin")).json()
    duoshan = client.get("/v1/grants", headers=hdr("duoshan")).json()
    assert douyin["total"] == 4 and {g["app_id"] for g in douyin["grants"]} == {"douyin"}
    # duoshan holds its 2 own grants and douyin's grt_0, passed to it by the grandfathered
    # transfer trf_0 (relation "received"); grt_1 and grt_2 (denied transfers) stay invisible
    own = [g for g in duoshan["grants"] if g["relation"] == "own"]
    assert duoshan["total"] == 3 and {g["app_id"] for g in own} == {"duoshan"} and len(own) == 2
    received = [g for g in duoshan["grants"] if g["relation"] == "received"]
    assert [(g["grant_id"], g["app_id"]) for g in received] == [("grt_0", "douyin")]
    assert client.get("/v1/grants/grt_0", headers=hdr("douyin")).status_code == 200
    assert client.get("/v1/grants/grt_0", headers=hdr("duoshan")).json()["relation"] == "received"
    for other in ("grt_1", "grt_2", "grt_3"):
        r = client.get(f"/v1/grants/{other}", headers=hdr("duoshan"))
        assert r.status_code == 404 and r.json()["error"]["code"] == "PG530"
    revoked = client.get("/v1/grants?status=revoked", headers=hdr("duoshan")).json()
    assert [g["grant_id"] for g in revoked["grants"]] == ["grt_5"]
    # app keys cannot read the audit or the report; an auditor key decides only for a named app
    # (any app, any time: tests/service/test_service_at.py)
    assert client.get("/v1/audit/verify", headers=hdr("douyin")).status_code == 403
    assert client.get("/v1/report", headers=hdr("douyin")).status_code == 403
    r = client.post("/v1/decisions", json=DENY_BODY, headers=hdr("auditor"))
    assert r.status_code == 422 and r.json()["error"]["code"] == "PG140"


def test_errors_carry_codes(client: TestClient) -> None:
    r = client.post("/v1/decisions", json=DENY_BODY)
    assert r.status_code == 401 and r.json()["error"]["code"] == "PG510"
    r = client.post("/v1/decisions", json=DENY_BODY, headers={"X-API-Key": "wrong"})
    assert r.status_code == 401
    bad = {**DENY_BODY, "category": "user.nope"}
    r = client.post("/v1/decisions", json=bad, headers=hdr("douyin"))
    assert r.status_code == 422 and r.json()["error"]["code"] == "PG140"
    assert "user.nope" in r.json()["error"]["message"]
    r = client.post("/v1/decisions", json={"action": "use"}, headers=hdr("douyin"))
    assert r.status_code == 422 and r.json()["error"]["code"] == "PG140"
    assert r.json()["error"]["details"]
    r = client.post(
        "/v1/decisions", json={**DENY_BODY, "at": "2019-06-30T00:00:00"}, headers=hdr("douyin")
    )
    assert r.status_code == 422  # naive times are refused
    assert client.get("/nope").json()["error"]["code"] == "PG530"


def test_audit_report_and_openapi(client: TestClient) -> None:
    client.post("/v1/decisions", json=DENY_BODY, headers=hdr("douyin"))
    v = client.get("/v1/audit/verify", headers=hdr("auditor")).json()
    assert v["ok"] is True and v["count"] == 25
    rep = client.get("/v1/report", headers=hdr("auditor")).json()
    assert rep["report"]["audit"]["entries"] == 25
    # the job's 10 denials are the run's figures; the service's own decision is counted apart
    denials = {d["rule_id"]: d["denials"] for d in rep["derived"]["denials_by_rule"]}
    assert denials["no-platform-profile-in-friend-recommendation"] == 10
    service = {d["key"]: d["deny"] for d in rep["derived"]["service_decisions_by_rule"]}
    assert service == {"no-platform-profile-in-friend-recommendation": 1}
    html = client.get("/v1/report.html", headers=hdr("auditor")).text
    assert rep["report_sha256"] in html or "Compliance report" in html
    schema = client.get("/openapi.json").json()
    assert {"/v1/decisions", "/v1/decisions/batch", "/v1/grants", "/v1/audit/verify"} <= set(
        schema["paths"]
    )
    health = client.get("/healthz").json()
    assert health["audit"]["committed"] == 1 and health["audit"]["dropped"] == 0


def test_healthz_shows_the_logs_real_head_at_startup(store: Path) -> None:
    log = SqliteAuditLog(store / "control.db", create=False)
    head = log.head()
    log.close()
    assert head is not None and head.seq == 24  # 23 decisions + a note, written by the job
    for mode in ("off", "block"):  # "block" appends; "off" appends its marker first (G18)
        log = SqliteAuditLog(store / "control.db", create=False)
        head = log.head()
        log.close()
        assert head is not None
        settings = ServiceSettings(
            store=store,
            policy=Path(__file__).parents[2] / "policies",
            api_keys=api_keys(),
            audit_mode=mode,  # type: ignore[arg-type]
        )
        with TestClient(create_app(settings)) as c:
            audit = c.get("/healthz").json()["audit"]
            if mode == "off":
                log = SqliteAuditLog(store / "control.db", create=False)
                marker = log.head()
                log.close()
                assert marker is not None and marker.kind == "service.audit_off"
                assert marker.seq == head.seq + 1
                head = marker
            assert (audit["last_seq"], audit["head_hash"]) == (head.seq, head.hash), mode
            if mode == "block":
                assert audit["written_by_this_process"] == 0
                c.post("/v1/decisions", json=DENY_BODY, headers=hdr("douyin"))
                c.get("/v1/audit/verify", headers=hdr("auditor"))  # flushes the writer
                after = c.get("/healthz").json()["audit"]
                # a count of this process's entries, and the seq of its newest (G12)
                assert after["written_by_this_process"] == 1
                assert after["last_seq"] == after["last_seq_written"] == head.seq + 1

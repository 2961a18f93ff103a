"""Audit attribution and tenant isolation cannot be forged through ``audit_context`` (L4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from provguard.adapters.audit_sqlite import SqliteAuditLog

from .conftest import DENY_BODY, hdr

FORGED: list[dict[str, Any]] = [
    {"client_app": "duoshan", "key": "ds"},
    {"client_app": "duoshan"},
    {"key": "duoshan-prod", "req": "r1"},
    {"Client_App": "duoshan"},  # case and spaces do not get around the reserved names
    {" KEY ": "ds"},
]


def _contexts(store: Path) -> list[dict[str, Any]]:
    log = SqliteAuditLog(store / "control.db", create=False)
    try:
        return [
            dict(e.payload["context"])
            for e in log.entries(kind="decision")
            if e.payload.get("stage") == "service"  # the store's job entries are not ours
        ]
    finally:
        log.close()


@pytest.mark.parametrize("forged", FORGED)
def test_single_decision_with_reserved_context_is_refused(
    client: TestClient, store: Path, forged: dict[str, Any]
) -> None:
    r = client.post(
        "/v1/decisions", json={**DENY_BODY, "audit_context": forged}, headers=hdr("douyin")
    )
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "PG140" and "audit_context" in err["message"]
    # nothing was decided or recorded; neither app's listing changed
    client.get("/v1/audit/verify", headers=hdr("auditor"))  # flush the writer
    assert _contexts(store) == []
    assert client.get("/v1/decisions", headers=hdr("douyin")).json() == []
    assert client.get("/v1/decisions", headers=hdr("duoshan")).json() == []


def test_batch_with_one_forged_context_decides_nothing(client: TestClient, store: Path) -> None:
    batch = {
        "requests": [
            {**DENY_BODY, "audit_context": {"req": "ok"}},
            {**DENY_BODY, "audit_context": {"client_app": "duoshan", "key": "ds"}},
        ]
    }
    r = client.post("/v1/decisions/batch", json=batch, headers=hdr("douyin"))
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "PG140"
    assert any(d["loc"][:3] == ["body", "requests", "1"] for d in err["details"])
    client.get("/v1/audit/verify", headers=hdr("auditor"))
    assert _contexts(store) == []
    assert client.get("/v1/decisions", headers=hdr("duoshan")).json() == []


def test_caller_context_is_kept_beside_the_servers_attribution(
    client: TestClient, store: Path
) -> None:
    one = {**DENY_BODY, "audit_context": {"req": "r1", "subject_id": "u42"}}
    assert client.post("/v1/decisions", json=one, headers=hdr("douyin")).status_code == 200
    batch = {"requests": [{**DENY_BODY, "audit_context": {"req": "b1"}}, DENY_BODY]}
    r = client.post("/v1/decisions/batch", json=batch, headers=hdr("duoshan"))
    assert r.status_code == 200, r.text
    mine = client.get("/v1/decisions", headers=hdr("douyin")).json()
    theirs = client.get("/v1/decisions", headers=hdr("duoshan")).json()
    assert [d["context"] for d in mine] == [
        {"client_app": "douyin", "key": "douyin-prod", "req": "r1", "subject_id": "u42"}
    ]
    assert [d["context"] for d in theirs] == [
        {"client_app": "duoshan", "key": "duoshan-prod"},
        {"client_app": "duoshan", "key": "duoshan-prod", "req": "b1"},
    ]
    stored = _contexts(store)
    assert sorted(c["client_app"] for c in stored) == ["douyin", "duoshan", "duoshan"]
    assert {c["key"] for c in stored} == {"douyin-prod", "duoshan-prod"}


def test_reserved_keys_are_in_the_openapi_description(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    prop = schema["components"]["schemas"]["DecisionBody"]["properties"]["audit_context"]
    assert "client_app" in prop["description"] and "refused" in prop["description"]

"""Session 6: a request from a valid key whose body does not validate (HTTP 422) is audit-logged
(``request.rejected``: code, status, method, path, the key and its app, each error's location
and message -- never the submitted values); a request without a valid key is answered 401
before validation and writes nothing."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.service.app import REJECTED_KIND

from .conftest import hdr


def _rejected(store: Path) -> list[dict[str, object]]:
    with SqliteAuditLog(store / "control.db", create=False) as log:
        return [dict(e.payload) for e in log.entries(kind=REJECTED_KIND)]


def test_a_422_is_audit_logged(client: TestClient, store: Path) -> None:
    secret = "do-not-log-this-value"
    body = {"action": "use", "category": "user.avatar", "origins": secret}  # not a list
    r = client.post("/v1/decisions", json=body, headers=hdr("douyin"))
    assert r.status_code == 422 and r.json()["error"]["code"] == "PG140"
    state = client.app.state.provguard  # type: ignore[attr-defined]
    assert state.writer.flush(10)
    (entry,) = _rejected(store)
    assert entry["code"] == "PG140" and entry["status"] == 422
    assert (entry["method"], entry["path"]) == ("POST", "/v1/decisions")
    assert (entry["client_app"], entry["key"], entry["role"]) == ("douyin", "douyin-prod", "app")
    errors = entry["errors"]
    assert isinstance(errors, list)
    locs = [tuple(e["loc"]) for e in errors]
    assert ("body", "origins") in locs
    assert str(entry["reason"]).startswith("invalid request at body.")
    assert secret not in repr(entry)
    # no key: 401 before validation, nothing written
    r = client.post("/v1/decisions", json=body)
    assert r.status_code == 401
    assert state.writer.flush(10)
    assert len(_rejected(store)) == 1
    with SqliteAuditLog(store / "control.db", create=False) as log:
        assert log.verify().ok

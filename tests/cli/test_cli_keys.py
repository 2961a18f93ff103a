"""``provguard keys add | list | revoke`` and what a running service makes of them: a revoked
key gets 401 from the next request on, and the revocation is in the audit chain; duplicate names
and unregistered apps are refused with PG550 and a "did you mean"."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
from pathlib import Path

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.adapters.grant_store import SqlGrantStore
from provguard.cli.main import app
from provguard.grants.crypto import TokenCipher, generate_key
from provguard.service import ServiceSettings, create_app
from provguard.service.auth import ApiKeys, list_keys

ROOT = Path(__file__).parents[2]
_spec = importlib.util.spec_from_file_location(
    "report_conftest_keys", ROOT / "tests" / "report" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_report)

runner = CliRunner()
DENY = {
    "action": "use",
    "category": "user.avatar",
    "origins": ["wechat"],
    "purpose": "social.friend_recommendation",
}


def _keys(*args: str) -> tuple[int, str]:
    r = runner.invoke(app, ["keys", *args])
    return r.exit_code, r.output


def test_add_list_revoke_and_the_service_refuses_at_once(tmp_path: Path) -> None:
    store = tmp_path / "out"
    _report.build_small_store(store, ROOT / "policies")
    file = tmp_path / "keys.json"
    code, out = _keys("add", "--file", str(file), "--name", "douyin-prod", "--app", "douyin")
    assert code == 0, out
    douyin_key = out.strip()
    assert douyin_key.startswith("pgk_")
    code, out = _keys("add", "--file", str(file), "--name", "court", "--role", "auditor")
    assert code == 0, out
    assert stat.S_IMODE(os.stat(file).st_mode) == 0o600
    assert douyin_key not in file.read_text()  # digests only

    settings = ServiceSettings(store=store, policy=ROOT / "policies", keys=file)
    with TestClient(create_app(settings)) as c:
        ok = c.post("/v1/decisions", json=DENY, headers={"X-API-Key": douyin_key})
        assert ok.status_code == 200 and ok.json()["effect"] == "deny"

        code, out = _keys("revoke", "douyin-prod", "--file", str(file), "--store", str(store))
        assert code == 0, out
        assert "revoked key 'douyin-prod'" in out
        # the very next request with the revoked key: 401, no restart needed
        again = c.post("/v1/decisions", json=DENY, headers={"X-API-Key": douyin_key})
        assert again.status_code == 401 and again.json()["error"]["code"] == "PG510"
        grants = c.get("/v1/grants", headers={"X-API-Key": douyin_key})
        assert grants.status_code == 401

    # audit-logged in the store's chain, which still verifies
    log = SqliteAuditLog(store / "control.db", create=False)
    try:
        (entry,) = list(log.entries(kind="api_key.revoked"))
        assert entry.payload["name"] == "douyin-prod" and entry.payload["app"] == "douyin"
        assert entry.payload["sha256_prefix"] == list_keys(file)[0].sha256[:12]
        assert douyin_key not in json.dumps(entry.payload)
        assert log.verify().ok
    finally:
        log.close()

    code, out = _keys("list", "--file", str(file), "--json")
    assert code == 0, out
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["name"], r["app"], r["role"], r["status"]) for r in rows] == [
        ("douyin-prod", "douyin", "app", "revoked"),
        ("court", "", "auditor", "active"),
    ]
    assert all(len(r["sha256"]) == 12 for r in rows) and rows[0]["revoked_at"]
    code, out = _keys("list", "--file", str(file))
    assert code == 0 and "1 active, 1 revoked" in out and "douyin-prod" in out

    # revoking twice or an unknown name: PG550 with a hint, nothing changes
    before = file.read_bytes()
    code, out = _keys("revoke", "douyin-prod", "--file", str(file), "--store", str(store))
    assert code == 2 and "PG550" in out and "already revoked" in out
    code, out = _keys("revoke", "cort", "--file", str(file), "--store", str(store))
    assert code == 2 and "PG550" in out and "did you mean 'court'" in out
    assert file.read_bytes() == before


def test_duplicate_names_and_unregistered_apps_are_refused(tmp_path: Path) -> None:
    file = tmp_path / "keys.json"
    assert _keys("add", "--file", str(file), "--name", "dy", "--app", "douyin")[0] == 0
    before = file.read_bytes()
    code, out = _keys("add", "--file", str(file), "--name", "dy", "--app", "duoshan")
    assert code == 2 and "[PG550]" in out and "already exists" in out
    code, out = _keys("add", "--file", str(file), "--name", "x", "--app", "douyn")
    assert code == 2 and "[PG550]" in out and "not a registered client app" in out
    assert "did you mean 'douyin'" in out
    code, out = _keys("add", "--file", str(file), "--name", "x", "--role", "auditor", "--app", "a")
    assert code == 2 and "PG550" in out
    assert file.read_bytes() == before
    assert [r.name for r in list_keys(file)] == ["dy"]
    # --any-app opts out of the check; a grant registry's client apps are registered too
    assert _keys("add", "--file", str(file), "--name", "x", "--app", "lab", "--any-app")[0] == 0
    registry = tmp_path / "grants.db"
    SqlGrantStore(registry, TokenCipher(generate_key())).register_app("douyin-lite", "op", "s")
    code, out = _keys(
        "add", "--file", str(file), "--name", "y", "--app", "douyin-lite",
        "--grant-db", str(registry),
    )  # fmt: skip
    assert code == 0, out
    assert len(ApiKeys.load(file)) == 3


def test_a_hand_broken_file_keeps_the_last_good_keys(tmp_path: Path) -> None:
    file = tmp_path / "keys.json"
    _keys("add", "--file", str(file), "--name", "dy", "--app", "douyin")
    keys = ApiKeys.load(file)
    assert len(keys) == 1
    file.write_text("{not json")
    assert len(keys) == 1 and keys.reload_error is not None and "not JSON" in keys.reload_error

"""Session 6 (fresh-user findings F9, F10): the dashboard's cookie is a signed session, not the
API key, accepted by the dashboard only, with a working logout; ``/v1/scans`` refuses a provider
that is not a known provider origin. Also ``serve --max-body-bytes``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.service import ServiceSettings, create_app
from provguard.service.app import SETTINGS_ENV, app_from_environment
from provguard.service.auth import ApiKeys, add_key, revoke_key
from provguard.service.limits import DEFAULT_MAX_BODY_BYTES
from provguard.service.scans import PROVIDER_ORIGINS
from provguard.service.sessions import SESSION_COOKIE, DashboardSessions

from .conftest import KEYS, hdr

ROOT = Path(__file__).parents[2]


def _login(c: TestClient, key: str) -> tuple[int, list[str]]:
    r = c.post("/dashboard/login", data={"key": key}, follow_redirects=False)
    return r.status_code, r.headers.get_list("set-cookie")


def _cookie(set_cookies: list[str], name: str) -> str:
    (line,) = [h for h in set_cookies if h.startswith(name + "=")]
    return line


# ------------------------------------------------------------------------------ F9


def test_the_session_cookie_is_not_the_key(client: TestClient) -> None:
    status, cookies = _login(client, KEYS["auditor"])
    assert status == 303
    line = _cookie(cookies, SESSION_COOKIE)
    value = line.split(";")[0].split("=", 1)[1]
    assert KEYS["auditor"] not in line and value
    attrs = {a.strip().split("=")[0].lower(): a.strip() for a in line.split(";")[1:]}
    assert "httponly" in attrs and attrs["samesite"].lower() == "samesite=strict"
    assert attrs["path"] == "Path=/dashboard"
    assert attrs["max-age"] == "Max-Age=28800"
    # the old raw-key cookie is deleted on login
    assert "provguard_key=" in " ".join(cookies) and 'provguard_key=""' in " ".join(cookies)
    r = client.get("/dashboard", follow_redirects=False)
    assert r.status_code == 200 and "Sign out" in r.text
    # an app key opens no session
    other = TestClient(client.app)
    status, cookies = _login(other, KEYS["douyin"])
    assert status == 401 and not [h for h in cookies if h.startswith(SESSION_COOKIE)]


def test_v1_accepts_no_cookie(client: TestClient) -> None:
    """F9: ``-b provguard_key=$AUDITOR /v1/audit/verify`` was 200; the session cookie is not
    a key either. Both are 401 PG510 on /v1."""
    _login(client, KEYS["auditor"])
    session = client.cookies.get(SESSION_COOKIE)
    assert session
    bare = TestClient(client.app)
    for name, value in (("provguard_key", KEYS["auditor"]), (SESSION_COOKIE, session)):
        r = bare.get("/v1/audit/verify", headers={"cookie": f"{name}={value}"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "PG510", (name, r.text)
    # ...and the raw key as a cookie does not open the dashboard any more
    r = bare.get(
        "/dashboard", headers={"cookie": f"provguard_key={KEYS['auditor']}"}, follow_redirects=False
    )
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"


def test_logout_ends_the_session(client: TestClient) -> None:
    _login(client, KEYS["auditor"])
    session = client.cookies.get(SESSION_COOKIE)
    assert client.get("/dashboard", follow_redirects=False).status_code == 200
    r = client.post("/dashboard/logout", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"
    deleted = _cookie(r.headers.get_list("set-cookie"), SESSION_COOKIE)
    assert "Max-Age=0" in deleted and "Path=/dashboard" in deleted
    # a copy of the cookie kept from before the logout is refused by the server
    replay = TestClient(client.app)
    r = replay.get(
        "/dashboard", headers={"cookie": f"{SESSION_COOKIE}={session}"}, follow_redirects=False
    )
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"
    # GET works too (a bookmark), and without a session it is harmless
    assert replay.get("/dashboard/logout", follow_redirects=False).status_code == 303


def test_forged_expired_and_revoked_sessions_are_refused(store: Path, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    key = add_key(keys_file, name="court", app="", role="auditor")
    settings = ServiceSettings(store=store, policy=ROOT / "policies", keys=keys_file)
    with TestClient(create_app(settings)) as c:
        _login(c, key)
        good = c.cookies.get(SESSION_COOKIE)
        assert good and c.get("/dashboard", follow_redirects=False).status_code == 200
        body, sig = good.split(".")
        for forged in (f"{body}.{sig[:-2]}AA", f"{body}x.{sig}", "garbage", "", "é.é", "a.b.c"):
            r = TestClient(c.app).get(
                "/dashboard",
                headers={"cookie": f"{SESSION_COOKIE}={forged}".encode("latin-1")},
                follow_redirects=False,
            )
            assert r.status_code == 303, forged
        # revoking the key ends its sessions at the next request
        revoke_key(keys_file, "court")
        assert c.get("/dashboard", follow_redirects=False).status_code == 303


def test_session_expiry_and_secret() -> None:
    now = [1_000_000.0]
    keys = ApiKeys()
    from provguard.service.auth import Client

    keys.add("k-aud", Client("aud", "", "auditor"))
    keys.add("k-app", Client("app", "douyin", "app"))
    sessions = DashboardSessions(b"s" * 32, lifetime=60, clock=lambda: now[0])
    cookie = sessions.issue("k-aud")
    client = sessions.client(cookie, keys)
    assert client is not None and client.name == "aud"
    assert sessions.client(sessions.issue("k-app"), keys) is None  # not an auditor
    other = DashboardSessions(b"t" * 32, clock=lambda: now[0])
    assert other.client(cookie, keys) is None  # another secret: another service
    same = DashboardSessions.from_hex((b"s" * 32).hex(), lifetime=60)
    other_worker = same.issue("k-aud")  # real clock: now
    assert DashboardSessions(b"s" * 32).client(other_worker, keys) is not None  # shared secret
    assert DashboardSessions.from_hex(None).client(other_worker, keys) is None  # random secret
    now[0] += 59
    assert sessions.client(cookie, keys) is not None
    now[0] += 1
    assert sessions.client(cookie, keys) is None  # expired
    with pytest.raises(ValueError):
        DashboardSessions(b"short")


# ------------------------------------------------------------------------------ F10


def _scans(store: Path) -> int:
    with SqliteAuditLog(store / "control.db", create=False) as log:
        return sum(1 for _ in log.entries(kind="scan"))


def test_scans_refuse_an_unknown_provider(client: TestClient, store: Path) -> None:
    """F10: ``"WeChat "`` came back as an inferred origin /v1/decisions refuses."""
    pair = {"provider": "WeChat ", "subject_id": 0, "handle": "a", "provider_handle": "a"}
    r = client.post("/v1/scans", json=pair, headers=hdr("duoshan"))
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "PG140" and "'WeChat '" in err["message"] and "wechat" in err["message"]
    for bad in ("unknown", "user_input", "nosuch"):
        r = client.post("/v1/scans", json={**pair, "provider": bad}, headers=hdr("duoshan"))
        assert r.status_code == 422, bad
    batch = {"pairs": [{**pair, "provider": "wechat"}, pair]}
    r = client.post("/v1/scans/batch", json=batch, headers=hdr("duoshan"))
    assert r.status_code == 422 and "pairs[1]" in r.json()["error"]["message"]
    client.app.state.provguard.writer.flush(10)  # type: ignore[attr-defined]
    assert _scans(store) == 0
    # every provider origin is accepted, and is what comes back as the inferred origin
    for provider in sorted(PROVIDER_ORIGINS):
        r = client.post("/v1/scans", json={**pair, "provider": provider}, headers=hdr("duoshan"))
        assert r.status_code == 200 and r.json()["inferred_origins"] == [provider], r.text
        decision = {
            "action": "use",
            "category": "user.name",
            "origins": r.json()["inferred_origins"],
            "purpose": "profile.display",
        }
        assert (
            client.post("/v1/decisions", json=decision, headers=hdr("duoshan")).status_code == 200
        )
    client.app.state.provguard.writer.flush(10)  # type: ignore[attr-defined]
    assert _scans(store) == len(PROVIDER_ORIGINS)


def test_scans_refuse_duplicate_keys(client: TestClient) -> None:
    text = '{"provider":"wechat","provider":"qq","handle":"a","provider_handle":"a"}'
    r = client.post(
        "/v1/scans",
        content=text.encode(),
        headers={**hdr("duoshan"), "content-type": "application/json"},
    )
    assert r.status_code == 422 and "duplicate key 'provider'" in r.json()["error"]["message"]


# ------------------------------------------------------------------------------ serve


def test_serve_wires_max_body_bytes_and_a_shared_session_secret(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import typer
    import uvicorn

    from provguard.cli.serve import serve_cmd

    keys_file = tmp_path / "keys.json"
    add_key(keys_file, name="court", app="", role="auditor")
    calls: list[tuple[object, dict[str, object]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    monkeypatch.delenv(SETTINGS_ENV, raising=False)
    cli = typer.Typer()
    cli.command()(serve_cmd)
    args = ["--store", str(store), "--keys", str(keys_file), "--policy", str(ROOT / "policies")]
    runner = CliRunner()
    r = runner.invoke(cli, [*args, "--workers", "1"])
    assert r.exit_code == 0, r.output
    app = calls[-1][0]
    assert app.state.provguard.settings.max_body_bytes == DEFAULT_MAX_BODY_BYTES  # type: ignore[attr-defined]
    r = runner.invoke(cli, [*args, "--workers", "2", "--max-body-bytes", "4096"])
    assert r.exit_code == 0, r.output
    doc = json.loads(os.environ[SETTINGS_ENV])
    assert doc["max_body_bytes"] == 4096 and len(bytes.fromhex(doc["session_secret"])) == 32
    worker = app_from_environment()
    try:
        assert worker.state.provguard.settings.max_body_bytes == 4096
        with TestClient(worker) as c:
            r = c.post("/v1/decisions", content=b"x" * 4097, headers=hdr("douyin"))
            assert r.status_code == 413 and r.json()["error"]["code"] == "PG560"
    finally:
        worker.state.provguard.close()
    assert runner.invoke(cli, [*args, "--max-body-bytes", "0"]).exit_code != 0

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from provguard.adapters.grant_store import SqlGrantStore
from provguard.cli.grants import grants_app
from provguard.grants import GrantRecord, LabelledValue, RevocationCascade, TokenCipher
from provguard.grants.crypto import KEY_ENV, generate_key
from provguard.grants.model import IssuedToken

T0 = datetime(2019, 7, 1, tzinfo=UTC)


def test_remaining_and_purge_due(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = generate_key()
    monkeypatch.setenv(KEY_ENV, key)
    db = str(tmp_path / "g.db")
    store = SqlGrantStore(db, TokenCipher(key))
    g = GrantRecord("g1", "qq", "douyin", "OPENID", "UID_X", "get_user_info", T0)
    v = LabelledValue("v1", "user.name.nickname", "nickname", "n", 8, frozenset({"g1"}), T0)
    store.record_login(g, [IssuedToken("access", "t", T0 + timedelta(days=90))], [v], T0)
    RevocationCascade(store, purge_within=timedelta(0)).revoke("g1", reason="r", source="cli")
    runner = CliRunner()
    res = runner.invoke(grants_app, ["remaining", "g1", "--db", db])
    assert res.exit_code == 1 and "values       1" in res.output
    res = runner.invoke(grants_app, ["purge-due", "--db", db])
    assert res.exit_code == 0 and "jobs purged or resumed: 1" in res.output
    res = runner.invoke(grants_app, ["remaining", "g1", "--db", db])
    assert res.exit_code == 0, res.output


def test_consent_record_withdraw_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = generate_key()
    monkeypatch.setenv(KEY_ENV, key)
    db = str(tmp_path / "g.db")
    store = SqlGrantStore(db, TokenCipher(key))
    g = GrantRecord("g1", "wechat", "douyin", "OPENID", "UNION", "snsapi_userinfo", T0)
    store.record_login(g, [], [], T0)
    store.register_app("duoshan", "ByteDance", "duoshan-secret")
    runner = CliRunner()
    args = ["consent", "g1", "duoshan", "--db", db, "--evidence", "screen v3"]
    named = ["--purpose", "account", "--method", "account_link", "--category", "user"]
    res = runner.invoke(grants_app, [*args, *named, "--at", "2022-01-05T10:00:00Z"])
    assert res.exit_code == 0, res.output
    (c,) = store.consent_records("g1")
    assert (c.purposes, c.method, c.categories) == (
        frozenset({"account"}),
        "account_link",
        frozenset({"user"}),
    )
    assert c.given_at == datetime(2022, 1, 5, 10, tzinfo=UTC)
    # unknown keys are refused with the code, nothing stored
    bad = ["--purpose", "acount", "--method", "account_link", "--category", "user", "--replace"]
    res = runner.invoke(grants_app, [*args, *bad])
    assert res.exit_code != 0 and "PG150" in res.output and "acount" in res.output
    # Art. 23 asks for purposes, method and categories: a blank consent is refused
    res = runner.invoke(grants_app, [*args, "--replace"])
    assert res.exit_code == 2 and "missing --purpose, --method, --category" in res.output
    # an active consent is never replaced silently
    res = runner.invoke(grants_app, [*args, *named])
    assert res.exit_code == 2 and "already has an active consent" in res.output
    res = runner.invoke(
        grants_app, ["consent", "nope", "duoshan", "--db", db, "--evidence", "x", *named]
    )
    assert res.exit_code != 0 and "no grant 'nope'" in res.output
    assert store.consent_records("g1") == [c]
    res = runner.invoke(grants_app, ["consents", "g1", "--db", db])
    assert "purposes=account method=account_link categories=user" in res.output
    assert "active" in res.output
    res = runner.invoke(grants_app, ["withdraw", "g1", "duoshan", "--db", db])
    assert res.exit_code == 0, res.output
    res = runner.invoke(grants_app, ["withdraw", "g1", "duoshan", "--db", db])
    assert res.exit_code == 1
    res = runner.invoke(grants_app, ["consents", "g1", "--db", db])
    assert "withdrawn 20" in res.output


def test_list_filters_by_status_and_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = generate_key()
    monkeypatch.setenv(KEY_ENV, key)
    db = str(tmp_path / "g.db")
    store = SqlGrantStore(db, TokenCipher(key))
    for gid, app in (("g1", "douyin"), ("g2", "douyin"), ("g3", "duoshan")):
        g = GrantRecord(gid, "qq", app, f"O-{gid}", f"U-{gid}", "get_user_info", T0)
        store.record_login(g, [IssuedToken("access", f"secret-{gid}", T0 + timedelta(1))], [], T0)
    RevocationCascade(store, purge_within=timedelta(0)).revoke("g2", reason="r", source="cli")
    runner = CliRunner()
    res = runner.invoke(grants_app, ["list", "--db", db, "--status", "active", "--app", "douyin"])
    assert res.exit_code == 0, res.output
    assert "g1 " in res.output and "g2" not in res.output and "g3" not in res.output
    assert "1 grant(s)" in res.output and "secret-" not in res.output
    res = runner.invoke(grants_app, ["list", "--db", db])
    assert "3 grant(s)" in res.output
    res = runner.invoke(grants_app, ["list", "--db", db, "--status", "revoked"])
    assert res.exit_code == 2 and "is not one of" in res.output


def test_consent_refuses_what_cannot_be_consented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consent is for an active grant, to another registered app, at a time between the
    grant and now (fresh-user finding F7: a consent on a purged grant broke its purge proof)."""
    key = generate_key()
    monkeypatch.setenv(KEY_ENV, key)
    db = str(tmp_path / "g.db")
    store = SqlGrantStore(db, TokenCipher(key))
    for gid in ("g1", "g2"):
        g = GrantRecord(gid, "wechat", "douyin", f"O-{gid}", "UNION", "snsapi_userinfo", T0)
        store.record_login(g, [], [], T0)
    store.register_app("duoshan", "ByteDance", "duoshan-secret")
    store.register_app("douyin", "ByteDance", "douyin-secret")
    RevocationCascade(store, purge_within=timedelta(0)).revoke("g2", reason="r", source="cli")
    runner = CliRunner()
    named = ["--purpose", "account", "--method", "account_link", "--category", "user",
             "--evidence", "screen v3", "--db", db]  # fmt: skip
    cases = {
        ("g2", "duoshan", "2022-01-05T10:00:00Z"): "can only be recorded while the grant is active",
        ("g1", "weibo", "2022-01-05T10:00:00Z"): "not a client app registered",
        ("g1", "douyin", "2022-01-05T10:00:00Z"): "is the grant's own app",
        ("g1", "duoshan", "2030-01-01T00:00:00Z"): "is in the future",
        ("g1", "duoshan", "2019-06-01T00:00:00Z"): "before grant g1 was given",
    }
    for (gid, recipient, at), message in cases.items():
        res = runner.invoke(grants_app, ["consent", gid, recipient, "--at", at, *named])
        assert res.exit_code == 2 and message in res.output, (gid, recipient, res.output)
        assert "PG150" in res.output
    assert store.consent_records("g1") == [] and store.consent_records("g2") == []
    # the purged grant's proof still holds
    res = runner.invoke(grants_app, ["remaining", "g2", "--db", db])
    assert res.exit_code in (0, 1) and "consents     1" not in res.output
    res = runner.invoke(grants_app, ["consent", "g1", "duoshan", "--at", "2022-01-05T10:00:00Z",
                                     *named])  # fmt: skip
    assert res.exit_code == 0, res.output


def test_consent_time_is_stored_in_utc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fresh user 9, G14: 23:30+14:00 (09:30 UTC) was stored as 23:30 UTC."""
    key = generate_key()
    monkeypatch.setenv(KEY_ENV, key)
    db = str(tmp_path / "g.db")
    store = SqlGrantStore(db, TokenCipher(key))
    store.record_login(
        GrantRecord("g1", "wechat", "douyin", "O", "U", "snsapi_userinfo", T0), [], [], T0
    )
    store.register_app("duoshan", "ByteDance", "duoshan-secret")
    at = "2022-01-05T23:30:00+14:00"
    args = ["consent", "g1", "duoshan", "--db", db, "--evidence", "e", "--purpose", "account",
            "--method", "account_link", "--category", "user", "--at", at]  # fmt: skip
    res = CliRunner().invoke(grants_app, args)
    assert res.exit_code == 0, res.output
    (c,) = store.consent_records("g1")
    assert c.given_at == datetime(2022, 1, 5, 9, 30, tzinfo=UTC)

"""The read-only grant views (provguard.grants.views) on both back-ends: per-app listing with
tenant isolation, sign-ins started / completed, exchanges by outcome, client apps; nothing is
written; a URL's password never shows."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy.engine import make_url

from provguard.adapters.grant_store import SqlGrantStore
from provguard.grants.crypto import TokenCipher, generate_key
from provguard.grants.model import GrantRecord, IssuedToken, TransferAttempt
from provguard.grants.views import GrantViews, find_registry

from .conftest import T0


def _fill(url: str) -> None:
    store = SqlGrantStore(url, TokenCipher(generate_key()))
    try:
        for app in ("douyin", "duoshan"):
            store.register_app(app, f"operator of {app}", f"{app}-s")
        for i in range(3):  # three sessions started, two completed
            store.save_login_session(
                f"state-{i}",
                provider="wechat",
                app_id="douyin",
                redirect_uri="http://127.0.0.1/cb",
                code_verifier="v" * 43,
                created_at=T0,
                expires_at=T0 + timedelta(minutes=10),
            )
        for i, (provider, app) in enumerate([("wechat", "douyin"), ("qq", "douyin")]):
            g = GrantRecord(f"g{i}", provider, app, f"o{i}", f"u{i}", "snsapi_userinfo", T0)
            store.record_login(
                g, [IssuedToken("app_session", f"tok-{i}", T0 + timedelta(days=1))], [], T0
            )
        g = GrantRecord("g9", "qq", "duoshan", "o9", "u9", "get_user_info", T0)
        store.record_login(g, [], [], T0)
        for j, (effect, excepted) in enumerate(
            [("deny", False), ("permit", True), ("deny", False)]
        ):
            store.record_transfer(
                TransferAttempt(
                    f"a{j}", "g0", "token_exchange", "douyin", "duoshan", T0, effect, excepted,
                    "no-login-grant-transfer", "cn-tj-binhai-2019-douyin-duoshan", "x",
                ),
                None,
                {"attempt": f"a{j}"},
            )  # fmt: skip
    finally:
        store.close()


def test_views_over_a_registry(store_url: str) -> None:
    _fill(store_url)
    views = GrantViews(None, store_url)
    try:
        rows, totals = views.page("douyin")
        assert totals == {"sandbox": 0, "registry": 2}
        assert [(r.store, r.grant_id, r.openid, r.subject_id) for r in rows] == [
            ("registry", "g0", "o0", None),
            ("registry", "g1", "o1", None),
        ]
        assert views.get("douyin", "g9") is None  # duoshan's grant: invisible to douyin
        got = views.get("duoshan", "g9")
        assert got is not None and got.granted_at == T0
        sign_ins = {(r["provider"], r["app"]): r for r in views.sign_ins() or []}
        assert sign_ins[("wechat", "douyin")]["started"] == 3
        assert sign_ins[("wechat", "douyin")]["completed"] == 1
        assert sign_ins[("qq", "duoshan")]["statuses"] == {"active": 1}
        assert [(e["effect"], e["excepted"], e["count"]) for e in views.exchanges()] == [
            ("deny", False, 2),
            ("permit", True, 1),
        ]
        assert views.client_apps() == ["douyin", "duoshan"]
        # duoshan holds g0 by its one permitted exchange (a1): listed as received, the
        # holder's openid hidden; the denied attempts add nothing, g1 stays invisible
        rows, totals = views.page("duoshan")
        assert totals == {"sandbox": 0, "registry": 2}
        assert [(r.grant_id, r.app_id, r.relation, r.openid) for r in rows] == [
            ("g0", "douyin", "received", None),
            ("g9", "duoshan", "own", "o9"),
        ]
        assert rows[0].received_via == ("token_exchange",) and rows[0].received_at == T0
        assert views.get("duoshan", "g0") == rows[0]
        assert views.get("duoshan", "g1") is None
        assert views.page("duoshan", relation="received")[1] == {"sandbox": 0, "registry": 1}
        assert views.page("duoshan", relation="own")[0] == rows[1:]
        assert views.received_grant_ids("duoshan") == {"g0"}
        assert views.received_grant_ids("douyin") == set()
        assert views.page("douyin", relation="received")[1] == {"sandbox": 0, "registry": 0}
        shown = views.registry_source or ""
        password = make_url(views.registry_url or "").password
        assert not password or str(password) not in shown
    finally:
        views.close()


def test_find_registry_and_an_empty_folder(tmp_path: Path) -> None:
    assert find_registry(tmp_path) is None
    views = GrantViews.of_folder(tmp_path)
    try:
        assert views.page("douyin") == ([], {"sandbox": 0, "registry": 0})
        assert views.sign_ins() is None and views.exchanges() == [] and views.counts() == []
    finally:
        views.close()
    assert list(tmp_path.iterdir()) == []  # reading created nothing
    (tmp_path / "grants.db").write_bytes(b"")
    assert find_registry(tmp_path) == str(tmp_path / "grants.db")
    assert find_registry(tmp_path, "postgresql+psycopg://u:p@127.0.0.1/x") == (
        "postgresql+psycopg://u:p@127.0.0.1/x"
    )

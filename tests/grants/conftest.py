from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.adapters.grant_store import SqlGrantStore
from provguard.clock import FixedClock
from provguard.decide import Decision, Request, decide
from provguard.grants import (
    GrantService,
    RevocationCascade,
    TokenCipher,
    TransferGate,
    create_app,
    generate_key,
)
from provguard.grants.server import LoopbackServer
from provguard.job.grants import register_login_app
from provguard.policy import PolicySet, load_policy_dir
from provguard.sandbox.oauth_provider import SandboxOpenPlatform, SandboxUser

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2019, 6, 30, 10, 0, tzinfo=UTC)
# a sign-in before duoshan's first use in the tests (2019-02-01) and before the order (2019-03-20)
GRANTED_EARLY = datetime(2019, 1, 20, 9, 30, tzinfo=UTC)
PG_ENV = "PROVGUARD_TEST_PG_URL"

USERS = {
    "alice": "小爱 Alice",
    "bob": "鲍勃_bob",
    "carol": "Carol🌸",
}
DOUYIN_SECRET = "douyin-provider-secret"
DUOSHAN_SECRET = "duoshan-provider-secret"
RP_SECRETS = {"douyin": "douyin-rp-secret", "duoshan": "duoshan-rp-secret"}


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "grants.db")
        return
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"{PG_ENV} is not set (run .ci/postgres.sh to start a PostgreSQL server)")
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"pg_grants_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(base).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


class ReferencePDP:
    """The reference interpreter as the decision point (the compiled index is another
    engineer's and is checked against this one by their tests)."""

    def __init__(self, policy: PolicySet) -> None:
        self.policy = policy

    def decide(self, req: Request) -> Decision:
        return decide(self.policy, req)


@dataclass
class World:
    clock: FixedClock
    platform: SandboxOpenPlatform
    platform_url: str
    service: GrantService
    service_url: str
    store: SqlGrantStore
    audit: SqliteAuditLog
    cipher: TokenCipher

    def sign_in(
        self, user: str, app: str = "douyin", *, tamper_state: bool = False
    ) -> httpx.Response:
        """A browser: start at the app, consent at the platform, follow back to the callback."""
        provider = self.platform.provider
        with httpx.Client(follow_redirects=False, timeout=10) as ua:
            start = ua.get(f"{self.service_url}/login/{provider}/{app}/start")
            assert start.status_code == 302, start.text
            page = ua.get(start.headers["location"])
            assert page.status_code == 200, page.text
            m = re.search(r'name="request_id" value="([^"]+)"', page.text)
            assert m is not None
            consent = ua.post(
                f"{self.platform_url}/sandbox/consent",
                data={"request_id": m.group(1), "user": user, "decision": "allow"},
            )
            assert consent.status_code == 302
            callback = consent.headers["location"]
            if tamper_state:
                callback = re.sub(r"state=[^&]+", "state=forged-state-value", callback)
            self.last_callback = callback
            return ua.get(callback)

    def move_to(self, at: datetime) -> None:
        """Move the world's fixed clock to ``at`` (forwards or back). Exact: a float of
        seconds below 1e9 resolves well under the microsecond ``timedelta`` rounds to."""
        self.clock.advance((at - self.clock.now()).total_seconds())
        assert self.clock.now() == at

    def sign_in_at(self, user: str, granted_at: datetime, app: str = "douyin") -> dict[str, Any]:
        """Sign ``user`` in to ``app`` at ``granted_at`` (the clock moved there and back), then
        sign in again at the world's time, as a client whose 2 h app session token expired does:
        the re-login keeps the grant and its ``granted_at`` and gives a live session token.
        Returns the second callback's body (``grant``, ``session_token``)."""
        now = self.clock.now()
        self.move_to(granted_at)
        try:
            first = self.sign_in(user, app)
            assert first.status_code == 200, first.text
        finally:
            self.move_to(now)
        again = self.sign_in(user, app)
        assert again.status_code == 200, again.text
        body: dict[str, Any] = again.json()
        assert body["grant"] == first.json()["grant"]
        grant = self.store.grant(body["grant"])
        assert grant is not None and grant.granted_at == granted_at
        return body

    def post(self, path: str, data: dict[str, str]) -> httpx.Response:
        return httpx.post(f"{self.service_url}{path}", data=data, timeout=10)


def make_world(store_url: str, tmp_path: Path, provider: str = "wechat") -> Iterator[World]:
    """The sandbox platform ``provider`` with apps douyin and duoshan (one developer account,
    two controllers), the grant service on loopback, the registry at ``store_url``."""
    clock = FixedClock(T0)
    cipher = TokenCipher(generate_key())
    store = SqlGrantStore(store_url, cipher)
    audit = SqliteAuditLog(tmp_path / "audit.db", clock=clock)
    pdp = ReferencePDP(load_policy_dir(ROOT / "policies"))
    platform = SandboxOpenPlatform(provider, clock=clock)
    for key, nick in USERS.items():
        platform.add_user(SandboxUser(key, nick))
    service = GrantService(
        store=store,
        audit=audit,
        gate=TransferGate(store, pdp, audit, clock=clock),
        cascade=RevocationCascade(store, clock=clock, purge_within=timedelta(days=15), pdp=pdp),
        clock=clock,
    )
    psrv = platform.serve()
    ssrv = LoopbackServer(create_app(service)).start()
    try:
        for app, secret, controller in (
            ("douyin", DOUYIN_SECRET, "operator of Douyin"),
            ("duoshan", DUOSHAN_SECRET, "operator of Duoshan"),
        ):
            register_login_app(
                platform, psrv.url, service, ssrv.url, app, secret, store, audit, clock
            )
            store.register_app(app, controller, RP_SECRETS[app])
        yield World(clock, platform, psrv.url, service, ssrv.url, store, audit, cipher)
    finally:
        ssrv.stop()
        psrv.stop()
        store.close()
        audit.close()


@pytest.fixture
def world(store_url: str, tmp_path: Path) -> Iterator[World]:
    yield from make_world(store_url, tmp_path, "wechat")


@pytest.fixture
def qq_world(store_url: str, tmp_path: Path) -> Iterator[World]:
    yield from make_world(store_url, tmp_path, "qq")

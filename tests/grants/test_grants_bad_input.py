"""Malformed tokens, replayed codes, wrong state, expired grants, unknown apps: each refused with
a clear error and audited; none reaches the store. Secrets never reach logs or the database file."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from provguard.grants.errors import CodeReplayError
from provguard.grants.model import ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT
from provguard.sandbox.oauth_provider import sign_notification

from .conftest import DOUYIN_SECRET, RP_SECRETS, World

DATA_TABLES = (
    "oauth_grants",
    "oauth_tokens",
    "labelled_values",
    "value_grants",
    "transfer_attempts",
    "revocation_jobs",
    "recipient_first_use",
)


def data_counts(world: World) -> dict[str, int]:
    counts = world.store.counts()
    return {t: counts[t] for t in DATA_TABLES}


def refused(world: World) -> list[str]:
    return [str(e.payload["code"]) for e in world.audit.entries(kind="grant.refused")]


def xchg(
    world: World, token: str, client: str = "duoshan", secret: str | None = None
) -> httpx.Response:
    return world.post(
        "/oauth2/token",
        {
            "grant_type": TOKEN_EXCHANGE_GRANT,
            "subject_token": token,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "client_id": client,
            "client_secret": RP_SECRETS.get(client, "x") if secret is None else secret,
        },
    )


def test_wrong_state_and_replayed_callback(world: World) -> None:
    before = data_counts(world)
    r = world.sign_in("alice", tamper_state=True)
    assert r.status_code == 400 and r.json()["code"] == "PG151"
    assert "unknown OAuth state" in r.json()["error_description"]
    assert data_counts(world) == before

    ok = world.sign_in("carol")
    assert ok.status_code == 200
    after_login = data_counts(world)
    replay = httpx.get(world.last_callback, timeout=10)  # the same callback again
    assert replay.status_code == 400 and replay.json()["code"] == "PG151"
    assert "already used" in replay.json()["error_description"]
    assert data_counts(world) == after_login
    assert refused(world) == ["PG151", "PG151"]


def test_replayed_code_with_fresh_state(world: World) -> None:
    assert world.sign_in("carol").status_code == 200
    code = httpx.URL(world.last_callback).params["code"]
    connector = world.service.connector("wechat", "douyin")
    state = httpx.URL(connector.begin()).params["state"]
    before = data_counts(world)
    with pytest.raises(CodeReplayError) as err:
        connector.complete(f"{connector.credentials.redirect_uri}?code={code}&state={state}")
    assert err.value.code == "PG152"
    assert data_counts(world) == before
    assert refused(world) == ["PG152"]


def test_malformed_expired_and_unknown(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    alice = world.sign_in("alice").json()
    before = data_counts(world)
    for bad in ("garbage", "", "pgs." + "A" * 43, "x" * 5000):
        r = xchg(world, bad)
        assert r.status_code == 400, bad
        assert (r.json()["error"], r.json()["code"]) == ("invalid_request", "PG153")
    r = xchg(world, alice["session_token"], client="kuaishou")  # unknown app
    assert r.status_code == 401 and r.json()["code"] == "PG155"
    r = xchg(world, alice["session_token"], secret="wrong")  # known app, wrong secret
    assert r.status_code == 401 and r.json()["code"] == "PG155"
    r = httpx.get(f"{world.service_url}/login/wechat/kuaishou/start", timeout=10)
    assert r.status_code == 401 and r.json()["code"] == "PG155"
    # the client authenticates before anything else is looked at (RFC 6749 2.3)
    r = world.post("/oauth2/token", {"grant_type": "password", "client_id": "duoshan"})
    assert (r.status_code, r.json()["error"]) == (401, "invalid_client")
    creds = {"client_id": "duoshan", "client_secret": RP_SECRETS["duoshan"]}
    r = world.post("/oauth2/token", {"grant_type": "password", **creds})
    assert r.json()["error"] == "unsupported_grant_type"
    # notifications: bad signature, unknown app
    body = b'{"event":"authorization_revoked","appid":"douyin","openid":"x"}'
    r = httpx.post(
        f"{world.service_url}/notifications/wechat",
        content=body,
        headers={"x-sandbox-signature": sign_notification("not-the-secret", body)},
    )
    assert r.status_code == 401 and r.json()["code"] == "PG158"
    other = b'{"event":"authorization_revoked","appid":"kuaishou","openid":"x"}'
    r = httpx.post(
        f"{world.service_url}/notifications/wechat",
        content=other,
        headers={"x-sandbox-signature": sign_notification(DOUYIN_SECRET, other)},
    )
    assert r.status_code == 401 and r.json()["code"] == "PG155"
    # expired: the app session token lives 2 h
    world.clock.advance(2 * 3600 + 1)
    r = xchg(world, alice["session_token"])
    assert r.status_code == 400 and r.json()["code"] == "PG154"
    assert data_counts(world) == before
    assert refused(world) == ["PG153"] * 4 + ["PG155"] * 4 + ["PG150", "PG158", "PG155", "PG154"]

    # secrets: not in logs, not in the audit log, not in clear in the database file
    secrets = [alice["session_token"], world.store.token_secret(alice["grant"], "access")]
    assert all(s for s in secrets)
    text = caplog.text + "".join(e.stored_payload() for e in world.audit.entries())
    db = Path(world.store.url.removeprefix("sqlite:///"))
    if db.is_file():
        text += db.read_bytes().decode("latin-1")
        for wal in db.parent.glob(db.name + "-wal"):
            text += wal.read_bytes().decode("latin-1")
    for s in secrets:
        assert s not in text

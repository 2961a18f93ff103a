"""The transfer gate checks the registry's grant facts (docs/grants.md, "Dates of record"): a
recorded first use by the recipient before the grant was given, or after the transfer's time,
is refused with PG141 at every door (RFC 8693 exchange, /link, unionid join) -- never decided,
so never grandfathered -- and the refusal is audited with nothing recorded. Last, why the main
job's grants stage keeps douyin's app session rather than refreshing months later."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from provguard.grants.errors import ImpossibleGrantFactsError
from provguard.grants.model import ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT

from .conftest import GRANTED_EARLY, RP_SECRETS, T0, World

BEFORE_ORDER = datetime(2019, 2, 1, tzinfo=UTC)  # duoshan's first use: grandfathered if possible
INJUNCTION = ("no-login-grant-transfer", "cn-tj-binhai-2019-douyin-duoshan")


def exchange(world: World, token: str) -> dict[str, object]:
    r = world.post(
        "/oauth2/token",
        {
            "grant_type": TOKEN_EXCHANGE_GRANT,
            "subject_token": token,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "audience": "duoshan",
            "client_id": "duoshan",
            "client_secret": RP_SECRETS["duoshan"],
        },
    )
    body: dict[str, object] = {"status": r.status_code, **r.json()}
    return body


def refusals(world: World) -> list[dict[str, object]]:
    world.service.flush()
    return [dict(e.payload) for e in world.audit.entries(kind="grant.refused")]


def test_first_use_before_the_grant_is_refused_not_grandfathered(world: World) -> None:
    # alice signed in at T0 (2019-06-30); a registry row says duoshan used it on 2019-02-01
    alice = world.sign_in("alice").json()
    world.store.record_first_use(alice["grant"], "duoshan", BEFORE_ORDER)
    before = world.store.counts()
    body = exchange(world, str(alice["session_token"]))
    assert body["status"] == 400
    assert (body["code"], body["error"]) == ("PG141", "invalid_request")
    text = str(body["error_description"])
    assert "precedes 'grant_granted_at'" in text and alice["grant"] in text
    assert "2019-02-01T00:00:00+00:00" in text and T0.isoformat() in text
    # nothing decided or recorded: no attempt, no token, the first use as it was; audited
    assert world.store.transfer_attempts() == []
    assert world.store.counts() == before
    assert world.store.first_use(alice["grant"], "duoshan") == BEFORE_ORDER
    (refused,) = refusals(world)
    assert (refused["code"], refused["door"], refused["client"]) == (
        "PG141",
        "token_exchange",
        "duoshan",
    )
    # the same row, signed in before that first use (the real order of events): grandfathered
    bob = world.sign_in_at("bob", GRANTED_EARLY)
    world.store.record_first_use(bob["grant"], "duoshan", BEFORE_ORDER)
    ok = exchange(world, str(bob["session_token"]))
    assert ok["status"] == 200, ok
    (attempt,) = world.store.transfer_attempts()
    assert (attempt.grant_id, attempt.effect, attempt.excepted) == (bob["grant"], "permit", True)


def test_first_use_equal_to_the_grant_is_consistent(world: World) -> None:
    alice = world.sign_in("alice").json()
    world.store.record_first_use(alice["grant"], "duoshan", T0)  # the same instant
    body = exchange(world, str(alice["session_token"]))
    assert body["status"] == 400 and body["code"] == "PG159"  # decided: denied by the order
    assert (body["rule"], body["instrument"]) == INJUNCTION


def test_first_use_after_the_transfer_time_is_refused(world: World) -> None:
    bob = world.sign_in_at("bob", GRANTED_EARLY)
    later = T0 + timedelta(days=15)
    world.store.record_first_use(bob["grant"], "duoshan", later)  # in the future of T0
    body = exchange(world, str(bob["session_token"]))
    assert (body["status"], body["code"]) == (400, "PG141")
    assert "lies after 'at'" in str(body["error_description"])
    # /link refuses the same way
    r = world.post(
        "/link",
        {
            "subject_token": str(bob["session_token"]),
            "client_id": "duoshan",
            "client_secret": RP_SECRETS["duoshan"],
        },
    )
    assert (r.status_code, r.json()["code"]) == (400, "PG141")
    # the gate's decision itself raises; from that day on the facts are possible and decided
    gate = world.service.gate
    grant = world.store.grant(bob["grant"])
    assert grant is not None
    with pytest.raises(ImpossibleGrantFactsError) as info:
        gate.decide(grant, "duoshan", T0)
    assert info.value.code == "PG141"
    assert gate.decide(grant, "duoshan", later).effect == "deny"  # first used after the order
    assert world.store.transfer_attempts() == []
    assert [p["code"] for p in refusals(world)] == ["PG141", "PG141"]


def test_unionid_join_refuses_an_impossible_row(world: World) -> None:
    a_douyin = world.sign_in("alice").json()["grant"]  # granted at T0
    world.sign_in("alice", app="duoshan")
    world.store.record_first_use(a_douyin, "duoshan", BEFORE_ORDER)
    unionid = world.platform.unionid("bytedance-open-account", "alice")
    with pytest.raises(ImpossibleGrantFactsError, match="precedes 'grant_granted_at'"):
        world.service.gate.join_on_unionid("duoshan", unionid)
    assert world.store.transfer_attempts() == []


def test_a_months_old_grant_cannot_be_refreshed_at_the_exchange(world: World) -> None:
    """Why the grants stage keeps douyin's app session instead of refreshing at ``at``: the
    WeChat refresh token (30 days) of a grant given on 2019-01-20 has expired by 2019-06-30."""
    from provguard.grants.errors import ExpiredGrantError

    world.move_to(GRANTED_EARLY)
    alice = world.sign_in("alice").json()
    connector = world.service.connector("wechat", "douyin")
    world.move_to(GRANTED_EARLY + timedelta(days=29))
    connector.refresh(alice["grant"])  # within the 30 days: renewed
    world.move_to(T0)
    with pytest.raises(ExpiredGrantError) as info:
        connector.refresh(alice["grant"])
    assert info.value.code == "PG154"
    # and the 2 h app session token issued at sign-in is no subject token any more
    body = exchange(world, str(alice["session_token"]))
    assert (body["status"], body["code"]) == (400, "PG154")

"""Onward transfer through /link and unionid joins (decided by the PDP: the injunction's
transfer rule with grandfathering; PIPL Art. 23 separate consent from 2021-11-01), recorded and
audited; and RFC 7009 /oauth2/revoke on the service."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from provguard.grants.errors import ExpiredGrantError, UnknownAppError

from .conftest import GRANTED_EARLY, RP_SECRETS, World

INJUNCTION = ("no-login-grant-transfer", "cn-tj-binhai-2019-douyin-duoshan")
BEFORE_ORDER = datetime(2019, 2, 1, tzinfo=UTC)
PIPL_DAY = datetime(2021, 11, 1, tzinfo=UTC)


def link(world: World, token: str, client: str = "duoshan") -> httpx.Response:
    return world.post(
        "/link",
        {"subject_token": token, "client_id": client, "client_secret": RP_SECRETS[client]},
    )


def revoke(world: World, token: str, client: str, secret: str | None = None) -> httpx.Response:
    return world.post(
        "/oauth2/revoke",
        {
            "token": token,
            "client_id": client,
            "client_secret": RP_SECRETS[client] if secret is None else secret,
        },
    )


def transfers(world: World) -> list[dict[str, object]]:
    world.service.flush()
    return [dict(e.payload) for e in world.audit.entries(kind="grant.transfer")]


def test_link_denied_after_order_grandfathered_before(world: World) -> None:
    store = world.store
    alice = world.sign_in("alice").json()
    bob = world.sign_in_at("bob", GRANTED_EARLY)
    r = link(world, alice["session_token"])
    assert r.status_code == 400
    body = r.json()
    assert (body["code"], body["error"]) == ("PG159", "invalid_target")
    assert (body["rule"], body["instrument"]) == INJUNCTION
    assert store.first_use(alice["grant"], "duoshan") is None  # a denied link records no use

    store.record_first_use(bob["grant"], "duoshan", BEFORE_ORDER)
    r = link(world, bob["session_token"])
    assert r.status_code == 200, r.text
    linked = r.json()
    assert linked["linked"] is True and linked["grant"] == bob["grant"]
    assert linked["excepted"] is True and 0 < linked["expires_in"] <= 3600
    # the issued token is an exchanged token of bob's grant, for duoshan
    match = store.find_token(linked["access_token"], world.clock.now())
    assert (match.kind, match.audience, match.grant.grant_id) == (
        "exchanged",
        "duoshan",
        bob["grant"],
    )
    assert store.first_use(bob["grant"], "duoshan") == BEFORE_ORDER  # the earlier time wins

    rows = {(a.grant_id, a.kind, a.effect, a.excepted) for a in store.transfer_attempts()}
    assert rows == {
        (alice["grant"], "account_link", "deny", False),
        (bob["grant"], "account_link", "permit", True),
    }
    events = transfers(world)
    assert [(e["kind"], e["grant"], e["to"]) for e in events] == [
        ("account_link", alice["grant"], "duoshan"),
        ("account_link", bob["grant"], "duoshan"),
    ]
    decisions = [e["decision"] for e in events]
    assert [d["effect"] for d in decisions] == ["deny", "permit"]  # type: ignore[index]
    assert world.audit.verify().ok
    # a wrong client secret never reaches the gate
    bad = world.post(
        "/link",
        {"subject_token": bob["session_token"], "client_id": "duoshan", "client_secret": "x"},
    )
    assert bad.status_code == 401 and bad.json()["code"] == "PG155"
    assert len(store.transfer_attempts()) == 2


def test_unionid_join_is_a_transfer(world: World) -> None:
    store, gate = world.store, world.service.gate
    a_douyin = world.sign_in_at("alice", GRANTED_EARLY)["grant"]
    a_duoshan = world.sign_in("alice", app="duoshan").json()["grant"]
    b_douyin = world.sign_in("bob").json()["grant"]
    unionid = world.platform.unionid("bytedance-open-account", "alice")
    assert store.grant(a_duoshan).unionid == unionid  # type: ignore[union-attr]

    # duoshan joins on alice's unionid: its own grant's values are its own; douyin's are denied
    allowed, denied = gate.join_on_unionid("duoshan", unionid)
    assert {v.grants for v in allowed} == {frozenset({a_duoshan})}
    assert len(allowed) == len(store.values(a_duoshan))
    assert [(d.grant_id, d.kind, d.from_app, d.to_app, d.effect) for d in denied] == [
        (a_douyin, "unionid_join", "douyin", "duoshan", "deny")
    ]
    assert (denied[0].rule_id, denied[0].instrument_id) == INJUNCTION
    # douyin joining the same unionid reads its own grant, and duoshan's is not governed by the
    # injunction (it binds douyin as the holder): no rule applies, so it proceeds, recorded,
    # first use noted
    allowed_d, denied_d = gate.join_on_unionid("douyin", unionid)
    assert denied_d == []
    assert {v.grants for v in allowed_d} == {frozenset({a_douyin}), frozenset({a_duoshan})}
    assert store.first_use(a_duoshan, "douyin") == world.clock.now()
    # bob's grant never enters alice's join
    assert all(b_douyin not in v.grants for v in allowed + allowed_d)

    # grandfathered: duoshan used alice's douyin login before the order -> permitted, excepted
    store.record_first_use(a_douyin, "duoshan", BEFORE_ORDER)
    allowed2, denied2 = gate.join_on_unionid("duoshan", unionid)
    assert denied2 == []
    assert {v.grants for v in allowed2} == {frozenset({a_douyin}), frozenset({a_duoshan})}
    # (one instant on the fixed clock: the registry orders ties by id, so compare sorted)
    joins = sorted((a.grant_id, a.to_app, a.effect, a.excepted) for a in store.transfer_attempts())
    assert joins == sorted(
        [
            (a_douyin, "duoshan", "deny", False),
            (a_duoshan, "douyin", "not_applicable", False),
            (a_douyin, "duoshan", "permit", True),
        ]
    )
    assert [e["kind"] for e in transfers(world)] == ["unionid_join"] * 3

    # an unknown app is refused and audited, nothing recorded
    with pytest.raises(UnknownAppError):
        gate.join_on_unionid("kuaishou", unionid)
    assert len(store.transfer_attempts()) == 3
    refusals = list(world.audit.entries(kind="grant.refused"))
    assert refusals[-1].payload["door"] == "unionid_join"


def test_pipl_art23_separate_consent(world: World) -> None:
    store, gate = world.store, world.service.gate
    alice = world.sign_in_at("alice", GRANTED_EARLY)
    # grandfathered under the injunction, so only PIPL Art. 23 can decide
    store.record_first_use(alice["grant"], "duoshan", BEFORE_ORDER)
    grant = store.grant(alice["grant"])
    assert grant is not None

    # the day before PIPL is in force: permitted without a separate consent
    before = gate.decide(grant, "duoshan", datetime(2021, 10, 31, 23, 59, tzinfo=UTC))
    assert before.effect == "permit" and before.excepted
    # from 2021-11-01: another controller needs the subject's separate consent
    after = gate.decide(grant, "duoshan", PIPL_DAY)
    assert after.effect == "deny"
    top = after.determining[0]
    assert (top.rule_id, top.instrument_id) == (
        "separate-consent-for-provision",
        "cn-pipl-2021-art-23",
    )

    # over HTTP at a time after PIPL: denied with the article cited, recorded and audited
    world.clock.advance((datetime(2022, 3, 1, tzinfo=UTC) - world.clock.now()).total_seconds())
    fresh = world.sign_in("alice").json()  # a fresh session token in 2022
    assert fresh["grant"] == alice["grant"]
    r = link(world, fresh["session_token"])
    assert r.status_code == 400
    assert (r.json()["rule"], r.json()["instrument"]) == (
        "separate-consent-for-provision",
        "cn-pipl-2021-art-23",
    )
    # a consent that names no purpose (nor method / categories: a record from before they were
    # stored) does not count: PIPL Art. 23 needs them named
    store.record_separate_consent(
        alice["grant"], "duoshan", world.clock.now(), "consent screen v2, checkbox 2"
    )
    r = link(world, fresh["session_token"])
    assert (r.status_code, r.json()["instrument"]) == (400, "cn-pipl-2021-art-23")
    # with the separate consent naming recipient, purpose, method and categories: permitted
    store.record_separate_consent(
        alice["grant"],
        "duoshan",
        world.clock.now(),
        "consent screen v3, checkbox 2",
        purposes=["account"],
        method="account_link",
        categories=["user"],
    )
    r = link(world, fresh["session_token"])
    assert r.status_code == 200, r.text
    # a consent for another recipient does not count
    bob = world.sign_in_at("bob", GRANTED_EARLY)
    store.record_first_use(bob["grant"], "duoshan", BEFORE_ORDER)
    store.record_separate_consent(bob["grant"], "kuaishou", world.clock.now(), "elsewhere")
    assert link(world, bob["session_token"]).status_code == 400
    effects = [(e["grant"], e["decision"]["effect"]) for e in transfers(world)]  # type: ignore[index]
    assert effects == [
        (alice["grant"], "deny"),
        (alice["grant"], "deny"),
        (alice["grant"], "permit"),
        (bob["grant"], "deny"),
    ]
    consents = list(world.audit.entries(kind="grant.separate_consent"))
    assert [e.payload["recipient"] for e in consents] == ["duoshan", "duoshan", "kuaishou"]


def test_rfc7009_revoke(world: World) -> None:
    store = world.store
    alice = world.sign_in("alice").json()
    bob = world.sign_in_at("bob", GRANTED_EARLY)
    store.record_first_use(bob["grant"], "duoshan", BEFORE_ORDER)
    exchanged = link(world, bob["session_token"]).json()["access_token"]

    # RFC 7009 2.2: an unknown (or malformed) token is answered 200 and changes nothing
    before = store.counts()
    assert revoke(world, "pgs_not-a-token-we-issued", "douyin").status_code == 200
    assert revoke(world, "x" * 5000, "douyin").status_code == 200
    assert store.counts() == before and store.jobs() == []
    # the request itself must be well formed and from an authenticated client
    assert revoke(world, alice["session_token"], "douyin", secret="wrong").status_code == 401
    r = world.post("/oauth2/revoke", {"client_id": "douyin", "client_secret": RP_SECRETS["douyin"]})
    assert r.status_code == 400 and r.json()["code"] == "PG150"
    # RFC 7009 2.1: a token issued to another client is refused (unauthorized_client, after
    # the client authenticated), audited, and stays valid
    r = revoke(world, alice["session_token"], "duoshan")
    assert r.status_code == 400
    assert (r.json()["error"], r.json()["code"]) == ("unauthorized_client", "PG155")
    assert store.find_token(alice["session_token"], world.clock.now()).grant.status == "active"
    # ... also the token exchanged to duoshan, when its grant holder douyin asks
    r = revoke(world, exchanged, "douyin")
    assert (r.status_code, r.json()["error"]) == (400, "unauthorized_client")
    assert store.find_token(exchanged, world.clock.now()).audience == "duoshan"
    assert store.counts() == before and store.jobs() == []
    refused = [e.payload for e in world.audit.entries(kind="grant.refused")]
    assert [(p["door"], p["error"]) for p in refused[-2:]] == [
        ("revoke", "UnauthorizedClientError"),
        ("revoke", "UnauthorizedClientError"),
    ]
    # the other client's token still works afterwards: alice's session token is still a valid
    # subject token at the gate (denied there by the injunction, not by a revocation)
    r = link(world, alice["session_token"])
    assert (r.status_code, r.json()["code"]) == (400, "PG159")
    # section 2.2.1: a token_type_hint we do not support; the registered hints never limit the
    # search (a session token sent with hint refresh_token is still found)
    hinted = dict(token=alice["session_token"], client_id="douyin")
    r = world.post(
        "/oauth2/revoke",
        {**hinted, "client_secret": RP_SECRETS["douyin"], "token_type_hint": "id_token"},
    )
    assert (r.status_code, r.json()["error"]) == (400, "unsupported_token_type")
    assert store.jobs() == []
    # Basic client authentication (RFC 6749 2.3.1) with the wrong secret: 401 invalid_client
    r = httpx.post(
        f"{world.service_url}/oauth2/revoke",
        data={"token": alice["session_token"]},
        auth=("duoshan", "wrong"),
        timeout=10,
    )
    assert (r.status_code, r.json()["error"]) == (401, "invalid_client")

    # the recipient revokes the token exchanged to it: that token dies, bob's grant lives
    assert revoke(world, exchanged, "duoshan").status_code == 200
    with pytest.raises(ExpiredGrantError):
        store.find_token(exchanged, world.clock.now())
    assert store.grant(bob["grant"]).status == "active"  # type: ignore[union-attr]
    assert link(world, bob["session_token"]).status_code == 200

    # the holder revokes its session token: the grant is revoked (cascade), the token no
    # longer works anywhere
    r = world.post(
        "/oauth2/revoke",
        {
            "token": alice["session_token"],
            "token_type_hint": "refresh_token",
            "client_id": "douyin",
            "client_secret": RP_SECRETS["douyin"],
        },
    )
    assert r.status_code == 200
    (job,) = store.jobs()
    assert job["reason"] == "client_revoked" and job["grant_id"] == alice["grant"]
    assert store.values(alice["grant"]) == []
    r = link(world, alice["session_token"])
    assert r.status_code == 400 and r.json()["code"] == "PG154"
    # revoking it again is 200 and opens no second job (idempotent)
    assert revoke(world, alice["session_token"], "douyin").status_code == 200
    assert len(store.jobs()) == 1


def test_rfc8693_request_parameters(world: World) -> None:
    """RFC 8693 section 2.1 parameters the gate does not offer are refused, never ignored; the
    section 2.2.1 response of a permitted exchange; nothing is decided for a refused request."""
    from provguard.grants.model import ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT

    bob = world.sign_in_at("bob", GRANTED_EARLY)
    world.store.record_first_use(bob["grant"], "duoshan", BEFORE_ORDER)
    base = {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token": bob["session_token"],
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "client_id": "duoshan",
        "client_secret": RP_SECRETS["duoshan"],
    }
    cases = [
        (
            {"actor_token": bob["session_token"], "actor_token_type": ACCESS_TOKEN_TYPE},
            400,
            "invalid_request",
        ),
        ({"actor_token_type": ACCESS_TOKEN_TYPE}, 400, "invalid_request"),
        (
            {"subject_token_type": "urn:ietf:params:oauth:token-type:id_token"},
            400,
            "invalid_request",
        ),
        (
            {"requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token"},
            400,
            "invalid_request",
        ),
        ({"resource": "https://duoshan.example/api"}, 400, "invalid_target"),
        ({"audience": "kuaishou"}, 400, "invalid_target"),
        ({"scope": "snsapi_userinfo"}, 400, "invalid_scope"),
        ({"subject_token": ""}, 400, "invalid_request"),
    ]
    for extra, status, error in cases:
        r = world.post("/oauth2/token", {**base, **extra})
        assert (r.status_code, r.json()["error"]) == (status, error), extra
        assert r.headers["cache-control"] == "no-store"
    assert world.store.transfer_attempts() == []
    r = world.post("/oauth2/token", {**base, "audience": "duoshan"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"access_token", "issued_token_type", "token_type", "expires_in"}
    assert (body["issued_token_type"], body["token_type"]) == (ACCESS_TOKEN_TYPE, "Bearer")
    assert r.headers["cache-control"] == "no-store"
    (attempt,) = world.store.transfer_attempts()
    assert (attempt.kind, attempt.effect, attempt.excepted) == ("token_exchange", "permit", True)

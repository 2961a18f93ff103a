"""PIPL Art. 23 (separate consent for provision to another handler) and Art. 15 (withdrawal)
decided by the policy engine from the consents stored in the grant registry, and the
migration of an older registry whose consent records lack purpose, method and categories."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Column, DateTime, MetaData, String, Table, Text, create_engine, insert

from provguard.adapters.grant_store import SqlGrantStore
from provguard.grants import GrantRecord, LabelledValue, TokenCipher, TransferGate, generate_key
from provguard.policy import PolicySet, load_bundle, load_bundle_text, load_policy_dir
from provguard.taxonomy import covers

from .conftest import GRANTED_EARLY, ROOT, RP_SECRETS, ReferencePDP, World

EXTRA = ROOT / "policies" / "extra"
ART23 = ("provision-needs-separate-consent", "cn-pipl-2021-art-23")
ART15 = ("no-processing-after-withdrawal", "cn-pipl-2021-art-15")
IN_2022 = datetime(2022, 3, 1, 9, 0, tzinfo=UTC)
FULL = {"purposes": ["account"], "method": "account_link", "categories": ["user"]}


def use_policy(world: World, *files: str) -> TransferGate:
    """Swap the service's gate for one deciding with only the given bundles; move to 2022."""
    pdp = ReferencePDP(PolicySet.of(load_bundle(EXTRA / f) for f in files))
    gate = TransferGate(world.store, pdp, world.audit, clock=world.clock)
    world.service.gate = gate
    world.clock.advance((IN_2022 - world.clock.now()).total_seconds())
    return gate


def link(world: World, token: str, client: str = "duoshan", **extra: str) -> httpx.Response:
    data = {"subject_token": token, "client_id": client, "client_secret": RP_SECRETS[client]}
    return world.post("/link", {**data, **extra})


def consent(world: World, grant: str, **fields: object) -> str:
    return world.store.record_separate_consent(
        grant,
        "duoshan",
        world.clock.now(),
        "consent screen v3, separate checkbox",
        **fields,  # type: ignore[arg-type]
    )


def test_art23_from_stored_consent(world: World) -> None:
    gate = use_policy(world, "pipl-art-23-provision-to-other-handlers.yaml")
    alice = world.sign_in("alice").json()
    grant = world.store.grant(alice["grant"])
    assert grant is not None

    # no consent on record: denied by the policy engine's Art. 23 rule (not the gate's built-in)
    r = link(world, alice["session_token"])
    assert r.status_code == 400
    assert (r.json()["rule"], r.json()["instrument"]) == ART23

    # a separate consent naming recipient, method and categories but no purpose: still denied
    consent(world, alice["grant"], method="account_link", categories=["user"])
    r = link(world, alice["session_token"])
    assert (r.status_code, r.json()["rule"]) == (400, ART23[0])

    # one naming duoshan, purpose, method and categories: permitted, by the rule's exception
    cid = consent(world, alice["grant"], **FULL)
    (record,) = world.store.consent_records(alice["grant"], "duoshan")
    assert (record.consent_id, record.recipient, record.method, record.separate) == (
        cid,
        "duoshan",
        "account_link",
        True,
    )
    assert (record.purposes, record.categories) == (frozenset({"account"}), frozenset({"user"}))
    r = link(world, alice["session_token"], purpose="account.login")
    assert r.status_code == 200, r.text
    assert r.json()["excepted"] is True
    d = gate.decide(grant, "duoshan", world.clock.now())
    assert d.effect == "permit" and d.excepted
    assert {(x.rule_id, x.instrument_id, x.outcome) for x in d.reasons} == {(*ART23, "excepted")}
    # the request carried the stored consent and the handler context
    assert d.request.consents == (record,)
    assert d.request.context["recipient_is_other_handler"] is True

    # a purpose the consent does not cover: denied
    r = link(world, alice["session_token"], purpose="marketing.advertising")
    assert (r.status_code, r.json()["instrument"]) == (400, ART23[1])
    # an unknown purpose key is a bad request, decided nothing
    n = len(world.store.transfer_attempts())
    r = link(world, alice["session_token"], purpose="world-domination")
    assert (r.status_code, r.json()["code"]) == (400, "PG150")
    assert len(world.store.transfer_attempts()) == n
    # a consent that covers only the nickname does not cover the avatar the grant also holds
    consent(world, alice["grant"], purposes=["account"], method="m", categories=["user.name"])
    assert gate.decide(grant, "duoshan", world.clock.now()).effect == "deny"

    # (one instant on the fixed clock: the registry orders ties by id, so compare sorted)
    attempts = sorted((a.effect, a.rule_id) for a in world.store.transfer_attempts(alice["grant"]))
    assert attempts == [("deny", ART23[0])] * 3 + [("permit", ART23[0])]


def test_art23_other_handler_condition(world: World) -> None:
    """The gate states whether the recipient is another handler; a bundle whose Art. 23 rule
    carries that controller condition leaves an app of the same controller ungoverned. (The
    shipped bundle covers every recipient: the condition would fail open on requests that do
    not state it.)"""
    art23 = (EXTRA / "pipl-art-23-provision-to-other-handlers.yaml").read_text()
    marker = "    data:\n      categories: [user]\n"
    assert marker in art23
    conditioned = art23.replace(
        marker,
        marker + "    when:\n      - {field: context.recipient_is_other_handler, equals: true}\n",
    )
    pdp = ReferencePDP(PolicySet.of([load_bundle_text(conditioned, "art23-conditioned.yaml")]))
    world.service.gate = TransferGate(world.store, pdp, world.audit, clock=world.clock)
    world.clock.advance((IN_2022 - world.clock.now()).total_seconds())
    world.store.register_app("douyin-lite", "operator of Douyin", "lite-secret")
    alice = world.sign_in("alice").json()
    grant = world.store.grant(alice["grant"])
    assert grant is not None
    r = world.post(
        "/link",
        {
            "subject_token": alice["session_token"],
            "client_id": "douyin-lite",
            "client_secret": "lite-secret",
        },
    )
    assert r.status_code == 200, r.text
    (attempt,) = world.store.transfer_attempts()
    assert (attempt.to_app, attempt.effect, attempt.rule_id) == (
        "douyin-lite",
        "not_applicable",
        None,
    )
    same = world.service.gate.decide(grant, "douyin-lite", world.clock.now())
    assert same.request.context["recipient_is_other_handler"] is False
    assert "legal_basis" not in same.request.context
    r = link(world, alice["session_token"])  # duoshan: another handler, no consent
    assert (r.status_code, r.json()["rule"]) == (400, ART23[0])
    # the shipped bundle governs every recipient: the same-controller app needs a consent too
    shipped = use_policy(world, "pipl-art-23-provision-to-other-handlers.yaml")
    assert shipped.decide(grant, "douyin-lite", world.clock.now()).effect == "deny"


def test_art15_withdrawn_consent(world: World) -> None:
    gate = use_policy(
        world,
        "pipl-art-23-provision-to-other-handlers.yaml",
        "pipl-art-15-withdrawal-of-consent.yaml",
    )
    alice = world.sign_in("alice").json()
    grant = world.store.grant(alice["grant"])
    assert grant is not None
    given = world.clock.now()
    consent(world, alice["grant"], **FULL)
    assert link(world, alice["session_token"]).status_code == 200

    world.clock.advance(1800)  # (within the session token's lifetime)
    withdrawn = world.clock.now()
    assert world.store.withdraw_separate_consent(alice["grant"], "duoshan", withdrawn)
    assert not world.store.withdraw_separate_consent(alice["grant"], "duoshan", withdrawn)
    assert world.store.separate_consent(alice["grant"], "duoshan") is None
    world.clock.advance(60)
    r = link(world, alice["session_token"])
    assert r.status_code == 400
    d = gate.decide(grant, "duoshan", world.clock.now())
    cited = {(x.rule_id, x.instrument_id) for x in d.determining}
    assert cited == {ART23, ART15}
    # processing before the withdrawal stays valid: a decision about that time permits
    assert gate.decide(grant, "duoshan", given + timedelta(minutes=10)).effect == "permit"
    # a fresh consent after the withdrawal counts again
    consent(world, alice["grant"], **FULL)
    assert link(world, alice["session_token"]).status_code == 200
    events = [e.kind for e in world.audit.entries() if e.kind.startswith("grant.consent")]
    assert events == ["grant.consent_withdrawn"]


def test_builtin_art23_uses_stored_fields(world: World) -> None:
    """Without the Art. 23 bundle (injunction only), the gate's built-in check asks the same
    of the stored consent: named purpose, method and categories, not withdrawn."""
    gate = world.service.gate
    alice = world.sign_in_at("alice", GRANTED_EARLY)
    world.store.record_first_use(alice["grant"], "duoshan", datetime(2019, 2, 1, tzinfo=UTC))
    grant = world.store.grant(alice["grant"])
    assert grant is not None
    at = IN_2022
    consent(world, alice["grant"], purposes=["account"], categories=["user"])  # no method
    top = gate.decide(grant, "duoshan", at).determining[0]
    assert (top.rule_id, top.instrument_id) == ("separate-consent-for-provision", ART23[1])
    consent(world, alice["grant"], **FULL)
    assert gate.decide(grant, "duoshan", at).effect == "permit"
    world.store.withdraw_separate_consent(alice["grant"], "duoshan", at)
    assert gate.decide(grant, "duoshan", at + timedelta(seconds=1)).effect == "deny"


def test_consent_columns_migrate(store_url: str, tmp_path: Path) -> None:
    """A registry created before purposes / method / categories / withdrawal were stored opens,
    gains the columns, keeps its rows (read as naming nothing) and takes new consents."""
    url = store_url if "://" in store_url else f"sqlite:///{store_url}"
    old = MetaData()
    table = Table(
        "separate_consents",
        old,
        Column("grant_id", String(64), primary_key=True),
        Column("recipient", String(128), primary_key=True),
        Column("given_at", DateTime(timezone=True), nullable=False),
        Column("evidence", Text, nullable=False),
    )
    engine = create_engine(url)
    old.create_all(engine)
    given = datetime(2021, 12, 1, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(table).values(
                grant_id="g-old", recipient="duoshan", given_at=given, evidence="2021 screen"
            )
        )
    engine.dispose()

    cipher = TokenCipher(generate_key())
    store = SqlGrantStore(store_url, cipher)
    try:
        (rec,) = store.consent_records("g-old")
        assert (rec.recipient, rec.given_at, rec.withdrawn_at) == ("duoshan", given, None)
        assert (rec.purposes, rec.categories, rec.method) == (frozenset(), frozenset(), None)
        assert rec.consent_id == "g-old:duoshan"
        store.record_separate_consent("g-new", "duoshan", given, "v3", **FULL)  # type: ignore[arg-type]
        (new,) = store.consent_records("g-new")
        assert new.purposes == frozenset({"account"}) and new.method == "account_link"
        assert store.withdraw_separate_consent("g-old", "duoshan", given + timedelta(days=1))
    finally:
        store.close()
    # opening again is a no-op (idempotent migration), and the data is still there
    again = SqlGrantStore(store_url, cipher)
    try:
        recs = {r.consent_id: r for r in again.consent_records("g-old")}
        assert recs["g-old:duoshan"].withdrawn_at == given + timedelta(days=1)
        payload = [json.dumps(sorted(r.categories)) for r in again.consent_records("g-new")]
        assert payload == ['["user"]']
    finally:
        again.close()


_PURPOSES = st.frozensets(st.sampled_from(["account", "account.login", "social", "marketing"]))
_CATEGORIES = st.frozensets(
    st.sampled_from(["user", "user.name", "user.name.nickname", "user.avatar", "user.unique_id"])
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    purposes=_PURPOSES,
    categories=_CATEGORIES,
    method=st.sampled_from([None, "account_link"]),
    recipient=st.sampled_from(["duoshan", "kuaishou"]),
    withdrawn=st.booleans(),
    purpose=st.sampled_from([None, "account.login", "marketing.advertising"]),
)
@example(  # a permit is always among the examples
    purposes=frozenset({"account"}),
    categories=frozenset({"user.name", "user.avatar", "user.unique_id"}),
    method="account_link",
    recipient="duoshan",
    withdrawn=False,
    purpose="account.login",
)
def test_builtin_check_agrees_with_the_bundle(
    art23_store: tuple[SqlGrantStore, str, TransferGate, TransferGate],
    purposes: frozenset[str],
    categories: frozenset[str],
    method: str | None,
    recipient: str,
    withdrawn: bool,
    purpose: str | None,
) -> None:
    """Differential: on random stored consents, the gate's built-in Art. 23 check (policy:
    the injunction only, the account grandfathered) and the shipped Art. 23 bundle decide the
    same effect for duoshan."""
    store, grant_id, builtin, bundle = art23_store
    given_at = IN_2022 - timedelta(days=30)
    store.record_separate_consent(
        grant_id, recipient, given_at, "e", purposes=purposes, method=method, categories=categories
    )
    if withdrawn:
        store.withdraw_separate_consent(grant_id, recipient, IN_2022 - timedelta(days=1))
    grant = store.grant(grant_id)
    assert grant is not None
    try:
        a = builtin.decide(grant, "duoshan", IN_2022, purpose=purpose)
        b = bundle.decide(grant, "duoshan", IN_2022, purpose=purpose)
    finally:  # the next example starts with no active consent
        for r in ("duoshan", "kuaishou"):
            store.withdraw_separate_consent(grant_id, r, given_at)
    # the oracle: Art. 23 as docs/policy-language.md states the consent condition
    value_categories = ("user.name.nickname", "user.avatar", "user.unique_id.openid")
    expected = (
        recipient == "duoshan"
        and not withdrawn
        and bool(purposes)
        and method is not None
        and all(any(covers(k, c) for k in categories) for c in value_categories)
        and (purpose is None or any(covers(p, purpose) for p in purposes))
    )
    assert a.allowed == b.allowed == expected, (a.explain(), b.explain())


class _Null:
    def append(self, kind: str, payload: object) -> object:
        return None


@pytest.fixture(scope="module")
def art23_store(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[SqlGrantStore, str, TransferGate, TransferGate]]:
    store = SqlGrantStore(tmp_path_factory.mktemp("art23") / "g.db", TokenCipher(generate_key()))
    store.register_app("douyin", "operator of Douyin", "a")
    store.register_app("duoshan", "operator of Duoshan", "b")
    at = datetime(2019, 1, 5, tzinfo=UTC)
    g = GrantRecord("g1", "wechat", "douyin", "o1", "u1", "snsapi_userinfo", at)
    values = [
        LabelledValue(f"v{i}", cat, f, "x", 1, frozenset({"g1"}), at)
        for i, (f, cat) in enumerate(
            [
                ("nickname", "user.name.nickname"),
                ("headimgurl", "user.avatar"),
                ("openid", "user.unique_id.openid"),
            ]
        )
    ]
    store.record_login(g, [], values, at)
    store.record_first_use("g1", "duoshan", datetime(2019, 2, 1, tzinfo=UTC))
    builtin = TransferGate(store, ReferencePDP(load_policy_dir(ROOT / "policies")), _Null())
    art23 = load_bundle(EXTRA / "pipl-art-23-provision-to-other-handlers.yaml")
    bundle = TransferGate(store, ReferencePDP(PolicySet.of([art23])), _Null())
    yield store, "g1", builtin, bundle
    store.close()

"""The v2 language: selectors with not/any, conditions, consents, shadow mode, defaults, kinds."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from provguard.decide import ConsentRecord, DecisionPoint, Request, decide
from provguard.errors import PolicyError, PolicyErrors, RequestError
from provguard.policy import PolicySet, load_bundle_text, load_policy_dir
from provguard.policy.live import LivePolicy

AT = datetime(2022, 6, 1, tzinfo=UTC)
HEAD = "instrument: {id: t, kind: internal_policy, issuer: me, effective_from: 2019-01-01}\n"


def ps(body: str, head: str = HEAD) -> PolicySet:
    return PolicySet.of([load_bundle_text(head + body, "t.yaml")])


def req(**kw: object) -> Request:
    base: dict[str, object] = {
        "app": "douyin",
        "action": "use",
        "category": "user.avatar",
        "origins": frozenset({"wechat"}),
        "at": AT,
        "purpose": "profile.display",
    }
    base.update(kw)
    return Request(**base)  # type: ignore[arg-type]


def test_any_and_not_selectors() -> None:
    p = ps(
        "rules:\n"
        "  - {id: r, effect: deny, actions: any, apps: {not: [douyin]}, controllers: any,\n"
        "     data: {categories: any, origins: any}}\n"
    )
    assert decide(p, req()).effect == "not_applicable"
    d = decide(p, req(app="duoshan", action="store", purpose=None, category="grant.token"))
    assert d.effect == "deny"


def test_conditions_on_grant_subject_and_context() -> None:
    p = ps(
        "rules:\n"
        "  - id: minors\n"
        "    effect: deny\n"
        "    actions: [use]\n"
        "    when:\n"
        "      - {field: subject.age, below: 14}\n"
        "      - {field: grant.status, in: [active, expired]}\n"
        "      - {field: grant.scopes, contains: snsapi_userinfo}\n"
        "      - {field: grant.granted_at, on_or_after: 2020-01-01, before: 2023-01-01}\n"
        "      - {field: context.channel, equals: web}\n"
    )
    good = {
        "subject": {"age": 13},
        "grant_status": "active",
        "grant_scopes": frozenset({"snsapi_userinfo"}),
        "grant_granted_at": datetime(2020, 1, 1, tzinfo=UTC),
        "context": {"channel": "web"},
    }
    assert decide(p, req(**good)).effect == "deny"
    changes: tuple[dict[str, object], ...] = (
        {"subject": {"age": 14}},
        {"subject": {"age": "13"}},  # mistyped: fail closed, the condition does not hold
        {"subject": {}},
        {"grant_status": "revoked"},
        {"grant_scopes": frozenset({"snsapi_base"})},
        {"grant_granted_at": datetime(2019, 12, 31, 23, 59, tzinfo=UTC)},
        {"grant_granted_at": None},
        {"context": {"channel": "app"}},
    )
    for change in changes:
        assert decide(p, req(**{**good, **change})).effect == "not_applicable", change


def test_condition_type_errors_are_located() -> None:
    text = (
        HEAD + "rules:\n"
        "  - id: r\n"
        "    effect: deny\n"
        "    actions: [use]\n"
        "    when:\n"
        "      - {field: grant.status, equals: pending}\n"
        "      - {field: grant.scopes, before: 2020-01-01}\n"
        "      - {field: grant.granted_at, before: 2020-01-01, on_or_after: 2021-01-01}\n"
        "      - {field: bogus.x, exists: true}\n"
    )
    with pytest.raises(PolicyErrors) as info:
        load_bundle_text(text, "c.yaml")
    msgs = "\n".join(str(e) for e in info.value.errors)
    assert "c.yaml:7:9" in msgs and "grant.status is one of active" in msgs
    assert "c.yaml:8:9" in msgs and "does not take before" in msgs
    assert "c.yaml:10:17: Value error, unknown condition field 'bogus.x'" in msgs


def test_contradictory_range_is_a_load_error() -> None:
    text = (
        HEAD + "rules:\n  - {id: r, effect: deny, actions: [use], when: "
        "[{field: grant.granted_at, before: 2020-01-01, on_or_after: 2021-01-01}]}\n"
    )
    with pytest.raises(PolicyError, match=r"t.yaml:3:\d+: condition on 'grant.granted_at' can"):
        load_bundle_text(text, "t.yaml")


def test_shadow_mode_reports_but_never_denies() -> None:
    p = ps(
        "rules:\n"
        "  - {id: s, effect: deny, mode: shadow, actions: [use], description: Trial. More.}\n"
        "  - {id: p, effect: permit, actions: [use]}\n"
    )
    d = decide(p, req())
    assert d.effect == "permit" and d.allowed
    assert [(r.rule_id, r.outcome) for r in d.shadow] == [("s", "shadow")]
    assert d.shadow_denied
    assert d.as_dict()["shadow"][0]["explanation"] == "would deny: Trial"
    assert "s (t): shadow deny" in d.explain()
    only = ps("rules:\n  - {id: s, effect: deny, mode: shadow, actions: [use]}\n")
    d = decide(only, req())
    assert d.effect == "not_applicable" and len(d.shadow) == 1


def test_bundle_default() -> None:
    p = ps("default: deny\nrules:\n  - {id: ok, effect: permit, actions: [use], apps: [douyin]}\n")
    assert decide(p, req()).effect == "permit"
    d = decide(p, req(app="duoshan"))
    assert d.effect == "deny"
    assert [(r.rule_id, r.instrument_id) for r in d.determining] == [("(default)", "t")]
    # out of force: the default says nothing either
    assert decide(p, req(at=datetime(2018, 1, 1, tzinfo=UTC))).effect == "not_applicable"


def test_consent_exception_pipl_art_23(repo_root: Path) -> None:
    p = load_policy_dir(repo_root / "policies" / "extra")
    base = {
        "action": "transfer",
        "category": "user.name.nickname",
        "purpose": None,
        "recipient": "duoshan",
        "origins": frozenset({"user_input"}),
    }
    d = decide(p, req(**base))
    assert d.effect == "deny"
    assert d.determining[0].rule_id == "provision-needs-separate-consent"
    full = ConsentRecord(
        "c1",
        frozenset({"user.name"}),
        frozenset({"social"}),
        recipient="duoshan",
        method="api",
        separate=True,
        given_at=datetime(2022, 1, 1, tzinfo=UTC),
    )
    d = decide(p, req(**base, consents=(full,)))
    assert d.effect == "permit" and d.excepted
    assert "separate consent" in d.reasons[0].explanation
    for bad in (
        ConsentRecord(**{**full.__dict__, "separate": False}),
        ConsentRecord(**{**full.__dict__, "method": None}),
        ConsentRecord(**{**full.__dict__, "recipient": "toutiao"}),
        ConsentRecord(**{**full.__dict__, "categories": frozenset({"user.avatar"})}),
        ConsentRecord(**{**full.__dict__, "withdrawn_at": datetime(2022, 5, 1, tzinfo=UTC)}),
        ConsentRecord(**{**full.__dict__, "given_at": datetime(2022, 7, 1, tzinfo=UTC)}),
    ):
        assert decide(p, req(**base, consents=(bad,))).effect == "deny", bad
    # before PIPL took effect (2021-11-01) the statute says nothing
    early = decide(p, req(**base, at=datetime(2021, 10, 31, tzinfo=UTC)))
    assert early.effect == "not_applicable"


def test_withdrawal_pipl_art_15(repo_root: Path) -> None:
    p = load_policy_dir(repo_root / "policies" / "extra")
    consent = ConsentRecord(
        "c1",
        frozenset({"user"}),
        frozenset({"profile"}),
        given_at=datetime(2022, 1, 1, tzinfo=UTC),
        withdrawn_at=datetime(2022, 5, 1, tzinfo=UTC),
    )
    ctx = {"context": {"legal_basis": "consent"}, "origins": frozenset({"user_input"})}
    d = decide(p, req(consents=(consent,), **ctx))
    assert d.effect == "deny"
    assert d.determining[0].rule_id == "no-processing-after-withdrawal"
    assert [o.kind for o in d.obligations] == ["notify"]
    # processing before the withdrawal stays valid
    before = req(consents=(consent,), at=datetime(2022, 4, 30, tzinfo=UTC), **ctx)
    assert decide(p, before).effect == "not_applicable"
    # another legal basis: not covered
    other = {**ctx, "context": {"legal_basis": "contract"}}
    assert decide(p, req(consents=(consent,), **other)).effect == "not_applicable"


def test_wechat_terms(repo_root: Path) -> None:
    p = load_policy_dir(repo_root / "policies" / "extra")
    own = {"context": {"collected_by_this_app": True}}
    d = decide(p, req(**own))
    assert d.effect == "permit" and d.excepted  # bound to the app that collected it
    d = decide(p, req(context={"collected_by_this_app": False}))
    assert [r.rule_id for r in d.determining] == ["data-bound-to-collecting-app"]
    d = decide(p, req(context={}))  # unknown: not bound, fail closed
    assert d.effect == "deny"
    d = decide(
        p,
        req(action="transfer", purpose=None, recipient="duoshan", category="grant.login", **own),
    )
    assert "no-provision-to-others" in [r.rule_id for r in d.determining]
    d = decide(
        p,
        req(
            action="store",
            purpose=None,
            context={"collected_by_this_app": True, "developer_agreement_status": "terminated"},
        ),
    )
    assert [r.rule_id for r in d.determining] == ["delete-on-termination"]
    assert [(o.kind, o.within_seconds) for o in d.obligations] == [("purge", 0), ("log", None)]


def test_new_instrument_kinds_and_citations(repo_root: Path) -> None:
    p = load_policy_dir(repo_root / "policies" / "extra")
    kinds = {b.instrument.id: b.instrument.kind for b in p.bundles}
    assert kinds == {
        "wechat-open-platform-developer-terms": "platform_terms.developer_agreement",
        "cn-pipl-2021-art-23": "statute",
        "cn-pipl-2021-art-15": "statute",
    }
    for b in p.bundles:
        assert b.instrument.citation
    assert "Article 23" in (p.instrument("cn-pipl-2021-art-23").citation or "")
    assert p.instrument("cn-pipl-2021-art-15").effective_from == date(2021, 11, 1)


def test_request_context_is_hashable_and_checked() -> None:
    a = req(subject={"age": 3}, context={"k": "v"})
    b = req(subject={"age": 3}, context={"k": "v"})
    assert a == b and hash(a) == hash(b)
    pdp = DecisionPoint(ps("rules:\n  - {id: r, effect: deny, actions: [use]}\n"))
    assert pdp.decide(a) is pdp.decide(b)
    with pytest.raises(RequestError, match="unsupported value"):
        req(context={"k": [1, 2]})
    with pytest.raises(RequestError, match="grant status"):
        req(grant_status="pending")
    assert a.as_dict()["subject"] == {"age": 3}


def test_failed_reload_keeps_policy_in_force(tmp_path: Path, injunction_path: Path) -> None:
    good = tmp_path / "good"
    good.mkdir()
    (good / "a.yaml").write_text(injunction_path.read_text())
    live = LivePolicy(load_policy_dir(good).with_event("x", "final_judgment", date(2030, 1, 1)))
    before = live.current
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.yaml").write_text(injunction_path.read_text().replace("effect: deny", "effect: x"))
    errors = live.reload(bad)
    assert errors and all(e.code == "PG110" for e in errors)
    assert live.current is before
    assert live.reload(good) == []
    assert live.current is not before
    assert live.current.events == before.events

"""Leak L7 of issue 4: prohibitions reach the ancestors of their purposes and data categories.

Byun & Li, "Purpose based access control for privacy protection in relational database systems",
VLDB Journal 17(4):603-619, 2008: allowed purposes propagate down the hierarchy, prohibited ones
down *and up*. A request for purpose ``social`` includes ``social.friend_recommendation``, so the
injunction's deny applies to it; a request for category ``user.name`` reads nicknames, so a deny
on ``user.name.nickname`` applies to it. Permits stay descendant-only. Every decision path must
agree: reference, CompiledPolicy, DecisionPoint, decide_batch, Cedar, the analysis (explain,
can, diff, lint) and the SQL data plane (which asks the reference interpreter).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy_gen import policy_sets, requests

from provguard.decide import CompiledPolicy, DecisionPoint, Request, decide, decide_batch
from provguard.decide.analysis import AXES, can, diff, explain_rules, lint, rule_covers
from provguard.decide.reference import key_matches, keys_match
from provguard.policy import PolicySet, load_bundle_text, load_policy_dir
from provguard.policy.model import ConsentCondition
from provguard.provenance import default_registry
from provguard.taxonomy import related
from provguard.taxonomy.keys import ancestors

AT = datetime(2019, 6, 1, tzinfo=UTC)
RULE1 = "no-platform-profile-in-friend-recommendation"
INJ = "cn-tj-binhai-2019-douyin-duoshan"


@pytest.fixture(scope="module")
def injunction(repo_root: Path) -> PolicySet:
    return load_policy_dir(repo_root / "policies")


def _req(
    category: str = "user.name.nickname",
    purpose: str | None = "social",
    *,
    app: str = "douyin",
    action: str = "use",
    origins: frozenset[str] = frozenset({"wechat"}),
) -> Request:
    return Request(app, action, category, origins, AT, purpose)


def _all_paths(ps: PolicySet, req: Request) -> list[tuple[str, str, tuple[str, ...]]]:
    """(path, effect, determining rule ids) from every engine but Cedar."""
    cp = CompiledPolicy(ps)
    out: list[tuple[str, str, tuple[str, ...]]] = []
    for name, d in (
        ("reference", decide(ps, req)),
        ("compiled", cp.decide(req)),
        ("point", DecisionPoint(ps).decide(req)),
    ):
        out.append((name, d.effect, tuple(r.rule_id for r in d.determining)))
    reg = default_registry()
    b = decide_batch(
        cp,
        app=req.app,
        action=req.action,
        category=[req.category],
        purpose=req.purpose,
        origins=np.array([reg.mask(req.origins)], dtype=np.uint64),
        at=np.array([np.datetime64(AT.replace(tzinfo=None), "ns")]),
    )
    effect = {0: "not_applicable", 1: "permit", 2: "deny"}[int(b.effect[0])]
    out.append(("batch", effect, b.determining_rules(0)))
    return out


# --- the keys -----------------------------------------------------------------------------------


def test_key_matching_by_effect() -> None:
    assert related("social", "social.friend_recommendation")
    assert related("social.friend_recommendation", "social")
    assert not related("social.messaging", "social.friend_recommendation")
    assert not related("social", "socialx")
    # deny: equal, below, above; never a sibling or a prefix that is not a key boundary
    assert key_matches("deny", "social.friend_recommendation", "social")
    assert key_matches("deny", "social.friend_recommendation", "social.friend_recommendation")
    assert key_matches("deny", "social", "social.friend_recommendation")
    assert not key_matches("deny", "social.friend_recommendation", "social.messaging")
    assert not key_matches("deny", "user.name.nickname", "user.name.legal")
    assert key_matches("deny", "user.name.nickname", "user")
    # permit: equal or below only
    assert not key_matches("permit", "social.friend_recommendation", "social")
    assert key_matches("permit", "social", "social.friend_recommendation")
    # absent keys
    assert keys_match("deny", None, None) and keys_match("permit", None, "social")
    assert not keys_match("deny", ("social",), None)


# --- the injunction: the leak itself --------------------------------------------------------------


@pytest.mark.parametrize(
    ("category", "purpose"),
    [
        ("user.name.nickname", "social"),  # the broader purpose
        ("user.name", "social.friend_recommendation"),  # the broader category
        ("user", "social.friend_recommendation"),
        ("user.name", "social"),  # both
        ("user.avatar", "social"),
    ],
)
def test_injunction_denies_douyin_broader_requests(
    injunction: PolicySet, category: str, purpose: str
) -> None:
    req = _req(category, purpose)
    got = _all_paths(injunction, req)
    assert got == [(p, "deny", (RULE1,)) for p in ("reference", "compiled", "point", "batch")]
    # qq too, and a label that mixes in other origins
    assert (
        decide(injunction, _req(category, purpose, origins=frozenset({"qq", "douyin"}))).effect
        == "deny"
    )


@pytest.mark.parametrize(
    ("category", "purpose", "origins"),
    [
        ("user.name.nickname", "social.messaging", {"wechat"}),  # a sibling purpose
        ("user.name.nickname", "profile.display", {"wechat"}),  # another branch
        ("user.name.legal", "social", {"wechat"}),  # a sibling category
        ("user.unique_id", "social", {"wechat"}),
        ("user.name", "social", {"douyin", "user_input"}),  # the app's own data
    ],
)
def test_injunction_leaves_unrelated_requests_alone(
    injunction: PolicySet, category: str, purpose: str, origins: set[str]
) -> None:
    req = _req(category, purpose, origins=frozenset(origins))
    got = _all_paths(injunction, req)
    assert got == [(p, "not_applicable", ()) for p in ("reference", "compiled", "point", "batch")]


def test_duoshan_rule_without_purposes_denies_the_parent_category(injunction: PolicySet) -> None:
    d = decide(injunction, _req("user", "profile.display", app="duoshan", action="display"))
    assert d.effect == "deny"
    assert [r.rule_id for r in d.determining] == ["duoshan-no-platform-profile"]


def test_memoised_point_keeps_ancestor_and_sibling_apart(injunction: PolicySet) -> None:
    """The DecisionPoint memo and the compiled plan cache are keyed by the exact purpose and
    category: deciding a sibling first must not leak its answer to the ancestor, or back."""
    point = DecisionPoint(injunction)
    order = [
        ("user.name.nickname", "social.messaging", "not_applicable"),
        ("user.name.nickname", "social", "deny"),
        ("user.name.legal", "social", "not_applicable"),
        ("user.name", "social", "deny"),
        ("user.name.nickname", "social.messaging", "not_applicable"),
        ("user.name.nickname", "social", "deny"),
    ]
    assert [point.decide(_req(c, p)).effect for c, p, _ in order] == [e for _, _, e in order]


def test_cedar_agrees_on_the_leak(injunction: PolicySet) -> None:
    cedarpy = pytest.importorskip("cedarpy")
    from provguard.decide.cedar import cedar_request, expected_cedar, to_cedar

    cp = to_cedar(injunction)
    # the translation lists the ancestors of the deny's keys explicitly
    assert '["social"].contains(context.purpose)' in cp.text
    assert '["user", "user.name"].contains(context.category)' in cp.text
    reqs = [
        _req(c, p)
        for c in ("user", "user.name", "user.name.nickname", "user.name.legal", "user.avatar")
        for p in ("social", "social.friend_recommendation", "social.messaging", "profile")
    ]
    results = cedarpy.is_authorized_batch(
        [cedar_request(r) for r in reqs], cedarpy.PolicySet.from_str(cp.text), []
    )
    denies = 0
    for r, res in zip(reqs, results, strict=True):
        d = decide(injunction, r)
        got = {cp.reasons[int(p.removeprefix("policy"))][:2] for p in res.diagnostics.reasons}
        want = expected_cedar(d.effect, {(x.rule_id, x.instrument_id) for x in d.determining})
        assert (res.decision.value, got) == want, r
        denies += d.effect == "deny"
    # user / user.name / nickname / avatar x social / friend_recommendation
    assert denies == 8


def test_sql_data_plane_refuses_the_broader_purpose(injunction: PolicySet) -> None:
    """``provguard query --app douyin --purpose social 'SELECT handle ...'`` is refused like the
    narrow purpose; ``social.messaging`` is not (sqlgen asks the reference interpreter)."""
    from provguard.sqlgen import QueryPolicy, QueryRefused, default_schema, rewrite

    def qp(purpose: str) -> QueryPolicy:
        return QueryPolicy(injunction, default_registry(), app="douyin", purpose=purpose, at=AT)

    for purpose in ("social", "social.friend_recommendation"):
        v = qp(purpose).verdict(["user.name.nickname"])
        wechat, qq = default_registry().mask({"wechat"}), default_registry().mask({"qq"})
        unknown = default_registry().mask({"unknown"})  # fail closed: the bundle's default
        assert v.refused == {RULE1: wechat | qq | unknown}, purpose
        with pytest.raises(QueryRefused, match=RULE1):
            rewrite("SELECT handle FROM profiles", default_schema(), qp(purpose))
    assert qp("social.messaging").verdict(["user.name.nickname"]).clear
    rewrite("SELECT handle FROM profiles", default_schema(), qp("social.messaging"))


# --- permits stay descendant-only -----------------------------------------------------------------

PERMIT = """
instrument: {id: consent-fr, kind: consent, issuer: t, effective_from: 2019-01-01}
taxonomy:
  purposes: [{key: social.friend_recommendation.contacts_upload}]
rules:
  - id: allow-fr
    effect: permit
    actions: [use]
    purposes: [social.friend_recommendation]
    data: {categories: [user.name]}
"""


@pytest.mark.parametrize(
    ("category", "purpose", "effect"),
    [
        ("user.name.nickname", "social.friend_recommendation", "permit"),
        ("user.name.nickname", "social.friend_recommendation.contacts_upload", "permit"),
        ("user.name.nickname", "social", "not_applicable"),  # the broader purpose: not permitted
        ("user", "social.friend_recommendation", "not_applicable"),  # the broader category
        ("user.name", "social.friend_recommendation", "permit"),
    ],
)
def test_permit_does_not_reach_the_parent(category: str, purpose: str, effect: str) -> None:
    ps = PolicySet.of([load_bundle_text(PERMIT, "p.yaml")])
    req = Request(
        "douyin", "use", category, frozenset({"wechat"}), AT, purpose, taxonomy=ps.taxonomy
    )
    want = ("allow-fr",) if effect == "permit" else ()
    assert {(e, r) for _, e, r in _all_paths(ps, req)} == {(effect, want)}


DENY_EXT = """
instrument: {id: ext, kind: internal_policy, issuer: t, effective_from: 2019-01-01}
taxonomy:
  categories: [{key: user.name.nickname.platform_copy}]
  purposes: [{key: social.friend_recommendation.contacts_upload}]
rules:
  - id: no-copies-in-upload
    effect: deny
    actions: [use]
    purposes: [social.friend_recommendation.contacts_upload]
    data: {categories: [user.name.nickname.platform_copy], origins: [wechat]}
"""

OTHER_EXT = """
instrument: {id: other, kind: internal_policy, issuer: t, effective_from: 2019-01-01}
taxonomy:
  categories: [{key: user.name.alias}]
  purposes: [{key: social.friend_recommendation.nearby}]
rules:
  - {id: x, effect: permit, actions: [store], data: {categories: [user.name.alias]}}
"""


def test_deny_on_an_extension_key_reaches_builtin_ancestors() -> None:
    ps = PolicySet.of([load_bundle_text(DENY_EXT, "d.yaml")])
    for cat, purpose, effect in [
        ("user.name.nickname", "social.friend_recommendation", "deny"),
        ("user", "social", "deny"),
        (
            "user.name.nickname.platform_copy",
            "social.friend_recommendation.contacts_upload",
            "deny",
        ),
        ("user.name.legal", "social.friend_recommendation", "not_applicable"),
        ("user.name.nickname", "social.messaging", "not_applicable"),
    ]:
        req = Request(
            "douyin", "use", cat, frozenset({"wechat"}), AT, purpose, taxonomy=ps.taxonomy
        )
        want = ("no-copies-in-upload",) if effect == "deny" else ()
        assert {(e, r) for _, e, r in _all_paths(ps, req)} == {(effect, want)}, (cat, purpose)


def test_keys_of_another_set_match_like_the_reference() -> None:
    """A request whose keys only another set's extensions define (``user.name.alias``,
    ``social.friend_recommendation.nearby``): the compiled index falls back to the nearest known
    ancestor's *descendant-only* mask, so the deny on ``...platform_copy`` / ``contacts_upload``
    (below that ancestor, but not related to the request key) does not match, as in the
    reference."""
    ps = PolicySet.of([load_bundle_text(DENY_EXT, "d.yaml")])
    other = PolicySet.of([load_bundle_text(OTHER_EXT, "o.yaml")])
    cp = CompiledPolicy(ps)
    both = PolicySet.of([*ps.bundles, *other.bundles])
    for cat, purpose, effect in [
        ("user.name.alias", "social.friend_recommendation.contacts_upload", "not_applicable"),
        (
            "user.name.nickname.platform_copy",
            "social.friend_recommendation.nearby",
            "not_applicable",
        ),
        ("user.name.alias", "social.friend_recommendation.nearby", "not_applicable"),
        ("user.name.alias", "social", "not_applicable"),
        ("user.name", "social.friend_recommendation.nearby", "not_applicable"),
        ("user.name", "social", "deny"),
    ]:
        req = Request(
            "douyin", "use", cat, frozenset({"wechat"}), AT, purpose, taxonomy=both.taxonomy
        )
        assert decide(ps, req).effect == effect, (cat, purpose)
        assert cp.decide(req).effect == effect, (cat, purpose)


def test_shadow_deny_reaches_the_parent_too() -> None:
    text = DENY_EXT.replace("effect: deny", "effect: deny\n    mode: shadow")
    ps = PolicySet.of([load_bundle_text(text, "s.yaml")])
    req = Request("douyin", "use", "user.name", frozenset({"wechat"}), AT, "social")
    for d in (decide(ps, req), CompiledPolicy(ps).decide(req)):
        assert d.effect == "not_applicable"
        assert [r.rule_id for r in d.shadow] == ["no-copies-in-upload"]


# --- analysis: explain, can, diff, lint -----------------------------------------------------------


def test_explain_says_why_a_sibling_is_not_matched(injunction: PolicySet) -> None:
    traces = {t.rule_id: t for t in explain_rules(injunction, _req("user.name", "social"))}
    assert traces[RULE1].status == "applied"
    traces = {
        t.rule_id: t for t in explain_rules(injunction, _req("user.name", "social.messaging"))
    }
    assert traces[RULE1].detail == (
        "purpose 'social.messaging' is not covered by social.friend_recommendation "
        "and is not above it"
    )


def test_can_douyin_use_handles_for_social(injunction: PolicySet) -> None:
    rows = can(injunction, app="douyin", category="user.name", origin="wechat", purpose="social")
    by_period = {r.request["from"]: r for r in rows}
    in_force = [r for r in rows if not r.allowed]
    assert in_force and all(RULE1 in r.verdict for r in in_force)
    # allowed only outside the order's validity (before 2019-03-20 Asia/Shanghai)
    assert all(r.allowed == ("2019-03-20" not in k) for k, r in by_period.items())


def test_diff_narrow_to_broad_deny_changes_only_related_classes() -> None:
    """Moving a deny from ``social.friend_recommendation`` to ``social`` changes exactly the
    sibling purposes under ``social`` (the ancestor ``social`` was already denied)."""
    text = """
instrument: {id: i, kind: internal_policy, issuer: t, effective_from: 2019-01-01}
rules:
  - {id: r, effect: deny, actions: [use], purposes: [PURPOSE], data: {categories: [user.name]}}
"""
    a = PolicySet.of(
        [load_bundle_text(text.replace("PURPOSE", "social.friend_recommendation"), "a")]
    )
    b = PolicySet.of([load_bundle_text(text.replace("PURPOSE", "social"), "b")])
    result = diff(a, b)
    changed_purposes: set[str] = set()
    for row in result.rows:
        changed_purposes.update(
            str(m)
            for m in result.axis_members("purpose", row.index[AXES.index("purpose")])
            if m is not None
        )
    assert changed_purposes == {"social.messaging"}
    # the parent was already denied before: same decision
    for purpose in ("social", "social.friend_recommendation", "social.messaging", "profile"):
        req = Request("douyin", "use", "user", frozenset({"qq"}), AT, purpose)
        changes = decide(a, req).effect != decide(b, req).effect
        idx = result.locate(req)
        assert idx is not None
        assert (idx in {r.index for r in result.rows}) == changes, purpose


def test_lint_shadowed_follows_the_semantics() -> None:
    def rules(permit_purpose: str, deny_purpose: str) -> PolicySet:
        return PolicySet.of(
            [
                load_bundle_text(
                    "instrument: {id: i, kind: internal_policy, issuer: t, "
                    "effective_from: 2019-01-01}\nrules:\n"
                    f"  - {{id: p, effect: permit, actions: [use], purposes: [{permit_purpose}]}}\n"
                    f"  - {{id: d, effect: deny, actions: [use], purposes: [{deny_purpose}]}}\n",
                    "l.yaml",
                )
            ]
        )

    def shadowed(ps: PolicySet) -> bool:
        return any(f.kind == "shadowed" for f in lint(ps))

    assert shadowed(rules("social.friend_recommendation", "social"))
    assert not shadowed(rules("social", "social.friend_recommendation"))  # messaging stays
    # a permit on social matches every request the deny on social.friend_recommendation does
    # (its ancestors are just social): rule_covers says so...
    p, d = (r for _, r in rules("social", "social.friend_recommendation").rules())
    assert rule_covers(p, d)
    # ...but a permit on user.name does not match the deny's ancestor user
    cats = PolicySet.of(
        [
            load_bundle_text(
                "instrument: {id: i, kind: internal_policy, issuer: t, "
                "effective_from: 2019-01-01}\nrules:\n"
                "  - {id: p, effect: permit, actions: [use], data: {categories: [user.name]}}\n"
                "  - {id: d, effect: deny, actions: [use], data: "
                "{categories: [user.name.nickname]}}\n",
                "c.yaml",
            )
        ]
    )
    p, d = (r for _, r in cats.rules())
    assert not rule_covers(p, d)
    assert rule_covers(d, d) and not any(f.kind == "shadowed" for f in lint(cats))


# --- properties on random bundles ---------------------------------------------------------------


def _with_purpose(req: Request, purpose: str) -> Request:
    return Request(
        req.app,
        req.action,
        req.category,
        req.origins,
        req.at,
        purpose,
        req.recipient,
        req.controller,
        req.grant_first_used_by_recipient_at,
        req.grant_granted_at,
        req.grant_status,
        req.grant_scopes,
        req.subject,
        req.context,
        req.consents,
    )


def _with_category(req: Request, category: str) -> Request:
    return Request(
        req.app,
        req.action,
        category,
        req.origins,
        req.at,
        req.purpose,
        req.recipient,
        req.controller,
        req.grant_first_used_by_recipient_at,
        req.grant_granted_at,
        req.grant_status,
        req.grant_scopes,
        req.subject,
        req.context,
        req.consents,
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy_sets(), st.lists(requests(), min_size=1, max_size=6))
def test_denies_fail_closed_upward_and_permits_do_not_spread(
    ps: PolicySet, reqs: list[Request]
) -> None:
    """Monotonicity (Byun & Li): a deny rule applied to a request is applied to the same request
    under every ancestor purpose and every ancestor category; a permit rule applied to a request
    is applied to it under every descendant purpose / category the generator knows; the compiled
    index agrees on every one of them."""
    cp = CompiledPolicy(ps)
    # a consent condition reads the request's category / purpose (a consent covers a request
    # when its keys cover the request's): leave rules with one out of the monotonicity claim
    reads_keys = {
        r.id
        for _, r in ps.rules()
        if any(isinstance(c, ConsentCondition) for c in (*r.when, *r.unless_conditions))
    }
    for req in reqs:
        d = decide(ps, req)
        applied = {(r.rule_id, r.effect) for r in d.reasons if r.outcome == "applied"}
        applied = {(rid, e) for rid, e in applied if rid != "(default)" and rid not in reads_keys}
        denies = {rid for rid, e in applied if e == "deny"}
        permits = {rid for rid, e in applied if e == "permit"}
        variants: list[tuple[Request, str]] = []
        if req.purpose is not None:
            variants += [(_with_purpose(req, a), "up") for a in ancestors(req.purpose)]
            variants += [
                (_with_purpose(req, p), "down")
                for p in ("social.friend_recommendation", "social.messaging", "profile.display")
                if p.startswith(req.purpose + ".")
            ]
        variants += [(_with_category(req, a), "up") for a in ancestors(req.category)]
        variants += [
            (_with_category(req, c), "down")
            for c in ("user.name.nickname", "user.name.legal", "user.avatar", "user.name")
            if c.startswith(req.category + ".")
        ]
        for v, way in variants:
            dv = decide(ps, v)
            assert cp.decide(v).effect == dv.effect
            if way == "up":
                assert denies <= {r.rule_id for r in dv.reasons if r.effect == "deny"}, v
                assert dv.effect == "deny" or not denies
            else:
                assert permits <= {r.rule_id for r in dv.reasons if r.effect == "permit"}, v

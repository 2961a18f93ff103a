from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provguard.decide import Decision, DecisionPoint, Request, decide
from provguard.errors import RequestError
from provguard.policy import PolicySet, load_bundle_text, load_policy_dir

AT = datetime(2019, 6, 30, tzinfo=UTC)
INJ = "cn-tj-binhai-2019-douyin-duoshan"


@pytest.fixture(scope="module")
def policy(repo_root) -> PolicySet:  # type: ignore[no-untyped-def]
    return load_policy_dir(repo_root / "policies")


def req(**kw: object) -> Request:
    base: dict[str, object] = {
        "app": "douyin",
        "action": "use",
        "category": "user.avatar",
        "origins": frozenset({"wechat"}),
        "at": AT,
        "purpose": "social.friend_recommendation",
    }
    base.update(kw)
    return Request(**base)  # type: ignore[arg-type]


def test_rule1_denies_platform_avatar_for_friend_recommendation(policy: PolicySet) -> None:
    d = decide(policy, req())
    assert d.effect == "deny"
    assert [(r.rule_id, r.instrument_id) for r in d.determining] == [
        ("no-platform-profile-in-friend-recommendation", INJ)
    ]
    assert "when recommending friends" in d.explain()


@pytest.mark.parametrize(
    ("change", "effect"),
    [
        ({"origins": frozenset({"user_input"})}, "not_applicable"),
        ({"origins": frozenset({"qq", "user_input"})}, "deny"),  # a derived value keeps qq
        ({"purpose": "profile.display"}, "not_applicable"),
        # a deny on a narrower purpose reaches the broader one (Byun & Li, VLDB J. 2008): L7
        ({"purpose": "social"}, "deny"),
        ({"purpose": "social.messaging"}, "not_applicable"),  # a sibling purpose
        ({"category": "user.name"}, "deny"),  # a request for all names reads nicknames
        ({"category": "user.name.nickname"}, "deny"),
        ({"category": "user.social.friend_list"}, "not_applicable"),
        ({"action": "derive"}, "deny"),
        # showing a WeChat handle on a recommendation card is using it to recommend friends
        ({"action": "display", "purpose": "social.friend_recommendation"}, "deny"),
        ({"action": "display", "purpose": "profile.display"}, "not_applicable"),
        ({"at": datetime(2019, 3, 19, 15, 59, tzinfo=UTC)}, "not_applicable"),  # before the order
        ({"at": datetime(2019, 3, 20, tzinfo=UTC)}, "deny"),
    ],
)
def test_rule1_targets(policy: PolicySet, change: dict[str, object], effect: str) -> None:
    assert decide(policy, req(**change)).effect == effect


def transfer(
    first_used: datetime | None, recipient: str = "duoshan", origin: str = "wechat"
) -> Request:
    return req(
        action="transfer",
        category="grant.login",
        purpose=None,
        origins=frozenset({origin}),
        recipient=recipient,
        grant_first_used_by_recipient_at=first_used,
    )


def test_rule2_transfer_denied_and_grandfathered(policy: PolicySet) -> None:
    after = decide(policy, transfer(datetime(2019, 3, 20, 0, 0, tzinfo=UTC)))
    assert after.effect == "deny"
    assert after.determining[0].rule_id == "no-login-grant-transfer"
    before = decide(policy, transfer(datetime(2019, 3, 19, 15, 59, 59, tzinfo=UTC)))
    assert before.effect == "permit" and before.excepted
    assert "before 2019-03-20" in before.reasons[0].explanation
    # no record of first use: fail closed, not grandfathered
    assert decide(policy, transfer(None)).effect == "deny"
    # any other app is covered too ("must not provide it to any app other than Douyin")
    assert decide(policy, transfer(None, recipient="toutiao")).effect == "deny"
    assert decide(policy, transfer(None, recipient="douyin")).effect == "not_applicable"
    assert decide(policy, transfer(None, origin="apple")).effect == "not_applicable"


def test_rule3_duoshan(policy: PolicySet) -> None:
    for action in ("use", "derive", "display"):
        d = decide(
            policy,
            req(
                app="duoshan",
                action=action,
                purpose="profile.display",
                category="user.name.nickname",
                origins=frozenset({"qq"}),
            ),
        )
        assert d.effect == "deny", action
        assert d.determining[0].rule_id == "duoshan-no-platform-profile"
    d = decide(policy, req(app="duoshan", action="store", purpose=None, category="user.avatar"))
    assert d.effect == "not_applicable"


def test_final_judgment_event_ends_the_order(policy: PolicySet) -> None:
    ended = policy.with_event(INJ, "final_judgment", date(2020, 1, 1))
    assert decide(ended, req(at=datetime(2019, 12, 31, tzinfo=UTC))).effect == "deny"
    assert decide(ended, req(at=datetime(2020, 1, 1, tzinfo=UTC))).effect == "not_applicable"
    # history stays: the original set still denies later requests
    assert decide(policy, req(at=datetime(2020, 1, 1, tzinfo=UTC))).effect == "deny"


def test_bad_requests() -> None:
    with pytest.raises(RequestError, match="needs a purpose"):
        req(purpose=None)
    with pytest.raises(RequestError, match="needs a recipient"):
        req(action="transfer", category="grant.login", purpose=None)
    with pytest.raises(RequestError, match="timezone-aware"):
        req(at=datetime(2019, 6, 30))
    with pytest.raises(RequestError, match="unknown data category"):
        req(category="user.avatarr")
    with pytest.raises(RequestError, match="at least one origin"):
        req(origins=frozenset())


def test_decision_point_memoises_but_reports_every_decision(policy: PolicySet) -> None:
    seen: list[Decision] = []
    pdp = DecisionPoint(policy, on_decision=seen.append)
    a = pdp.decide(req())
    b = pdp.decide(req())
    assert a is b and len(seen) == 2 and pdp.count == 2


# --- deny overrides permit, on random bundles ---------------------------------------------

APPS = ["douyin", "duoshan", "toutiao"]
ORIGINS = ["wechat", "qq", "user_input", "unknown"]
CATS = ["user.avatar", "user.name.nickname", "user.name", "user.social.friend_list"]
PURPOSES = ["social.friend_recommendation", "profile.display", "social"]


@st.composite
def bundles(draw: st.DrawFn) -> str:
    n = draw(st.integers(1, 6))
    lines = [
        "instrument: {id: i, kind: internal_policy, issuer: test, effective_from: 2019-01-01}",
        "rules:",
    ]
    for k in range(n):
        effect = draw(st.sampled_from(["deny", "permit"]))
        apps = draw(st.lists(st.sampled_from(APPS), min_size=1, max_size=2, unique=True))
        origins = draw(st.lists(st.sampled_from(ORIGINS), min_size=1, max_size=2, unique=True))
        cats = draw(st.lists(st.sampled_from(CATS), min_size=1, max_size=2, unique=True))
        lines.append(
            f"  - {{id: r{k}, effect: {effect}, actions: [use], apps: [{', '.join(apps)}],"
            f" data: {{categories: [{', '.join(cats)}], origins: [{', '.join(origins)}]}}}}"
        )
    return "\n".join(lines) + "\n"


@settings(max_examples=150, deadline=None)
@given(
    bundles(),
    st.sampled_from(APPS),
    st.sampled_from(CATS),
    st.sets(st.sampled_from(ORIGINS), min_size=1),
    st.sampled_from(PURPOSES),
)
def test_deny_overrides_permit(
    text: str, app: str, cat: str, origins: set[str], purpose: str
) -> None:
    ps = PolicySet.of([load_bundle_text(text)])
    r = Request(app, "use", cat, frozenset(origins), AT, purpose=purpose)
    d = decide(ps, r)
    # an independent statement of the semantics, rule by rule
    matching = []
    for _, rule in ps.rules():
        # a permit's categories match the keys below them; a deny's also the keys above them
        cats_ok = rule.categories is None or any(
            cat == c
            or cat.startswith(c + ".")
            or (rule.effect == "deny" and c.startswith(cat + "."))
            for c in rule.categories
        )
        if app in (rule.apps.values or ()) and cats_ok and rule.origins and rule.origins & origins:
            matching.append(rule.effect)
    expected = "deny" if "deny" in matching else ("permit" if matching else "not_applicable")
    assert d.effect == expected
    assert len(d.reasons) == len(matching)

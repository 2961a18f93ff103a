"""``policy diff`` / ``policy can`` exact over consents and subject / context / scope conditions.

Every part of the request context a condition reads is a finite partition (bins); these tests
check the bins on the shipped PIPL bundle, on hand-written pairs of bundles, and against the
reference interpreter on random bundles and random concrete requests (differential).
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import typer
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from policy_gen import policy_sets, requests
from typer.testing import CliRunner

from provguard.cli.policy import policy_app
from provguard.decide import ConsentRecord, Request, decide
from provguard.decide.analysis import AXES, Verdict, can, diff
from provguard.policy import PolicySet, load_bundle_text, load_policy_dir

app = typer.Typer()
app.add_typer(policy_app, name="policy")
runner = CliRunner()
HEAD = "instrument: {id: t, kind: statute, issuer: me, effective_from: 2021-11-01}\nrules:\n"


def _ps(rules: str) -> PolicySet:
    return PolicySet.of([load_bundle_text(HEAD + rules, "t.yaml")])


def test_pipl_art_23_can_transfer_with_the_consent_witness(repo_root: Path) -> None:
    path = repo_root / "policies/extra/pipl-art-23-provision-to-other-handlers.yaml"
    ps = load_policy_dir(path)
    rows = can(
        ps, app="douyin", category="user.name", origin="wechat", purpose="profile.display",
        action="transfer",
    )  # fmt: skip
    in_force = [r for r in rows if r.request["from"] == "2021-11-01 Asia/Shanghai"]
    by_consent = {r.request["consent"]: r for r in in_force}
    full = "separate consent naming recipient,purpose,method,categories"
    assert set(by_consent) == {"no consent", full}
    assert by_consent["no consent"].verdict == "deny [provision-needs-separate-consent]"
    ok = by_consent[full]
    assert ok.allowed and ok.verdict == "permit (excepted) [provision-needs-separate-consent]"
    # the witness is a request the reference interpreter permits, its consent built for it
    w = ok.witness
    assert w is not None and decide(ps, w).effect == "permit" and decide(ps, w).excepted
    (c,) = w.consents
    assert c.recipient == w.recipient and w.purpose in c.purposes and w.category in c.categories
    assert c.method and c.separate and c.given_at is not None and c.given_at <= w.at
    assert c.withdrawn_at is None
    # without the consent, or with one that is not separate / lacks the method: denied
    for bad in (
        (),
        (ConsentRecord("x", c.categories, c.purposes, c.recipient, c.method, False, c.given_at),),
        (ConsentRecord("x", c.categories, c.purposes, c.recipient, None, True, c.given_at),),
    ):
        assert decide(ps, dataclasses.replace(w, consents=bad)).effect == "deny"
    res = runner.invoke(
        app,
        [
            "policy", "can", "--app", "douyin", "--action", "transfer", "--category",
            "user.name", "--origin", "wechat", "--purpose", "profile.display", "--policy",
            str(path),
        ],
        env={"COLUMNS": "250"},
    )  # fmt: skip
    text = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    assert "yes: douyin can transfer" in text and full in text
    assert "permit (excepted) [provision-needs-separate-consent]" in text


def _consent_rules(names: str) -> PolicySet:
    return _ps(
        "  - {id: r, effect: deny, actions: [transfer], recipients: any,"
        f" unless: [{{consent: {{names: [{names}]}}}}]}}\n"
    )


def test_diff_consent_names_recipient_vs_recipient_and_purpose() -> None:
    a, b = _consent_rules("recipient"), _consent_rules("recipient, purpose")
    result = diff(a, b)
    assert result.exact and result.changed > 0
    for r in result.rows:
        # only a consent naming the recipient (and the categories, as any covering consent
        # does) but no purpose changes; it can only cover a transfer without a purpose
        assert r.request["consent"] == "separate consent naming recipient,categories"
        assert r.request["purpose"] == "none" and r.request["action"] == "transfer"
        assert r.before == "permit (excepted) [r]" and r.after == "deny [r]"
        w = result.representative(r.index)
        assert w is not None
        assert decide(a, w).effect == "permit" and decide(b, w).effect == "deny"
        (c,) = w.consents
        assert c.recipient == w.recipient and not c.purposes and not c.method
    labels = {
        result.domain.contexts[-1].bins[i].label  # type: ignore[union-attr]
        for i in range(result.axis_size("consent"))
    }
    assert "separate consent naming recipient,purpose,categories" in labels
    assert diff(a, a).changed == 0
    # the compact table says it in one row per way of changing
    (g,) = result.compact()
    assert result.show("consent", g.values[AXES.index("consent")], g.values) == (
        "separate consent naming recipient,categories"
    )
    rows = result.as_json()["rows"]
    assert isinstance(rows, list) and len(rows) == 1
    assert rows[0]["consent"] == [
        [{"state": "active", "separate": True, "names": ["recipient", "categories"]}]
    ]


def test_diff_context_and_subject_conditions() -> None:
    a = _ps(
        "  - {id: d, effect: deny, actions: [use], when: [{field: context.channel, equals: web}]}\n"
        "  - {id: k, effect: deny, actions: [use], when: [{field: subject.age, below: 14}]}\n"
    )
    b = _ps(
        "  - {id: d, effect: deny, actions: [use],"
        " when: [{field: context.channel, in: [web, mini_program]}]}\n"
        "  - {id: k, effect: deny, actions: [use], when: [{field: subject.age, below: 16}]}\n"
    )
    result = diff(a, b)
    assert result.exact
    axis = result.domain.contexts  # type: ignore[union-attr]
    subject = [b.label for b in axis[AXES.index("subject") - AXES.index("first_used")].bins]
    context = [b.label for b in axis[AXES.index("context") - AXES.index("first_used")].bins]
    # absent / other values share a bin with the values every condition treats alike
    assert subject == [
        "subject.age absent (or 16, 17)",
        "subject.age = 13",
        "subject.age = 14 (or 15)",
    ]
    assert context == [
        "context.channel absent (or '(other)')",
        "context.channel = 'mini_program'",
        "context.channel = 'web'",
    ]
    for r in result.rows:
        # the channel rule changes only for mini_program, the age rule only for 14 <= age < 16
        assert r.request["context"] == context[1] or r.request["subject"] == subject[2], r.request
        if r.request["subject"] != subject[2]:
            assert r.verdicts is not None
            assert "d" not in r.verdicts[0].rules and "d" in r.verdicts[1].rules
    at = datetime(2022, 1, 1, tzinfo=UTC)
    for channel, age, changes in (
        ("mini_program", 30, True),
        ("web", 30, False),
        ("app", 15, True),
        ("app", 15.99, True),
        ("app", 16, False),
        ("app", 13.5, False),
        (None, None, False),
    ):
        req = Request(
            "douyin", "use", "user.avatar", frozenset({"qq"}), at, "profile.display",
            context={} if channel is None else {"channel": channel},
            subject={} if age is None else {"age": age},
        )  # fmt: skip
        idx = result.locate(req)
        assert idx is not None
        in_rows = idx in {r.index for r in result.rows}
        assert in_rows is changes, (channel, age)
        assert (Verdict.of(decide(a, req)) != Verdict.of(decide(b, req))) is changes
    code = runner.invoke(app, ["policy", "diff", "--help"]).exit_code
    assert code == 0


# --- differential: random bundles with conditions against the reference interpreter ---------

CATS = ["user", "user.avatar", "user.name.nickname"]
PURPOSES = ["profile.display", "social.friend_recommendation", "social"]
APPS = ["douyin", "duoshan"]
NAMES = ["recipient", "purpose", "method", "categories"]
DAYS = [date(2021, 1, 1), date(2022, 1, 1)]
SCOPES = ["snsapi_userinfo", "get_user_info"]


@st.composite
def _condition(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 7))
    if kind <= 2:
        names = draw(st.lists(st.sampled_from(NAMES), max_size=3, unique=True))
        state = draw(st.sampled_from(["active", "active", "withdrawn"]))
        sep = draw(st.booleans())
        shown = ", ".join(names)
        return f"{{consent: {{state: {state}, separate: {str(sep).lower()}, names: [{shown}]}}}}"
    if kind == 3:
        op = draw(
            st.sampled_from(["equals: web", "in: [web, app]", "not_in: [web]", "exists: true"])
        )
        return f"{{field: context.channel, {op}}}"
    if kind == 4:
        op = draw(st.sampled_from(["at_least", "below", "equals"]))
        return f"{{field: subject.age, {op}: {draw(st.sampled_from([14, 16, 18]))}}}"
    if kind == 5:
        op = draw(st.sampled_from(["before", "on_or_after", "equals"]))
        return f"{{field: context.day, {op}: {draw(st.sampled_from(DAYS)).isoformat()}}}"
    if kind == 6:
        return f"{{field: grant.scopes, contains: {draw(st.sampled_from(SCOPES))}}}"
    return f"{{field: subject.verified, equals: {draw(st.sampled_from(['true', 'false']))}}}"


@st.composite
def _bundles(draw: st.DrawFn) -> PolicySet:
    lines = []
    for k in range(draw(st.integers(1, 3))):
        parts = [
            f"id: r{k}",
            f"effect: {draw(st.sampled_from(['deny', 'permit']))}",
            f"actions: [{draw(st.sampled_from(['use', 'transfer', 'store']))}]",
        ]
        if draw(st.booleans()):
            parts.append(f"data: {{categories: [{draw(st.sampled_from(CATS))}]}}")
        if draw(st.booleans()):
            parts.append(f"recipients: [{draw(st.sampled_from(APPS))}]")
        conds = ", ".join(draw(st.lists(_condition(), min_size=1, max_size=2)))
        key = draw(st.sampled_from(["when", "unless"]))
        if key == "unless" and "effect: permit" in parts[1]:
            key = "when"
        parts.append(f"{key}: [{conds}]")
        lines.append(f"  - {{{', '.join(parts)}}}")
    return _ps("\n".join(lines) + "\n")


@st.composite
def _requests(draw: st.DrawFn) -> Request:
    action = draw(st.sampled_from(["use", "transfer", "store"]))
    purpose = draw(st.sampled_from([None, *PURPOSES]))
    if action == "use" and purpose is None:
        purpose = PURPOSES[0]
    recipient = draw(st.sampled_from([None, *APPS, "other_app"]))
    if action == "transfer" and recipient is None:
        recipient = "duoshan"
    at = datetime(2022, 3, 1, tzinfo=UTC) + timedelta(hours=draw(st.integers(-2, 2)))
    category = draw(st.sampled_from(CATS))

    def time() -> datetime | None:
        return draw(st.sampled_from([None, at - timedelta(days=1), at, at + timedelta(days=1)]))

    consents = tuple(
        ConsentRecord(
            f"c{i}",
            frozenset(draw(st.lists(st.sampled_from([*CATS, "grant"]), min_size=1, max_size=2))),
            frozenset(draw(st.lists(st.sampled_from(PURPOSES), max_size=2))),
            recipient=draw(st.sampled_from([None, recipient or "douyin", "duoshan"])),
            method=draw(st.sampled_from([None, "api"])),
            separate=draw(st.booleans()),
            given_at=time(),
            withdrawn_at=time(),
        )
        for i in range(draw(st.integers(0, 2)))
    )
    subject: dict[str, object] = {}
    if draw(st.booleans()):
        subject["age"] = draw(st.sampled_from([10, 14, 15, 15.5, 16, 18, 30, "old", True]))
    if draw(st.booleans()):
        subject["verified"] = draw(st.sampled_from([True, False, "yes", 1]))
    context: dict[str, object] = {}
    if draw(st.booleans()):
        context["channel"] = draw(st.sampled_from(["web", "app", "mini", 3]))
    if draw(st.booleans()):
        context["day"] = draw(
            st.sampled_from(
                [date(2020, 12, 31), *DAYS, date(2021, 6, 1), datetime(2022, 1, 1, 5, tzinfo=UTC)]
            )
        )
    return Request(
        app=draw(st.sampled_from([*APPS, "toutiao"])),
        action=action,
        category=category,
        origins=frozenset({draw(st.sampled_from(["wechat", "qq"]))}),
        at=at,
        purpose=purpose,
        recipient=recipient,
        grant_scopes=draw(st.one_of(st.none(), st.frozensets(st.sampled_from(SCOPES)))),
        subject=subject,  # type: ignore[arg-type]
        context=context,  # type: ignore[arg-type]
        consents=consents,
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_bundles(), _bundles(), st.lists(_requests(), min_size=10, max_size=25))
def test_diff_agrees_with_the_reference_on_witnesses_and_concrete_requests(
    a: PolicySet, b: PolicySet, reqs: list[Request]
) -> None:
    result = diff(a, b)
    # more than MAX_CONSENT_KEYS consent requirements: not exact, said so (tested below)
    assume(result.exact)
    changed = {r.index: r.verdicts for r in result.rows}
    # every changed class: its witness request changes the same way under the reference
    for cls, verdicts in list(changed.items())[:40]:
        w = result.representative(cls)
        assert w is not None
        assert (Verdict.of(decide(a, w)), Verdict.of(decide(b, w))) == verdicts
    # concrete requests: mapped to their class; the class changes exactly when they do
    for req in reqs:
        idx = result.locate(req)
        assert idx is not None, req
        va, vb = Verdict.of(decide(a, req)), Verdict.of(decide(b, req))
        if va != vb:
            assert changed.get(idx) == (va, vb), (req, idx)
        else:
            assert idx not in changed, (req, idx, changed.get(idx))
        # and its class's witness decides as it does
        w = result.representative(idx)
        assert w is not None
        assert (Verdict.of(decide(a, w)), Verdict.of(decide(b, w))) == (va, vb)


def test_guards_make_the_result_inexact_and_say_why() -> None:
    names = ["recipient", "purpose", "method", "categories"]
    conds = ", ".join(
        f"{{consent: {{separate: {sep}, names: [{', '.join(names[:k])}]}}}}"
        for sep in ("true", "false")
        for k in range(4)
    )
    a = _ps(f"  - {{id: r, effect: deny, actions: [transfer], unless: [{conds}]}}\n")
    result = diff(a, _consent_rules("recipient"))
    assert not result.exact
    assert result.domain is not None
    assert any("8 distinct consent requirements" in w for w in result.domain.why_inexact)
    assert result.as_json()["why_inexact"] == result.domain.why_inexact
    # the request context guard: too many decisions, context evaluated absent, flagged
    import provguard.decide.analysis as analysis

    old = analysis.MAX_CONTEXT_REQUESTS
    analysis.MAX_CONTEXT_REQUESTS = 1
    try:
        small = diff(_consent_rules("recipient"), _consent_rules("recipient, purpose"))
    finally:
        analysis.MAX_CONTEXT_REQUESTS = old
    assert not small.exact and small.domain is not None
    assert not small.domain.context_enumerated
    assert any("MAX_CONTEXT_REQUESTS" in w for w in small.domain.why_inexact)
    assert small.changed == 0  # evaluated absent, both deny: the change is not seen


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    policy_sets(max_bundles=1, max_rules=3),
    policy_sets(max_bundles=1, max_rules=3),
    st.lists(requests(rich=True), min_size=10, max_size=20),
)
def test_diff_locates_rich_requests_of_the_shared_generator(
    a: PolicySet, b: PolicySet, reqs: list[Request]
) -> None:
    """The shared generator: grant times / status, scopes, subject, context and consent
    conditions, defaults, shadow rules, events; requests with every kind of context."""
    result = diff(a, b)
    assume(result.exact)
    changed = {r.index: r.verdicts for r in result.rows}
    assert result.changed == len(changed)
    for req in reqs:
        idx = result.locate(req)
        assert idx is not None, req
        va, vb = Verdict.of(decide(a, req)), Verdict.of(decide(b, req))
        assert changed.get(idx) == ((va, vb) if va != vb else None), (req, idx)


def test_diff_locates_a_revoked_grant_outside_the_grandfathering_exception() -> None:
    """Regression (hypothesis counterexample, session 8): a grant-time exception never holds for
    a revoked / expired grant, so ``locate`` must put such a request in the status bin of an
    ended grant. It used to put it in the "absent" bin (no condition reads ``grant.status``, so
    the status axis had no probe), whose exception holds: the row said permit (excepted) where
    the reference interpreter denies with the rule's obligations."""
    obligations = "obligations: [{kind: mask, strategy: hash}, {kind: purge, within: P7D}]"
    unless = "unless: {grant_first_used_by_recipient_before: 2019-01-01}"
    head = "instrument: {id: b0, kind: internal_policy, issuer: t, effective_from: 2019-01-01}\n"
    a = PolicySet.of([load_bundle_text(
        head + "rules:\n  - {id: r0, effect: deny, actions: any, when: [{field: grant.granted_at,"
        f" before: 2019-01-01}}], {unless}, {obligations}}}\n",
        "a.yaml",
    )])  # fmt: skip
    b = PolicySet.of([load_bundle_text(
        head + f"rules:\n  - {{id: r0, effect: deny, actions: [use], {unless}, {obligations}}}\n",
        "b.yaml",
    )])  # fmt: skip
    result = diff(a, b)
    assert result.exact and result.domain is not None
    changed = {r.index: r.verdicts for r in result.rows}
    status_axis = AXES.index("grant_status")
    base = Request(
        app="douyin", action="use", category="user", origins=frozenset({"wechat"}),
        at=datetime(2019, 6, 1, tzinfo=UTC), purpose="social.friend_recommendation",
        grant_first_used_by_recipient_at=datetime(2018, 12, 31, 23, 59, 59, tzinfo=UTC),
        grant_status="revoked", context={"channel": "app"},
    )  # fmt: skip
    req = base
    # the reference interpreter: revoked is not grandfathered (deny with the obligations)
    vb = Verdict.of(decide(b, req))
    assert (vb.effect, vb.excepted) == ("deny", False)
    assert [o[0] for o in vb.obligations] == ["mask", "purge"]
    assert Verdict.of(decide(a, req)).effect == "not_applicable"
    idx = result.locate(req)
    assert idx is not None
    assert result.domain.contexts[2].bins[idx[status_axis]].value == "revoked"
    assert changed[idx] == (Verdict.of(decide(a, req)), vb)
    rep = result.representative(idx)
    assert rep is not None and rep.grant_status == "revoked"
    # every status (and no status, and another channel): its own row agrees with the reference
    located = {}
    for status in (None, "active", "revoked", "expired"):
        for context in ({}, {"channel": "app"}, {"channel": "web"}):
            r = dataclasses.replace(base, grant_status=status, context=context)
            i = result.locate(r)
            assert i is not None
            va, vb = Verdict.of(decide(a, r)), Verdict.of(decide(b, r))
            assert changed.get(i) == ((va, vb) if va != vb else None), (status, context)
            located[status] = i
            assert vb.excepted == (status not in ("revoked", "expired")), status
    assert located["revoked"] != located["active"] and located["expired"] != located[None]

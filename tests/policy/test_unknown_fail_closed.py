"""Issue 4: "a value with no recorded origin is ``unknown``, and the policy decides what
``unknown`` gets (fail closed by default)".

A bundle's deny rules that name origins also match a label holding ``unknown`` unless the bundle
says ``unknown_origin: as_written`` (or names ``unknown`` in a rule itself). Every decision path
must agree on the shipped injunction: reference, CompiledPolicy, DecisionPoint, decide_batch,
Cedar, the analysis (``can``, ``diff``), the SQL data plane and the CLI. Also item 3 of the
session-5 brief: ``store`` for friend recommendation is denied by the PDP as by the SQL plane.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy_gen import requests
from typer.testing import CliRunner

from provguard.decide import CompiledPolicy, DecisionPoint, Request, decide, decide_batch
from provguard.decide.analysis import can, diff
from provguard.errors import PolicyError, PolicyErrors
from provguard.policy import PolicySet, load_bundle_text, load_policy_dir
from provguard.provenance import default_registry

AT = datetime(2019, 6, 1, tzinfo=UTC)
BEFORE = datetime(2019, 3, 1, tzinfo=UTC)
RULE1 = "no-platform-profile-in-friend-recommendation"
RULE3 = "duoshan-no-platform-profile"
FR = "social.friend_recommendation"
UNKNOWN_SETS = [
    frozenset({"unknown"}),
    frozenset({"unknown", "user_input"}),
    frozenset({"unknown", "douyin"}),
]

HEAD = "instrument: {id: t, kind: internal_policy, issuer: tests, effective_from: 2019-01-01}\n"


@pytest.fixture(scope="module")
def injunction(repo_root: Path) -> PolicySet:
    return load_policy_dir(repo_root / "policies")


def _paths(ps: PolicySet, req: Request) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Effect and determining rule ids from the reference, compiled, point and batch engines."""
    cp = CompiledPolicy(ps)
    out = {
        name: (d.effect, tuple(r.rule_id for r in d.determining))
        for name, d in (
            ("reference", decide(ps, req)),
            ("compiled", cp.decide(req)),
            ("point", DecisionPoint(ps).decide(req)),
        )
    }
    b = decide_batch(
        cp,
        app=req.app,
        action=req.action,
        category=[req.category],
        purpose=req.purpose,
        origins=np.array([default_registry().mask(req.origins)], dtype=np.uint64),
        at=np.array([np.datetime64(req.at.astimezone(UTC).replace(tzinfo=None), "ns")]),
    )
    effect = {0: "not_applicable", 1: "permit", 2: "deny"}[int(b.effect[0])]
    out["batch"] = (effect, b.determining_rules(0))
    return out


# --- the shipped injunction -----------------------------------------------------------------------


def test_shipped_bundle_is_fail_closed(injunction: PolicySet) -> None:
    (bundle,) = injunction.bundles
    assert bundle.unknown_origin == "fail_closed"
    by_id = {r.id: r for r in bundle.rules}
    for rid in (RULE1, "no-login-grant-transfer", RULE3):
        assert by_id[rid].origins == frozenset({"wechat", "qq", "unknown"}), rid
        assert by_id[rid].unknown_added
        assert "origins: qq, wechat (and unknown: fail closed)" in by_id[rid].summary()


@pytest.mark.parametrize("origins", UNKNOWN_SETS, ids=lambda o: "|".join(sorted(o)))
@pytest.mark.parametrize(
    ("app", "action", "category", "purpose", "rule"),
    [
        ("douyin", "use", "user.name.nickname", FR, RULE1),
        ("douyin", "derive", "user.avatar", FR, RULE1),
        ("douyin", "display", "user.name.nickname", FR, RULE1),
        ("douyin", "store", "user.avatar", FR, RULE1),  # item 3
        ("douyin", "use", "user.name", "social", RULE1),  # ancestors still reached
        ("duoshan", "display", "user.avatar", "profile.display", RULE3),
        ("duoshan", "use", "user.name.nickname", "account", RULE3),
    ],
)
def test_unknown_is_denied_on_every_engine(
    injunction: PolicySet,
    origins: frozenset[str],
    app: str,
    action: str,
    category: str,
    purpose: str | None,
    rule: str,
) -> None:
    req = Request(app, action, category, origins, AT, purpose)
    assert _paths(injunction, req) == dict.fromkeys(
        ("reference", "compiled", "point", "batch"), ("deny", (rule,))
    )
    # before the order nothing applies, to unknown as to anything else
    early = Request(app, action, category, origins, BEFORE, purpose)
    assert {e for e, _ in _paths(injunction, early).values()} == {"not_applicable"}


@pytest.mark.parametrize(
    ("app", "action", "category", "purpose"),
    [
        ("douyin", "use", "user.name.nickname", "profile.display"),  # another purpose
        ("douyin", "use", "user.name.nickname", "social.messaging"),  # a sibling
        ("douyin", "use", "user.social.friend_list", FR),  # another category
        ("duoshan", "store", "user.avatar", None),  # rule 3 does not list store
        ("toutiao", "use", "user.avatar", FR),  # another app
    ],
)
def test_unknown_outside_the_rules_stays_not_applicable(
    injunction: PolicySet, app: str, action: str, category: str, purpose: str | None
) -> None:
    req = Request(app, action, category, frozenset({"unknown"}), AT, purpose)
    assert {e for e, _ in _paths(injunction, req).values()} == {"not_applicable"}
    # and a first-party label is untouched by rule 1
    own = Request("douyin", "use", "user.name.nickname", frozenset({"douyin"}), AT, FR)
    assert {e for e, _ in _paths(injunction, own).values()} == {"not_applicable"}


def test_unknown_grant_transfer_is_denied_unless_grandfathered(injunction: PolicySet) -> None:
    base = {"app": "douyin", "action": "transfer", "category": "grant.login", "at": AT}
    req = Request(origins=frozenset({"unknown"}), recipient="duoshan", **base)  # type: ignore[arg-type]
    for d in (decide(injunction, req), DecisionPoint(injunction).decide(req)):
        assert (d.effect, [r.rule_id for r in d.determining]) == (
            "deny",
            ["no-login-grant-transfer"],
        )
    old = Request(
        origins=frozenset({"unknown"}),
        recipient="duoshan",
        grant_first_used_by_recipient_at=datetime(2019, 2, 1, tzinfo=UTC),
        **base,  # type: ignore[arg-type]
    )
    d = DecisionPoint(injunction).decide(old)
    assert (d.effect, d.excepted) == ("permit", True)
    assert decide(injunction, old).effect == "permit"


def test_cedar_agrees_on_unknown(injunction: PolicySet) -> None:
    cedarpy = pytest.importorskip("cedarpy")
    from provguard.decide.cedar import cedar_request, expected_cedar, to_cedar

    cp = to_cedar(injunction)
    reqs = [
        Request(app, action, c, o, AT, p)
        for app in ("douyin", "duoshan")
        for action in ("use", "store", "display")
        for c in ("user.name.nickname", "user.avatar", "user.name")
        for p in (FR, "profile.display")
        for o in (*UNKNOWN_SETS, frozenset({"user_input"}), frozenset({"wechat"}))
    ]
    results = cedarpy.is_authorized_batch(
        [cedar_request(r) for r in reqs], cedarpy.PolicySet.from_str(cp.text), []
    )
    denied_unknown = 0
    for r, res in zip(reqs, results, strict=True):
        d = decide(injunction, r)
        got = {cp.reasons[int(p.removeprefix("policy"))][:2] for p in res.diagnostics.reasons}
        want = expected_cedar(d.effect, {(x.rule_id, x.instrument_id) for x in d.determining})
        assert (res.decision.value, got) == want, r
        denied_unknown += d.effect == "deny" and "unknown" in r.origins
    # douyin: (use, store, display) x 3 categories x FR; duoshan: (use, display) x 3 x 2
    assert denied_unknown == (3 * 3 + 2 * 3 * 2) * len(UNKNOWN_SETS)


def test_analysis_says_unknown_cannot_be_used(injunction: PolicySet) -> None:
    rows = can(injunction, app="douyin", category="user.avatar", origin="unknown", purpose=FR)
    in_force = [r for r in rows if not r.allowed]
    assert in_force and all(RULE1 in r.verdict for r in in_force)
    assert any(r.allowed for r in rows)  # before the order
    # the same question under the bundle read as written: nothing says anything
    text = (Path(injunction.bundles[0].path or "")).read_text(encoding="utf-8")
    written = PolicySet.of(
        [
            load_bundle_text(
                text.replace("unknown_origin: fail_closed", "unknown_origin: as_written")
            )
        ]
    )
    assert all(
        r.allowed
        for r in can(written, app="douyin", category="user.avatar", origin="unknown", purpose=FR)
    )
    # diff(as written, shipped) changes exactly classes whose origins hold unknown, to deny
    result = diff(written, injunction)
    assert result.exact and result.rows
    for row in result.rows:
        assert "unknown" in row.request["origins"], row
        assert row.verdicts is not None
        before, after = row.verdicts
        # deny, or the order's exception (grandfathered) where before nothing applied
        assert before.effect == "not_applicable", row
        assert after.effect == "deny" or (after.effect, after.excepted) == ("permit", True), row


def test_sql_plane_masks_and_refuses_unknown(injunction: PolicySet) -> None:
    """The SQL rewrite takes its verdicts from the reference interpreter: under the injunction a
    handle query for friend recommendation is refused for unknown labels too; under a masking
    bundle a row labelled 0 / unknown is masked like a WeChat row, a user_input row is not."""
    from provguard.sqlgen import QueryPolicy, QueryRefused, default_schema, rewrite

    reg = default_registry()
    qp = QueryPolicy(injunction, reg, app="douyin", purpose=FR, at=AT)
    v = qp.verdict(["user.name.nickname"])
    assert v.refused[RULE1] & reg.mask({"unknown"})
    with pytest.raises(QueryRefused, match=RULE1):
        rewrite("SELECT handle FROM profiles", default_schema(), qp)
    ctas = QueryPolicy(injunction, reg, app="douyin", purpose=FR, at=AT, action="store")
    assert ctas.actions == ("use", "store")

    masking = PolicySet.of(
        [
            load_bundle_text(
                HEAD + "rules:\n"
                "  - {id: nick, effect: deny, actions: [use], purposes: [social],\n"
                "     data: {categories: [user.name.nickname], origins: [wechat]},\n"
                "     obligations: [{kind: mask, strategy: nullify}]}\n"
            )
        ]
    )
    qp = QueryPolicy(masking, reg, app="douyin", purpose=FR, at=AT)
    rw = rewrite(
        "SELECT subject_id, handle FROM profiles ORDER BY subject_id", default_schema(), qp
    )
    labels = [reg.mask({"wechat"}), 0, reg.mask({"unknown"}), reg.mask({"user_input"})]
    profiles = pa.table(
        {
            "app_id": ["douyin"] * 4,
            "subject_id": [1, 2, 3, 4],
            "account_id": ["a1", "a2", "a3", "a4"],
            "handle": ["wx", "none", "unk", "mine"],
            "handle_origins": pa.array(labels, pa.uint64()),
            "avatar_key": ["k"] * 4,
            "avatar_origins": pa.array(labels, pa.uint64()),
            "grant_id": ["g"] * 4,
            "created_at": [datetime(2019, 1, 1, tzinfo=UTC)] * 4,
        }
    )
    con = duckdb.connect()
    con.register("profiles", profiles)
    cur = con.execute(rw.sql)
    names = [c[0] for c in cur.description]
    got = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    assert [r["handle"] for r in got] == [None, None, None, "mine"]


def test_cli_decide_unknown_is_deny(repo_root: Path) -> None:
    from provguard.cli.main import app

    runner = CliRunner()
    base = ["decide", "--app", "douyin", "--purpose", FR, "--category", "user.avatar"]
    base += ["--origin", "unknown", "--at", "2019-06-30", "--policy", str(repo_root / "policies")]
    for action in ("use", "store"):
        res = runner.invoke(app, [*base, "--action", action])
        assert res.exit_code == 1, res.output
        assert "DENY" in res.output and RULE1 in res.output


# --- the language -------------------------------------------------------------------------------


RULES = (
    "rules:\n"
    "  - {id: d, effect: deny, actions: [use], data: {origins: [wechat]}}\n"
    "  - {id: p, effect: permit, actions: [use], data: {origins: [user_input]}}\n"
    "  - {id: none, effect: deny, actions: [use], data: {origins: []}}\n"
    "  - {id: all, effect: deny, actions: [derive]}\n"
)


@pytest.mark.parametrize(
    ("setting", "deny_unknown"),
    [("", True), ("unknown_origin: fail_closed\n", True), ("unknown_origin: as_written\n", False)],
)
def test_setting_and_default(setting: str, deny_unknown: bool) -> None:
    ps = PolicySet.of([load_bundle_text(HEAD + setting + RULES, "t.yaml")])
    rules = {r.id: r for r in ps.bundles[0].rules}
    assert rules["d"].origins == (
        frozenset({"wechat", "unknown"}) if deny_unknown else frozenset({"wechat"})
    )
    assert rules["p"].origins == frozenset({"user_input"})  # permits never gain unknown
    assert rules["none"].origins == frozenset()  # an empty list keeps matching nothing
    assert rules["all"].origins is None  # `any` already matches unknown
    for origins, want in (
        ({"unknown"}, "deny" if deny_unknown else "not_applicable"),
        ({"unknown", "user_input"}, "deny" if deny_unknown else "permit"),
        ({"user_input"}, "permit"),
        ({"wechat", "user_input"}, "deny"),
    ):
        req = Request("x", "use", "user.avatar", frozenset(origins), AT, "account")
        got = _paths(ps, req)
        assert {e for e, _ in got.values()} == {want}, (origins, got)


def test_a_rule_naming_unknown_reads_origins_as_written() -> None:
    text = HEAD + (
        "rules:\n"
        "  - {id: d, effect: deny, actions: [use], data: {origins: [wechat]}}\n"
        "  - {id: u, effect: deny, actions: [use], purposes: [social],\n"
        "     data: {origins: [unknown]}, obligations: [{kind: mask, strategy: placeholder}]}\n"
    )
    bundle = load_bundle_text(text, "t.yaml")
    assert bundle.unknown_origin == "as_written"
    assert {r.id: r.origins for r in bundle.rules}["d"] == frozenset({"wechat"})
    forced = load_bundle_text(text.replace("rules:", "unknown_origin: fail_closed\nrules:"))
    assert {r.id: r.origins for r in forced.rules}["d"] == frozenset({"wechat", "unknown"})


def test_bad_setting_is_located() -> None:
    with pytest.raises((PolicyError, PolicyErrors)) as info:
        load_bundle_text(HEAD + "unknown_origin: closed\n" + RULES, "bad.yaml")
    text = str(info.value)
    assert "bad.yaml:2:" in text and "unknown_origin" in text


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fail_closed_is_monotone(data: st.DataObject) -> None:
    """Adding ``unknown`` to a request's label never turns a deny into anything else, and a
    deny under ``as_written`` is a deny under ``fail_closed`` (the default only adds denies)."""
    req = data.draw(requests(rich=False))
    closed = PolicySet.of([load_bundle_text(HEAD + RULES, "t.yaml")])
    written = PolicySet.of(
        [load_bundle_text(HEAD + "unknown_origin: as_written\n" + RULES, "t.yaml")]
    )
    plus = dataclasses.replace(req, origins=req.origins | {"unknown"})
    for ps in (closed, written):
        if decide(ps, req).effect == "deny":
            assert decide(ps, plus).effect == "deny"
    if decide(written, req).effect == "deny":
        assert decide(closed, req).effect == "deny"
    in_force = req.at >= datetime(2019, 1, 1, tzinfo=UTC)  # HEAD's effective_from
    if "unknown" in req.origins and in_force and decide(closed, req).effect != "deny":
        # then no fail-closed deny rule matched on any other axis either (before the
        # instrument took effect no rule applies at all)
        assert not any(
            r.effect == "deny" and r.origins and "unknown" in r.origins and req.action in r.actions
            for _, r in closed.rules()
        )


# --- item 3: `store` under the purpose ----------------------------------------------------------


@pytest.mark.parametrize("app", ["douyin", "duoshan", "toutiao"])
@pytest.mark.parametrize("purpose", [FR, "social", "profile.display", "social.messaging"])
def test_store_pdp_and_sql_agree(injunction: PolicySet, app: str, purpose: str) -> None:
    """The SQL plane checks CREATE TABLE AS as ``use`` and ``store``; the PDP asked about
    ``store`` alone must deny whatever the injunction forbids storing, and the SQL verdict is
    exactly "denied under use or under store" for every cell (category x origin label)."""
    from provguard.sqlgen import QueryPolicy, QueryRefused, default_schema, rewrite

    reg = default_registry()
    qp = QueryPolicy(injunction, reg, app=app, purpose=purpose, at=AT).with_actions("store")
    assert qp.actions == ("use", "store")
    point = DecisionPoint(injunction)
    for category in ("user.name.nickname", "user.avatar", "user.unique_id"):
        for origins in ({"wechat"}, {"qq"}, {"unknown"}, {"user_input"}, {"douyin", "qq"}):
            mask = reg.mask(origins)
            effects = {
                a: point.decide(Request(app, a, category, frozenset(origins), AT, purpose)).effect
                for a in ("use", "store")
            }
            strategy, _ = qp.row_strategy([category], mask)
            assert (strategy == "refuse") == ("deny" in effects.values()), (
                category,
                origins,
                effects,
            )
            # the PDP alone on `store` follows the order: for friend recommendation (and the
            # broader `social`) douyin may not keep platform handles / pictures
            store_denied = effects["store"] == "deny"
            assert store_denied == (
                app == "douyin"
                and purpose in (FR, "social")
                and category != "user.unique_id"
                and bool(origins & {"wechat", "qq", "unknown"})
            ), (category, origins)
    created = "CREATE TABLE t AS SELECT handle FROM profiles"
    if app == "douyin" and purpose in (FR, "social"):
        with pytest.raises(QueryRefused, match=RULE1):
            rewrite(created, default_schema(), qp)

"""Taxonomy extensions declared in policy bundles (issue 3): loading, errors, and decisions by the
reference interpreter, the compiled DecisionPoint and decide_batch."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from provguard.cli.policy import policy_app
from provguard.decide import CompiledPolicy, DecisionPoint, Request, decide, decide_batch
from provguard.decide.batch import EFFECT_CODES
from provguard.errors import PolicyError, PolicyErrors, RequestError, TaxonomyError
from provguard.policy import PolicySet, load_bundle_text, load_policy_dir
from provguard.policy.live import LivePolicy
from provguard.provenance import default_registry
from provguard.taxonomy import (
    BUILTIN_TAXONOMIES,
    DATA_CATEGORIES,
    PURPOSES,
    Declaration,
    resolve_extensions,
)

HEAD = "instrument: {id: ext, kind: internal_policy, issuer: tests, effective_from: 2019-01-01}\n"
GOOD = (
    HEAD
    + """taxonomy:
  categories:
    - key: user.name.nickname.platform_copy
      description: a nickname copied from the provider's profile
    - key: verbatim
      parent: user.name.nickname.platform_copy
  purposes:
    - key: social.friend_recommendation.contacts_upload
rules:
  - id: deny-names-in-contacts-upload
    effect: deny
    actions: [use, derive]
    purposes: [social.friend_recommendation.contacts_upload]
    data: {categories: [user.name], origins: [wechat]}
  - id: permit-platform-copy-display
    effect: permit
    actions: [display]
    purposes: [profile.display]
    data: {categories: [user.name.nickname.platform_copy]}
  - id: deny-verbatim-qq
    effect: deny
    actions: [display]
    purposes: [profile]
    data: {categories: [user.name.nickname.platform_copy.verbatim], origins: [qq]}
"""
)
COPY = "user.name.nickname.platform_copy"
VERBATIM = COPY + ".verbatim"
UPLOAD = "social.friend_recommendation.contacts_upload"
AT = datetime(2020, 6, 1, tzinfo=UTC)


def _errors(text: str, path: str = "t.yaml") -> list[PolicyError]:
    with pytest.raises(PolicyError) as info:
        load_bundle_text(text, path)
    exc = info.value
    return list(exc.errors) if isinstance(exc, PolicyErrors) else [exc]


@pytest.fixture(scope="module")
def policy() -> PolicySet:
    return PolicySet.of([load_bundle_text(GOOD, "good.yaml")])


# --- loading -------------------------------------------------------------------------------------


def test_extension_is_per_policy_set_and_builtin_is_untouched(policy: PolicySet) -> None:
    (bundle,) = policy.bundles
    # parents first (by depth)
    assert [(k.axis, k.key) for k in bundle.taxonomy_extensions] == [
        ("purposes", UPLOAD),
        ("categories", COPY),
        ("categories", VERBATIM),
    ]
    assert bundle.taxonomy_extensions[1].description.startswith("a nickname copied")
    tax = policy.taxonomy
    assert tax.categories.keys == DATA_CATEGORIES.keys | {COPY, VERBATIM}
    assert tax.purposes.keys == PURPOSES.keys | {UPLOAD}
    assert tax.categories.descendants("user.name") >= {COPY, VERBATIM}
    assert COPY not in DATA_CATEGORIES and UPLOAD not in PURPOSES
    assert not tax.is_builtin
    # a set without extensions has exactly the built-in vocabularies
    plain = load_policy_dir(Path(__file__).resolve().parents[2] / "policies")
    assert plain.taxonomy is BUILTIN_TAXONOMIES
    # events do not lose the taxonomy
    assert policy.with_event("ext", "x", AT.date()).taxonomy == tax


def test_request_is_checked_against_the_given_taxonomy(policy: PolicySet) -> None:
    with pytest.raises(
        RequestError, match=r"unknown data category 'user\.name\.nickname\.platform_copy'$"
    ):
        Request("douyin", "display", COPY, frozenset({"wechat"}), AT, "profile.display")
    with pytest.raises(RequestError, match="unknown purpose"):
        Request("douyin", "use", "user.avatar", frozenset({"wechat"}), AT, UPLOAD)
    r = Request(
        "douyin", "display", COPY, frozenset({"wechat"}), AT, "profile.display",
        taxonomy=policy.taxonomy,
    )  # fmt: skip
    with pytest.raises(RequestError, match=r"known keys here: .*platform_copy\.verbatim"):
        Request(
            "douyin", "display", COPY + ".typo", frozenset({"wechat"}), AT, "profile.display",
            taxonomy=policy.taxonomy,
        )  # fmt: skip
    # the taxonomy is not part of the request's identity
    same = Request("douyin", "display", "user.avatar", frozenset({"wechat"}), AT, "profile.display")
    other = Request(
        "douyin", "display", "user.avatar", frozenset({"wechat"}), AT, "profile.display",
        taxonomy=policy.taxonomy,
    )  # fmt: skip
    assert same == other and hash(same) == hash(other)
    assert "taxonomy" not in r.as_dict()


# --- decisions: reference, compiled, batch ------------------------------------------------------

ORIGIN_SETS = [frozenset({"wechat"}), frozenset({"qq"}), frozenset({"user_input", "qq"})]
CATEGORIES = ["user", "user.name", "user.name.nickname", COPY, VERBATIM, "user.avatar"]
PURPOSE_KEYS = ["social", "social.friend_recommendation", UPLOAD, "profile", "profile.display"]


def _all_requests(policy: PolicySet) -> list[Request]:
    return [
        Request("douyin", a, c, o, AT, p, taxonomy=policy.taxonomy)
        for a, c, p, o in itertools.product(
            ["use", "derive", "display"], CATEGORIES, PURPOSE_KEYS, ORIGIN_SETS
        )
    ]


def _expected(req: Request) -> str:
    """The decision written out by hand from the three rules of GOOD.

    A deny's purposes and categories match the keys below them *and above them* (Byun & Li,
    VLDB Journal 2008; docs/policy-language.md, "Hierarchies"); a permit's only the keys below.
    """
    names = ("user", "user.name", "user.name.nickname", COPY, VERBATIM)  # all but user.avatar
    # deny-names-in-contacts-upload: UPLOAD and its ancestors; user.name, below and above it
    if (
        req.action in ("use", "derive")
        and req.purpose in ("social", "social.friend_recommendation", UPLOAD)
        and req.category in names
        and "wechat" in req.origins
    ):
        return "deny"
    if req.action == "display" and req.purpose in ("profile", "profile.display"):
        # deny-verbatim-qq: profile and below; VERBATIM and its ancestors
        if req.category in names and "qq" in req.origins:
            return "deny"
        # permit-platform-copy-display: profile.display and below; COPY and below
        if req.purpose == "profile.display" and req.category in (COPY, VERBATIM):
            return "permit"
    return "not_applicable"


def test_reference_interpreter_honours_the_hierarchy(policy: PolicySet) -> None:
    reqs = _all_requests(policy)
    got = [decide(policy, r).effect for r in reqs]
    assert got == [_expected(r) for r in reqs]
    # 2 actions x 3 purposes x 5 categories x {wechat} + display x 2 x 5 x {qq, user_input+qq}
    assert got.count("deny") == 30 + 20 and got.count("permit") == 2
    d = decide(
        policy,
        Request("douyin", "display", VERBATIM, frozenset({"qq"}), AT, "profile.display",
                taxonomy=policy.taxonomy),
    )  # fmt: skip
    assert d.effect == "deny"
    assert [(r.rule_id, r.outcome) for r in d.reasons] == [
        ("deny-verbatim-qq", "applied"),
        ("permit-platform-copy-display", "applied"),
    ]


def test_compiled_decision_point_agrees_with_reference(policy: PolicySet) -> None:
    point = DecisionPoint(policy)
    for r in _all_requests(policy):
        want, got = decide(policy, r), point.decide(r)
        assert (got.effect, got.reasons, got.obligations, got.shadow) == (
            want.effect,
            want.reasons,
            want.obligations,
            want.shadow,
        ), r


def test_decide_batch_agrees_with_reference(policy: PolicySet) -> None:
    reqs = _all_requests(policy)
    reg = default_registry()
    out = decide_batch(
        CompiledPolicy(policy),
        app="douyin",
        action=np.array([r.action for r in reqs], dtype=object),
        category=np.array([r.category for r in reqs], dtype=object),
        purpose=np.array([r.purpose for r in reqs], dtype=object),
        origins=np.array([reg.mask(r.origins) for r in reqs], dtype=np.uint64),
        at=AT,
        registry=reg,
    )
    want = [EFFECT_CODES[decide(policy, r).effect] for r in reqs]
    assert out.effect.tolist() == want
    assert out.decision(3).reasons == decide(policy, reqs[3]).reasons


def test_decide_batch_rejects_keys_the_set_does_not_declare(policy: PolicySet) -> None:
    with pytest.raises(RequestError, match=r"unknown data category 'user\.name\.nickname\.nope'"):
        decide_batch(
            CompiledPolicy(policy),
            app="douyin",
            action="use",
            category=["user.name.nickname.nope"],
            purpose=UPLOAD,
            origins=np.array([4], dtype=np.uint64),
            at=AT,
        )


# --- errors -------------------------------------------------------------------------------------

RULE = "rules:\n  - {id: r, effect: deny, actions: [use], purposes: [social]}\n"


def test_unknown_parent_is_located_with_hint() -> None:
    text = (
        HEAD
        + "taxonomy:\n"
        + "  categories:\n"
        + "    - key: user.name.nickame.copy\n"  # line 4, typo in the parent
        + "    - {key: copy2, parent: user.avtar}\n"  # line 5
        + RULE
    )
    errs = _errors(text)
    assert [str(e.location) for e in errs] == ["t.yaml:4:12", "t.yaml:5:28"]
    assert errs[0].key == "taxonomy.categories[0].key"
    assert "unknown parent data category 'user.name.nickame'" in str(errs[0])
    assert "did you mean 'user.name.nickname'?" in str(errs[0])
    assert errs[1].key == "taxonomy.categories[1].parent"
    assert "did you mean 'user.avatar'?" in str(errs[1])
    assert all(e.code == "PG110" for e in errs)


def test_duplicate_of_builtin_and_duplicate_in_file() -> None:
    text = (
        HEAD
        + "taxonomy:\n"
        + "  categories:\n"
        + "    - key: user.avatar\n"  # line 4
        + "    - {key: nickname, parent: user.name}\n"  # line 5: = user.name.nickname
        + "    - key: user.avatar.thumb\n"  # line 6
        + "    - key: user.avatar.thumb\n"  # line 7
        + RULE
    )
    errs = _errors(text)
    msgs = {str(e.location): str(e) for e in errs}
    assert set(msgs) == {"t.yaml:4:12", "t.yaml:5:13", "t.yaml:7:12"}
    assert (
        "'user.avatar' is a built-in data category; hint: use 'user.avatar'" in msgs["t.yaml:4:12"]
    )
    assert "'user.name.nickname' is a built-in" in msgs["t.yaml:5:13"]
    assert "declared twice (first at t.yaml:6:12)" in msgs["t.yaml:7:12"]


def test_cycle_is_reported_for_every_member() -> None:
    text = (
        HEAD
        + "taxonomy:\n"
        + "  purposes:\n"
        + "    - {key: alpha, parent: beta}\n"  # line 4
        + "    - {key: beta, parent: gamma}\n"  # line 5
        + "    - {key: gamma, parent: alpha}\n"  # line 6
        + "    - {key: delta, parent: alpha}\n"  # line 7: hangs below the cycle
        + "    - {key: self, parent: self}\n"  # line 8
        + RULE
    )
    errs = _errors(text)
    by_line = {e.location.line: str(e) for e in errs if e.location is not None}
    assert sorted(by_line) == [4, 5, 6, 7, 8]
    assert "cycle in taxonomy extension parents: alpha -> beta -> gamma -> alpha" in by_line[4]
    assert "beta -> gamma -> alpha -> beta" in by_line[5]
    assert "parent 'alpha' is declared but cannot be resolved (it is on a cycle)" in by_line[7]
    assert "self -> self" in by_line[8]
    assert all(e.key is not None and e.key.endswith(".parent") for e in errs)


def test_other_shape_errors_and_wrong_axis() -> None:
    text = (
        HEAD
        + "taxonomy:\n"
        + "  categories:\n"
        + "    - {key: user.name.x, parent: user.name}\n"  # line 4: dotted key with parent
        + "    - key: User.Name\n"  # line 5: malformed
        + "    - key: social.friend_recommendation.x\n"  # line 6: a purpose parent
        + "    - {key: brand_new, parent: nowhere}\n"  # line 7
        + RULE
    )
    errs = _errors(text)
    text_of = {e.location.line: str(e) for e in errs if e.location is not None}
    assert sorted(text_of) == [4, 5, 6, 7]
    assert "with 'parent', 'key' is one segment" in text_of[4] and "key: x" in text_of[4]
    assert "malformed data category key 'User.Name'" in text_of[5]
    assert "is a purpose, declare this under taxonomy.purposes" in text_of[6]
    assert "unknown parent data category 'nowhere'" in text_of[7]
    # actions are a closed vocabulary: a schema error, located, with a hint
    (err,) = _errors(HEAD + "taxonomy:\n  actions: [{key: use.internal}]\n" + RULE)
    assert str(err.location) == "t.yaml:3:3" and err.key == "taxonomy.actions"
    assert "unknown key 'actions'; hint: taxonomy extensions take 'categories'" in str(err)


def test_rule_naming_an_undeclared_key_gets_a_hint_and_all_errors_come_at_once() -> None:
    text = (
        HEAD
        + "taxonomy:\n"
        + "  categories:\n"
        + "    - key: user.avatar.copy\n"
        + "    - key: user.avtar.copy\n"  # line 5: unknown parent
        + "rules:\n"
        + "  - id: r\n"
        + "    effect: deny\n"
        + "    actions: [use]\n"
        + "    purposes: [social]\n"
        + "    data: {categories: [user.avatar.copy, user.avatar.other]}\n"  # line 11
    )
    errs = _errors(text)
    assert [(str(e.location), e.key) for e in errs] == [
        ("t.yaml:5:12", "taxonomy.categories[1].key"),
        ("t.yaml:11:43", "rules[0].data.categories[1]"),
    ]
    assert "did you mean 'user.avatar.copy'? (or declare it under 'taxonomy.categories'" in str(
        errs[1]
    )
    assert errs[1].rule == "r"


def test_extensions_resolve_across_the_bundles_of_a_folder(tmp_path: Path) -> None:
    base = tmp_path / "a.yaml"
    base.write_text(
        HEAD.replace("id: ext", "id: a")
        + "taxonomy: {categories: [{key: user.name.nickname.platform_copy}]}\n"
        + RULE
    )
    child = (
        HEAD.replace("id: ext", "id: b")
        + "taxonomy:\n  categories:\n"
        + "    - {key: verbatim, parent: user.name.nickname.platform_copy}\n"
        + "rules:\n  - id: r\n    effect: deny\n    actions: [display]\n"
        + "    purposes: [profile]\n"
        + "    data: {categories: [user.name.nickname.platform_copy.verbatim]}\n"
    )
    (tmp_path / "b.yaml").write_text(child)
    # the same key declared again in another file of the set is accepted once
    (tmp_path / "c.yaml").write_text(
        HEAD.replace("id: ext", "id: c")
        + "taxonomy: {categories: [{key: user.name.nickname.platform_copy}]}\n"
        + RULE
    )
    ps = load_policy_dir(tmp_path)
    assert {COPY, VERBATIM} <= ps.taxonomy.categories.keys
    req = Request(
        "x", "display", VERBATIM, frozenset({"qq"}), AT, "profile.display", taxonomy=ps.taxonomy
    )
    assert decide(ps, req).effect == "deny"
    # alone, b's parent is unknown
    errs = _errors(child, "b.yaml")
    assert [str(e.location) for e in errs] == ["b.yaml:4:31", "b.yaml:10:25"]
    # combining bundles by hand without the one that declares the parent
    with pytest.raises(TaxonomyError, match="no known parent"):
        _ = PolicySet.of([b for b in ps.bundles if b.instrument.id == "b"]).taxonomy


def test_a_bad_extension_never_replaces_the_policy_in_force(tmp_path: Path) -> None:
    good = load_policy_dir(Path(__file__).resolve().parents[2] / "policies")
    live = LivePolicy(good)
    (tmp_path / "bad.yaml").write_text(
        HEAD + "taxonomy: {purposes: [{key: a, parent: b}, {key: b, parent: a}]}\n" + RULE
    )
    errs = live.reload(tmp_path)
    assert len(errs) == 2 and all("cycle" in str(e) for e in errs)
    assert live.current is good


def test_policy_check_cli_reports_bad_extensions(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        HEAD
        + "taxonomy:\n  categories:\n    - key: user.avatar\n    - {key: x, parent: y}\n"
        + "rules:\n  - {id: r, effect: deny, actions: [use], purposes: [social],\n"
        + "     data: {categories: [user.avatar.x]}}\n"
    )
    app = typer.Typer()
    app.add_typer(policy_app, name="policy")
    res = CliRunner().invoke(app, ["policy", "check", "--policy", str(bad)], env={"COLUMNS": "250"})
    out = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert f"{bad}:4:12: 'user.avatar' is a built-in data category" in out
    assert "(key 'taxonomy.categories[0].key')" in out
    assert f"{bad}:5:24: unknown parent data category 'y' of 'x'" in out
    assert f"{bad}:8:26: unknown data category 'user.avatar.x'" in out
    assert "PG110" in out
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    res = CliRunner().invoke(
        app, ["policy", "check", "--policy", str(good)], env={"COLUMNS": "250"}
    )
    assert res.exit_code == 0, res.output


# --- properties ---------------------------------------------------------------------------------

SEGMENTS = st.sampled_from(["a", "b", "c", "d"])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(sorted(DATA_CATEGORIES.keys)), st.lists(SEGMENTS, max_size=3)),
        max_size=6,
    ),
    st.randoms(use_true_random=False),
)
def test_resolution_of_random_trees(
    chains: list[tuple[str, list[str]]], rnd: random.Random
) -> None:
    """Random extension chains, declared in shuffled order and half in ``parent:`` form, resolve
    to exactly the expected keys; a missing link is reported, never silently accepted."""
    wanted: dict[str, str] = {}
    for root, segs in chains:
        key = root
        for s in segs:
            parent, key = key, f"{key}.{s}"
            if key not in DATA_CATEGORIES:
                wanted.setdefault(key, parent)
    decls: list[Declaration] = []
    for key, parent in wanted.items():
        if rnd.random() < 0.5:
            decls.append(_decl(key, None))
        else:
            decls.append(_decl(key.rpartition(".")[2], parent))
    rnd.shuffle(decls)
    tax, resolved, errors = resolve_extensions(decls)
    assert errors == []
    assert tax.categories.keys == DATA_CATEGORIES.keys | set(wanted)
    assert {k.key for k in resolved.values()} == set(wanted)
    if decls:
        # drop one declaration: every key below it (and only those) is now an error
        gone = rnd.randrange(len(decls))
        rest = decls[:gone] + decls[gone + 1 :]
        missing = _full(decls[gone])
        tax2, _, errors2 = resolve_extensions(rest)
        below = {k for k in wanted if k.startswith(missing + ".")}
        assert tax2.categories.keys == DATA_CATEGORIES.keys | (set(wanted) - below - {missing})
        assert bool(errors2) == bool(below)


def _decl(key: str, parent: str | None) -> Declaration:
    return Declaration("categories", key, parent, "", "p.yaml", "taxonomy.categories[0]")


def _full(d: Declaration) -> str:
    if d.parent is None:
        return d.key
    return f"{d.parent}.{d.key}"


def test_policy_diff_enumerates_extension_keys(policy: PolicySet) -> None:
    from provguard.decide.analysis import AXES, diff

    # the same bundle without its last rule (the deny on the extension's extension)
    before = PolicySet.of([load_bundle_text(GOOD.split("  - id: deny-verbatim-qq")[0], "a.yaml")])
    result = diff(before, policy)
    assert result.rows
    cat = AXES.index("category")
    cats = {c for row in result.rows for c in result.axis_members("category", row.index[cat])}
    # the deny on VERBATIM also reaches its ancestors (not user.avatar, not user.name.legal)
    assert cats == {"user", "user.name", "user.name.nickname", COPY, VERBATIM}
    assert all(row.verdicts is not None and row.verdicts[1].effect == "deny" for row in result.rows)
    # against the built-in-only injunction, the extension keys are their own classes
    plain = load_policy_dir(Path(__file__).resolve().parents[2] / "policies")
    other = diff(plain, policy)
    changed = {c for row in other.rows for c in other.axis_members("category", row.index[cat])}
    assert {COPY, VERBATIM} <= changed


def test_decide_cli_accepts_the_policy_sets_extension_keys(tmp_path: Path) -> None:
    from provguard.cli.policy import decide_cmd

    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    app = typer.Typer()
    app.command("decide")(decide_cmd)
    app.add_typer(policy_app, name="policy")
    base = ["--policy", str(good), "--app", "douyin", "--origin", "wechat", "--any-app"]
    args = ["--action", "use", "--category", VERBATIM, "--purpose", UPLOAD, "--at", "2020-06-01"]
    res = CliRunner().invoke(app, ["decide", *base, *args], env={"COLUMNS": "250"})
    assert res.exit_code == 1, res.output  # deny
    assert "deny-names-in-contacts-upload" in res.output
    typo = ["--action", "use", "--category", COPY + ".x", "--purpose", UPLOAD]
    res = CliRunner().invoke(app, ["decide", *base, *typo], env={"COLUMNS": "250"})
    assert res.exit_code == 2 and "unknown data category" in res.output


def test_cedar_oracle_agrees_on_extension_keys(policy: PolicySet) -> None:
    """Cedar (cedarpy) gets the request key and its ancestors, so extensions need no special
    translation; it must agree with the reference on every request of the grid."""
    cedarpy = pytest.importorskip("cedarpy")
    from provguard.decide.cedar import cedar_request, expected_cedar, to_cedar

    cp = to_cedar(policy)
    reqs = _all_requests(policy)
    results = cedarpy.is_authorized_batch(
        [cedar_request(r) for r in reqs], cedarpy.PolicySet.from_str(cp.text), []
    )
    denies = 0
    for r, res in zip(reqs, results, strict=True):
        d = decide(policy, r)
        got = {cp.reasons[int(p.removeprefix("policy"))][:2] for p in res.diagnostics.reasons}
        want = expected_cedar(d.effect, {(x.rule_id, x.instrument_id) for x in d.determining})
        assert not res.diagnostics.errors
        assert (res.decision.value, got) == want, r
        denies += d.effect == "deny"
    assert denies == 50  # as test_reference_interpreter_honours_the_hierarchy counts them


NAMES = st.sampled_from(["a", "b", "user", "user.name", "user.name.a", "social", "a.b", "B", ""])


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(NAMES, st.one_of(st.none(), NAMES)), max_size=6))
def test_random_extension_sections_load_or_fail_cleanly(
    entries: list[tuple[str, str | None]],
) -> None:
    """Whatever the entries (cycles, unknown parents, duplicates, empty keys), loading either
    succeeds with exactly the declared keys, or raises located PG110 errors; never anything else."""
    lines = ["taxonomy:", "  categories:"]
    for key, parent in entries:
        lines.append(f"    - key: '{key}'" + (f"\n      parent: '{parent}'" if parent else ""))
    text = HEAD + ("\n".join(lines) + "\n" if entries else "") + RULE
    try:
        bundle = load_bundle_text(text, "r.yaml")
    except PolicyError as exc:
        errs = exc.errors if isinstance(exc, PolicyErrors) else [exc]
        assert all(e.code == "PG110" and e.location is not None for e in errs)
        return
    got = {k.key for k in bundle.taxonomy_extensions}
    assert len(got) == len(bundle.taxonomy_extensions)
    # an empty parent is not written (no ``parent:`` key): such an entry is a dotted entry
    assert {k for k, p in entries if not p} <= got  # dotted entries keep their key
    assert {k for k, p in entries if p} <= {g.rpartition(".")[2] for g in got}
    assert not got & DATA_CATEGORIES.keys
    assert all(
        k.key.rpartition(".")[0] in DATA_CATEGORIES.keys | got for k in bundle.taxonomy_extensions
    )


def test_ambiguous_short_parent_name() -> None:
    text = (
        HEAD
        + "taxonomy:\n"
        + "  categories:\n"
        + "    - {key: copy, parent: user.avatar}\n"  # line 4
        + "    - {key: copy, parent: user.name}\n"  # line 5
        + "    - {key: small, parent: copy}\n"  # line 6: which copy?
        + "    - {key: big, parent: user.avatar.copy}\n"  # line 7: a full key is fine
        + RULE
    )
    errs = _errors(text)
    assert [(str(e.location), e.key) for e in errs] == [
        ("t.yaml:6:28", "taxonomy.categories[2].parent")
    ]
    assert "parent 'copy' is ambiguous" in str(errs[0]) and "t.yaml:4:13, t.yaml:5:13" in str(
        errs[0]
    )
    ps = load_bundle_text(text.replace("parent: copy}", "parent: user.name.copy}"), "t.yaml")
    assert {k.key for k in ps.taxonomy_extensions} == {
        "user.avatar.copy",
        "user.name.copy",
        "user.name.copy.small",
        "user.avatar.copy.big",
    }

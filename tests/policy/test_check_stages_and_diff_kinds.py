"""`policy check` reports every stage's errors at once; `diff` tells outcome changes from
"same outcome, different rule"; several folders load as one set."""

from __future__ import annotations

from pathlib import Path

import pytest

from provguard.decide.analysis import Verdict, diff, lint
from provguard.errors import PolicyError, PolicyErrors
from provguard.policy import PolicySet, load_bundle_text, load_policy_dir, load_policy_dirs

ALL_STAGES = """\
instrument:
  id: x
  kind: court_order
  issuer: court
  issued: 2019-03-21
  effective_from: 2019-02-30
rules:
  - id: r1
    effect: dney
    actions: [use]
    purposes: [social.friend_recomendation]
    data: {categories: [user.avatr], origins: [wechta]}
  - id: r1
    effect: deny
    actions: [use]
    purposes: [social.friend_recommendation]
    data: {categories: [user.avatr], origins: [wechat]}
    unless: {grant_granted_before: 2020-13-01}
    when: [{field: subject.joined, equals: 2019-02-29}]
"""


def _errors(text: str, path: str = "b.yaml") -> list[str]:
    with pytest.raises(PolicyError) as err:
        load_bundle_text(text, path)
    exc = err.value
    return [str(e) for e in exc.errors] if isinstance(exc, PolicyErrors) else [str(exc)]


def test_every_stage_is_reported_at_once_in_file_order() -> None:
    msgs = _errors(ALL_STAGES)
    where = [m.split(": ", 1)[0].removeprefix("[PG110] ") for m in msgs]
    assert where == [
        "b.yaml:6:19",  # impossible date (the YAML stage)
        "b.yaml:9:13",  # effect (the schema stage)
        "b.yaml:11:16",  # purpose (the taxonomy stage)
        "b.yaml:12:25",  # category
        "b.yaml:12:48",  # origin
        "b.yaml:13:9",  # duplicate rule id
        "b.yaml:17:25",  # category of the second rule
        "b.yaml:18:36",  # impossible date in an exception: the real reason
        "b.yaml:19:44",  # impossible date as a condition constant
    ], msgs
    text = "\n".join(msgs)
    assert "invalid date '2019-02-30': day is out of range for month" in text
    assert "invalid date '2020-13-01': month must be in 1..12" in text
    assert "invalid date '2019-02-29'" in text
    assert "did you mean 'social.friend_recommendation'?" in text
    assert "did you mean 'user.avatar'?" in text
    assert "unknown origin 'wechta'" in text
    assert "duplicate rule id" in text


def test_a_schema_valid_file_keeps_its_own_checks(tmp_path: Path) -> None:
    # schema fine: extension and taxonomy errors of the normal path, sorted with a bad date in
    # a string-typed position (equals accepts text, the date is still refused)
    (tmp_path / "a.yaml").write_text(
        "instrument: {id: a, kind: statute, issuer: x, effective_from: 2019-01-01}\n"
        "rules:\n"
        "  - {id: r, effect: deny, actions: [use], data: {categories: [user.avatr]},\n"
        "     when: [{field: subject.d, equals: 2019-02-30}]}\n",
        encoding="utf-8",
    )
    (tmp_path / "b.yaml").write_text(
        "instrument: {id: b, kind: statute, issuer: x, effective_from: 2019-13-01}\n"
        "rules: [{id: r, effect: permit, actions: [yuse]}]\n",
        encoding="utf-8",
    )
    with pytest.raises(PolicyErrors) as err:
        load_policy_dir(tmp_path)
    where = [str(e).split(": ", 1)[0].removeprefix("[PG110] ") for e in err.value.errors]
    a, b = str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")
    assert where == [f"{a}:3:63", f"{a}:4:40", f"{b}:1:63", f"{b}:2:43"], err.value.errors


def test_own_extension_keys_are_not_flagged_when_the_schema_fails() -> None:
    text = """\
instrument: {id: t, kind: statute, issuer: x, effective_from: 2019-01-01}
taxonomy:
  categories: [{key: user.name.nickname.platform_copy}]
rules:
  - {id: r, effect: dney, actions: [use], data: {categories: [user.name.nickname.platform_copy]}}
"""
    msgs = _errors(text)
    assert len(msgs) == 1 and "'deny' or 'permit'" in msgs[0], msgs


def test_effective_from_before_issued_warns(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(
        "instrument:\n  id: x\n  kind: statute\n  issuer: x\n  issued: 2019-03-21\n"
        "  effective_from: 2019-03-20\nrules: [{id: r, effect: deny, actions: [use]}]\n",
        encoding="utf-8",
    )
    found = [f for f in lint(load_policy_dir(path)) if f.kind == "effective_before_issued"]
    assert len(found) == 1
    assert found[0].location == f"{path}:6:19"
    assert "2019-03-20 is before issued 2019-03-21" in found[0].message
    same_day = path.read_text(encoding="utf-8").replace("2019-03-21", "2019-03-20")
    path.write_text(same_day, encoding="utf-8")
    assert not [f for f in lint(load_policy_dir(path)) if f.kind == "effective_before_issued"]


def test_the_shipped_bundles_have_no_date_warning(repo_root: Path) -> None:
    for folder in ("policies", "policies/extra"):
        kinds = {f.kind for f in lint(load_policy_dir(repo_root / folder))}
        assert "effective_before_issued" not in kinds


BASE = """\
instrument: {{id: {iid}, kind: statute, issuer: x, effective_from: 2019-01-01}}
rules:
  - id: {rid}
    effect: deny
    actions: [use]
    purposes: [profile.display]
    data: {{categories: [user.avatar], origins: [wechat]}}
{extra}"""


def _set(rid: str, extra: str = "", iid: str = "i") -> PolicySet:
    return PolicySet.of([load_bundle_text(BASE.format(rid=rid, extra=extra, iid=iid))])


def test_renamed_rule_is_same_outcome_different_rule() -> None:
    result = diff(_set("old-name"), _set("new-name"))
    assert result.changed > 0
    assert result.changed_rule_only == result.changed
    assert result.changed_outcome == 0
    groups = result.compact()
    assert groups and all(g.rule_only for g in groups)
    doc = result.as_json()
    assert doc["changed_rule_only"] == result.changed
    assert {r["kind"] for r in doc["rows"]} == {"rule_only"}  # type: ignore[union-attr,index]


def test_a_changed_obligation_is_an_outcome_change() -> None:
    mask = "    obligations: [{kind: mask, strategy: hash}]\n"
    a, b = _set("r"), _set("r", mask)
    result = diff(a, b)
    assert result.changed > 0 and result.changed_outcome == result.changed
    g = result.compact()[0]
    assert not g.rule_only
    assert g.after.obligations == (("mask", "hash", None, None),)
    assert g.after.as_dict()["obligations"] == [{"kind": "mask", "strategy": "hash"}]
    # the same obligation from a renamed rule: same outcome, different rule
    renamed = diff(b, _set("r2", mask))
    assert renamed.changed_rule_only == renamed.changed > 0


def test_outcome_and_rule_only_rows_come_apart_and_sum_up(repo_root: Path) -> None:
    a = load_policy_dir(repo_root / "policies")
    b = load_policy_dirs([repo_root / "policies", repo_root / "policies" / "extra"])
    result = diff(a, b)
    groups = result.compact()
    kinds = [g.rule_only for g in groups]
    assert kinds == sorted(kinds)  # outcome changes first
    assert result.changed_outcome == sum(g.count for g in groups if not g.rule_only)
    assert result.changed_rule_only == sum(g.count for g in groups if g.rule_only)
    assert result.changed_rule_only > 0 and result.changed_outcome > 0
    for g in groups:
        assert g.rule_only == (
            Verdict(g.before.effect, g.before.excepted, (), g.before.obligations)
            == Verdict(g.after.effect, g.after.excepted, (), g.after.obligations)
        )


def test_load_policy_dirs_is_the_union(repo_root: Path) -> None:
    both = load_policy_dirs([repo_root / "policies", repo_root / "policies" / "extra"])
    assert len(both.bundles) == 4
    # a file reached twice is loaded once
    again = load_policy_dirs(
        [repo_root / "policies", repo_root / "policies" / "cn-tj-binhai-2019-douyin-duoshan.yaml"]
    )
    assert len(again.bundles) == 1
    with pytest.raises(PolicyError, match="no such policy"):
        load_policy_dirs([repo_root / "nope"])

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from provguard.errors import PolicyError, PolicyErrors
from provguard.policy import EventEnd, load_bundle, load_bundle_text, load_policy_dir


def test_injunction_bundle_loads(injunction_path: Path) -> None:
    b = load_bundle(injunction_path)
    assert b.instrument.kind == "court_order.preliminary_injunction"
    assert b.instrument.effective_from == date(2019, 3, 20)
    assert b.instrument.effective_until == EventEnd(event="final_judgment")
    assert [r.id for r in b.rules] == [
        "no-platform-profile-in-friend-recommendation",
        "no-login-grant-transfer",
        "duoshan-no-platform-profile",
    ]
    transfer = b.rules[1]
    assert transfer.recipients.excluded == ("douyin",)
    assert transfer.unless is not None
    assert transfer.unless.grant_first_used_by_recipient_before == date(2019, 3, 20)
    line = _line_of(injunction_path.read_text(), "- id: no-login-grant-transfer")
    assert transfer.location == f"{injunction_path}:{line}:5"


def _mutate(path: Path, old: str, new: str) -> str:
    text = path.read_text()
    assert old in text
    return text.replace(old, new, 1)


def _line_of(text: str, needle: str) -> int:
    """1-based line of the first occurrence of ``needle``."""
    return text[: text.index(needle)].count("\n") + 1


def test_unknown_taxonomy_key_is_located(injunction_path: Path) -> None:
    text = _mutate(injunction_path, "actions: [transfer]", "actions: [transfr]")
    with pytest.raises(PolicyError) as info:
        load_bundle_text(text, "bad.yaml")
    err = info.value
    assert err.location is not None
    line = _line_of(text, "actions: [transfr]")
    assert (err.location.path, err.location.line, err.location.column) == ("bad.yaml", line, 15)
    assert err.rule == "no-login-grant-transfer"
    assert err.key == "rules[1].actions[0]"
    assert "unknown action 'transfr'" in str(err)
    assert err.code == "PG110"


def test_all_errors_reported_at_once(injunction_path: Path) -> None:
    text = _mutate(
        injunction_path,
        "    effect: deny\n    actions: [use, derive, display, store]\n",
        "    effect: deni\n    colour: red\n    actions: [use, derive, display, store]\n",
    )
    with pytest.raises(PolicyErrors) as info:
        load_bundle_text(text, "bad.yaml")
    got = {(e.key, e.location.line if e.location else None) for e in info.value.errors}
    line = _line_of(text, "effect: deni")
    assert got == {("rules[0].effect", line), ("rules[0].colour", line + 1)}
    assert "unknown key 'colour'" in str(info.value)


def test_yaml_syntax_error_is_located(injunction_path: Path) -> None:
    text = _mutate(injunction_path, "  issuer: Tianjin", "  issuer: Tianjin: Binhai")
    line = _line_of(text, "issuer: Tianjin: Binhai")
    with pytest.raises(PolicyError, match=rf"^\[PG110\] bad.yaml:{line}:18: YAML syntax error"):
        load_bundle_text(text, "bad.yaml")


def test_missing_key_and_bad_date(injunction_path: Path) -> None:
    text = _mutate(injunction_path, "  kind: court_order.preliminary_injunction\n", "")
    with pytest.raises(PolicyError, match=r"missing required key 'kind'.*key 'instrument\.kind'"):
        load_bundle_text(text, "bad.yaml")
    text = _mutate(injunction_path, "effective_from: 2019-03-20", "effective_from: yesterday")
    with pytest.raises(PolicyError, match=r"bad.yaml:\d+:19: .*valid date"):
        load_bundle_text(text, "bad.yaml")


def test_semantic_checks() -> None:
    text = """
instrument: {id: i, kind: internal_policy, issuer: me, effective_from: 2020-01-02,
             effective_until: 2020-01-01}
rules:
  - {id: r, effect: deny, actions: [use]}
  - {id: r, effect: deny, actions: [use], unless: {}}
"""
    with pytest.raises(PolicyError, match=r"s.yaml:6:\d+: .*needs at least one condition"):
        load_bundle_text(text, "s.yaml")
    text = text.replace(", unless: {}", "")
    with pytest.raises(PolicyErrors) as info:
        load_bundle_text(text, "s.yaml")
    messages = [str(e) for e in info.value.errors]
    assert any("validity never starts" in m for m in messages)
    assert any("s.yaml:6:10: duplicate rule id" in m for m in messages)


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string", "instrument: 3\nrules: []"])
def test_non_bundles_are_rejected_clearly(text: str) -> None:
    with pytest.raises(PolicyError):
        load_bundle_text(text, "x.yaml")


def test_policy_dir_rejects_duplicate_instruments(tmp_path: Path, injunction_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(injunction_path.read_text())
    (tmp_path / "b.yaml").write_text(injunction_path.read_text())
    with pytest.raises(PolicyError, match="also defined in"):
        load_policy_dir(tmp_path)
    with pytest.raises(PolicyError, match="no such policy file or folder"):
        load_policy_dir(tmp_path / "empty")

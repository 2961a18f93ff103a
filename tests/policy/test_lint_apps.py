"""`policy check` warns about app names that are probably misspelt: a rule on 'douyn' silently
never fires (found by a fresh user)."""

from __future__ import annotations

from pathlib import Path

from provguard.decide.analysis import lint
from provguard.policy import PolicySet, load_bundle_text

INJUNCTION = (
    Path(__file__).resolve().parents[2] / "policies" / ("cn-tj-binhai-2019-douyin-duoshan.yaml")
)


def _findings(text: str) -> list[tuple[str, str | None, str]]:
    ps = PolicySet.of([load_bundle_text(text, "p.yaml")])
    return [(f.kind, f.rule_id, f.message) for f in lint(ps) if f.kind == "unknown_app"]


def test_shipped_bundle_has_no_app_warning() -> None:
    assert _findings(INJUNCTION.read_text(encoding="utf-8")) == []


def test_near_duplicate_app_names_are_reported_once() -> None:
    text = INJUNCTION.read_text(encoding="utf-8").replace("apps: [douyin]", "apps: [douyn]")
    assert text.count("douyn]") == 2
    found = _findings(text)
    assert found == [
        (
            "unknown_app",
            "no-platform-profile-in-friend-recommendation",
            "apps 'douyn' and 'douyin' differ by a letter or two",
        )
    ]


def test_declared_known_apps_flag_every_other_name() -> None:
    text = INJUNCTION.read_text(encoding="utf-8").replace(
        "rules:", "known_apps: [douyin, duoshan]\nrules:", 1
    )
    assert _findings(text) == []
    typo = text.replace("apps: [douyin]", "apps: [douyn]", 1)
    ((_, _, message),) = _findings(typo)
    assert message == "app 'douyn' is not in any bundle's known_apps"

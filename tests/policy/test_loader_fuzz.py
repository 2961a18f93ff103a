"""The loader never raises anything but PolicyError, on arbitrary and on mutated input."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provguard.errors import PolicyError
from provguard.policy import load_bundle_text

INJ = (
    (Path(__file__).resolve().parents[2] / "policies")
    .joinpath("cn-tj-binhai-2019-douyin-duoshan.yaml")
    .read_text()
)
TOKENS = [
    *(":", "-", "[", "]", "{", "}", "not:", "any", "when:", "unless:", "\n", "  ", "&a", "*a"),
    *("!!python/object:os.system", "2019-13-45", "~", "'", '"', "\t", "%YAML 1.1", "---"),
]


def _load(text: str) -> None:
    try:
        load_bundle_text(text, "fuzz.yaml")
    except PolicyError as exc:
        assert exc.code == "PG110"
        assert str(exc)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_arbitrary_text(text: str) -> None:
    _load(text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(INJ)), st.integers(0, 40), st.sampled_from(TOKENS))
def test_mutated_injunction(pos: int, cut: int, token: str) -> None:
    _load(INJ[:pos] + token + INJ[pos + cut :])


def test_huge_and_deep_inputs() -> None:
    _load("a: " + "x" * (1 << 21))
    _load("[" * 5000 + "]" * 5000)  # refused by a bracket scan before the YAML parser recurses
    _load("rules:\n" + "  - {id: r, effect: deny, actions: [use]}\n" * 4000)

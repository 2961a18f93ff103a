"""The compiled index against the reference interpreter (the batch API: test_batch.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy_gen import policy_sets, requests

from provguard.decide import CompiledPolicy, Decision, Request, decide
from provguard.policy import PolicySet, load_policy_dir


def _same(a: Decision, b: Decision) -> None:
    assert a.effect == b.effect
    assert a.reasons == b.reasons
    assert a.obligations == b.obligations
    assert a.shadow == b.shadow


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy_sets(), st.lists(requests(), min_size=1, max_size=8))
def test_compiled_equals_reference(ps: PolicySet, reqs: list[Request]) -> None:
    compiled = CompiledPolicy(ps)
    for r in reqs:
        _same(compiled.decide(r), decide(ps, r))
        _same(compiled.decide(r), decide(ps, r))  # again, from the plan cache


def test_compiled_on_shipped_bundles(repo_root) -> None:  # type: ignore[no-untyped-def]
    ps = load_policy_dir(repo_root / "policies")
    compiled = CompiledPolicy(ps)
    at = datetime(2019, 6, 30, tzinfo=UTC)
    r = Request("douyin", "use", "user.avatar", frozenset({"wechat"}), at, "profile.display")
    _same(compiled.decide(r), decide(ps, r))
    r = Request(
        "douyin",
        "transfer",
        "grant.login",
        frozenset({"qq"}),
        at,
        recipient="duoshan",
        grant_first_used_by_recipient_at=datetime(2019, 3, 1, tzinfo=UTC),
    )
    d = compiled.decide(r)
    _same(d, decide(ps, r))
    assert d.excepted

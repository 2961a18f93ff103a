"""The compiled index and the batch API against the reference interpreter."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy_gen import policy_sets, requests

from provguard.decide import CompiledPolicy, Decision, Request, decide, decide_batch
from provguard.decide.batch import EFFECT_CODES
from provguard.policy import PolicySet, load_policy_dir
from provguard.provenance import default_registry


def _same(a: Decision, b: Decision) -> None:
    assert a.effect == b.effect
    assert a.reasons == b.reasons
    assert a.obligations == b.obligations
    assert a.shadow == b.shadow


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
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


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy_sets(), st.lists(requests(rich=False), min_size=1, max_size=30), st.booleans())
def test_batch_equals_scalar(ps: PolicySet, reqs: list[Request], arrow: bool) -> None:
    compiled = CompiledPolicy(ps)
    reg = default_registry()

    def col(name: str) -> object:
        values = [getattr(r, name) for r in reqs]
        return pa.array(values, type=pa.string()) if arrow else np.array(values, dtype=object)

    def tcol(name: str) -> np.ndarray:
        return np.array(
            [
                np.datetime64(getattr(r, name).astimezone(UTC).replace(tzinfo=None), "ns")
                if getattr(r, name) is not None
                else np.datetime64("NaT", "ns")
                for r in reqs
            ]
        )

    out = decide_batch(
        compiled,
        app=col("app"),
        action=col("action"),
        category=col("category"),
        purpose=col("purpose"),
        recipient=col("recipient"),
        controller=col("controller"),
        origins=np.array([reg.mask(r.origins) for r in reqs], dtype=np.uint64),
        at=tcol("at"),
        grant_first_used_by_recipient_at=tcol("grant_first_used_by_recipient_at"),
        registry=reg,
    )
    assert len(out) == len(reqs)
    for i, r in enumerate(reqs):
        ref = decide(ps, r)
        assert out.effect[i] == EFFECT_CODES[ref.effect], i
        assert bool(out.excepted[i]) == ref.excepted
        assert bool(out.shadow_denied[i]) == bool(ref.shadow)
        got = out.decision(i)
        assert [(x.rule_id, x.outcome) for x in got.reasons] == [
            (x.rule_id, x.outcome) for x in ref.reasons
        ]
        assert got.obligations == ref.obligations

"""Differential test: provguard's decisions against Cedar's on translated policies."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from policy_gen import policy_sets, requests

from provguard.decide import Request, decide
from provguard.decide.cedar import NotTranslatable, cedar_request, expected_cedar, to_cedar
from provguard.policy import PolicySet, load_policy_dir

cedarpy = pytest.importorskip("cedarpy")


def _cedar(ps: PolicySet, reqs: list[Request]) -> None:
    try:
        cp = to_cedar(ps)
        cedar_reqs = [cedar_request(r) for r in reqs]
    except NotTranslatable:
        assume(False)
        return
    handle = cedarpy.PolicySet.from_str(cp.text) if cp.text else ""
    results = cedarpy.is_authorized_batch(cedar_reqs, handle, [])
    for r, res in zip(reqs, results, strict=True):
        d = decide(ps, r)
        assert not res.diagnostics.errors, res.diagnostics.errors
        got = {cp.reasons[int(p.removeprefix("policy"))][:2] for p in res.diagnostics.reasons}
        want_decision, want = expected_cedar(
            d.effect, {(x.rule_id, x.instrument_id) for x in d.determining}
        )
        assert (res.decision.value, got) == (want_decision, want), (cp.text, r, d)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy_sets(), st.lists(requests(), min_size=1, max_size=10))
def test_cedar_agrees_on_random_bundles(ps: PolicySet, reqs: list[Request]) -> None:
    reqs = [r for r in reqs if not r.consents]
    assume(reqs)
    _cedar(ps, reqs)


@settings(max_examples=60, deadline=None)
@given(st.lists(requests(), min_size=1, max_size=20))
def test_cedar_agrees_on_the_injunction(repo_root, reqs: list[Request]) -> None:  # type: ignore[no-untyped-def]
    ps = load_policy_dir(repo_root / "policies").with_event(
        "cn-tj-binhai-2019-douyin-duoshan",
        "final_judgment",
        __import__("datetime").date(2019, 9, 1),
    )
    _cedar(ps, [r for r in reqs if not r.consents])


_T0 = __import__("datetime").datetime(2019, 3, 20, tzinfo=__import__("datetime").UTC)
_DT = __import__("datetime").timedelta


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.builds(
            lambda app, rec, o, first, at: Request(
                app,
                "transfer",
                "grant.login",
                frozenset({o}),
                _T0 + _DT(days=at),
                recipient=rec,
                grant_first_used_by_recipient_at=first,
            ),
            st.sampled_from(["douyin", "duoshan"]),
            st.sampled_from(["douyin", "duoshan", "toutiao"]),
            st.sampled_from(["wechat", "qq", "apple"]),
            st.one_of(st.none(), st.sampled_from([-1, 0, 1]).map(lambda s: _T0 + _DT(seconds=s))),
            st.integers(-2, 400),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_cedar_agrees_on_injunction_transfers(repo_root, reqs: list[Request]) -> None:  # type: ignore[no-untyped-def]
    _cedar(load_policy_dir(repo_root / "policies"), reqs)

"""Differential test: provguard's decisions against Cedar's on translated policies."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from policy_gen import policy_sets, requests

from provguard.decide import ConsentRecord, Request, decide
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


@settings(max_examples=70, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy_sets(), st.lists(requests(), min_size=1, max_size=10))
def test_cedar_agrees_on_random_bundles(ps: PolicySet, reqs: list[Request]) -> None:
    _cedar(ps, reqs)  # consent records included (unrolled into Cedar context records)


@settings(max_examples=60, deadline=None)
@given(st.lists(requests(), min_size=1, max_size=20))
def test_cedar_agrees_on_the_injunction(repo_root, reqs: list[Request]) -> None:  # type: ignore[no-untyped-def]
    ps = load_policy_dir(repo_root / "policies").with_event(
        "cn-tj-binhai-2019-douyin-duoshan",
        "final_judgment",
        __import__("datetime").date(2019, 9, 1),
    )
    _cedar(ps, reqs)


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


_CATS = ["user", "user.name.nickname", "user.avatar", "grant.login"]
_PURPOSES = ["social.friend_recommendation", "profile.display", "marketing"]


@st.composite
def _consent(draw: st.DrawFn) -> ConsentRecord:
    t0 = __import__("datetime").datetime(2022, 1, 1, tzinfo=__import__("datetime").UTC)
    given = draw(st.one_of(st.none(), st.integers(-2, 2)))
    withdrawn = draw(st.one_of(st.none(), st.integers(-2, 3)))
    return ConsentRecord(
        draw(st.sampled_from(["c1", "c2"])),
        frozenset(draw(st.sets(st.sampled_from(_CATS), max_size=2))),
        frozenset(draw(st.sets(st.sampled_from(_PURPOSES), max_size=2))),
        recipient=draw(st.sampled_from([None, "", "duoshan", "toutiao"])),
        method=draw(st.sampled_from([None, "", "api"])),
        separate=draw(st.booleans()),
        given_at=None if given is None else t0 + _DT(microseconds=given),
        withdrawn_at=None if withdrawn is None else t0 + _DT(microseconds=withdrawn),
    )


@st.composite
def _pipl_request(draw: st.DrawFn) -> Request:
    t0 = __import__("datetime").datetime(2022, 1, 1, tzinfo=__import__("datetime").UTC)
    action = draw(st.sampled_from(["transfer", "use", "store"]))
    purpose = draw(st.sampled_from([None, *_PURPOSES]))
    if action == "use" and purpose is None:
        purpose = _PURPOSES[0]
    recipient = draw(st.sampled_from([None, "duoshan", "toutiao"]))
    if action == "transfer" and recipient is None:
        recipient = "duoshan"
    return Request(
        draw(st.sampled_from(["douyin", "duoshan"])),
        action,
        draw(st.sampled_from(_CATS)),
        frozenset(draw(st.sets(st.sampled_from(["wechat", "qq", "user_input"]), min_size=1))),
        t0 + _DT(microseconds=draw(st.integers(-1, 2))),
        purpose,
        recipient=recipient,
        context=draw(
            st.sampled_from(
                [
                    {},
                    {"legal_basis": "consent"},
                    {"legal_basis": "contract"},
                    {"collected_by_this_app": True},
                    {"developer_agreement_status": "terminated", "legal_basis": "consent"},
                ]
            )
        ),
        consents=tuple(draw(st.lists(_consent(), max_size=4))),
    )


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_pipl_request(), min_size=1, max_size=15))
def test_cedar_agrees_on_the_pipl_and_wechat_bundles(repo_root, reqs: list[Request]) -> None:  # type: ignore[no-untyped-def]
    """PIPL Art. 23 (separate consent naming recipient, purpose, method, categories), Art. 15
    (withdrawal) and the WeChat terms: consent records to the microsecond around the request."""
    ps = load_policy_dir(repo_root / "policies/extra")
    _cedar(ps, reqs)


def test_pipl_consent_translation_decides_both_ways(repo_root) -> None:  # type: ignore[no-untyped-def]
    """A covering separate consent lets a transfer through; its withdrawal a microsecond before
    the request does not (checked against Cedar too)."""
    import datetime as dt

    ps = load_policy_dir(repo_root / "policies/extra")
    at = dt.datetime(2022, 1, 1, tzinfo=dt.UTC)
    consent = ConsentRecord(
        "c", frozenset({"user"}), frozenset({"marketing"}), recipient="toutiao", method="api",
        separate=True, given_at=at - _DT(days=1),
    )  # fmt: skip
    ok = Request(
        "douyin", "transfer", "user.avatar", frozenset({"qq"}), at, "marketing",
        recipient="toutiao", consents=(consent,),
    )  # fmt: skip
    gone = Request(
        "douyin", "transfer", "user.avatar", frozenset({"qq"}), at, "marketing",
        recipient="toutiao",
        consents=(ConsentRecord(**{**consent.__dict__, "withdrawn_at": at - _DT(microseconds=1)}),),
    )  # fmt: skip
    assert decide(ps, ok).effect == "permit" and decide(ps, ok).excepted
    assert decide(ps, gone).effect == "deny"
    _cedar(ps, [ok, gone])

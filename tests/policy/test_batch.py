"""The vectorised batch API against the reference interpreter, row by row.

Random bundles (conditions on grant times, status, scopes, subject, context and consents; shadow
rules; defaults; events) and random rows carrying every kind of context, given as numpy object
columns, Arrow string columns or Arrow dictionary / struct / list columns.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy_gen import policy_sets, requests, time_column

from provguard.decide import CompiledPolicy, Request, decide, decide_batch
from provguard.decide.batch import EFFECT_CODES, BatchDecisions
from provguard.errors import RequestError
from provguard.policy import PolicySet, load_policy_dir
from provguard.provenance import default_registry

REG = default_registry()


def _run(cp: CompiledPolicy, reqs: list[Request], form: str) -> BatchDecisions:
    def col(name: str) -> Any:
        values = [getattr(r, name) for r in reqs]
        if form == "numpy":
            return np.array(values, dtype=object)
        arr = pa.array(values, type=pa.string())
        return arr.dictionary_encode() if form == "dictionary" else arr

    def attrs(name: str) -> Any:
        values = [dict(getattr(r, name)) or None for r in reqs]
        if form == "dictionary" and any(values):
            return pa.array(values)  # an Arrow struct column
        return values

    scopes: Any = [None if r.grant_scopes is None else sorted(r.grant_scopes) for r in reqs]
    if form == "dictionary":
        scopes = pa.array(scopes, type=pa.list_(pa.string()))
    return decide_batch(
        cp,
        app=col("app"),
        action=col("action"),
        category=col("category"),
        purpose=col("purpose"),
        recipient=col("recipient"),
        controller=col("controller"),
        origins=np.array([REG.mask(r.origins) for r in reqs], dtype=np.uint64),
        at=time_column(reqs, "at"),
        grant_first_used_by_recipient_at=time_column(reqs, "grant_first_used_by_recipient_at"),
        grant_granted_at=time_column(reqs, "grant_granted_at"),
        grant_status=col("grant_status"),
        grant_scopes=scopes,
        subject=attrs("subject"),
        context=attrs("context"),
        consents=[r.consents for r in reqs],
        registry=REG,
    )


def _check(ps: PolicySet, reqs: list[Request], out: BatchDecisions) -> None:
    assert len(out) == len(reqs)
    for i, r in enumerate(reqs):
        ref = decide(ps, r)
        assert out.effect[i] == EFFECT_CODES[ref.effect], (i, r, ref)
        assert bool(out.excepted[i]) == ref.excepted, i
        assert bool(out.shadow_denied[i]) == bool(ref.shadow), i
        got = out.decision(i)
        assert got.effect == ref.effect
        assert [(x.rule_id, x.instrument_id, x.effect, x.outcome) for x in got.reasons] == [
            (x.rule_id, x.instrument_id, x.effect, x.outcome) for x in ref.reasons
        ]
        assert got.obligations == ref.obligations
        assert [x.rule_id for x in got.shadow] == [x.rule_id for x in ref.shadow]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    policy_sets(),
    st.lists(requests(), min_size=1, max_size=25),
    st.sampled_from(["numpy", "arrow", "dictionary"]),
    st.integers(1, 3),
)
def test_batch_with_context_equals_reference(
    ps: PolicySet, reqs: list[Request], form: str, copies: int
) -> None:
    rows = reqs * copies  # repeated rows share classes
    _check(ps, rows, _run(CompiledPolicy(ps), rows, form))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy_sets(max_bundles=4, max_rules=20), st.lists(requests(rich=False), max_size=60))
def test_batch_many_rules_equals_reference(ps: PolicySet, reqs: list[Request]) -> None:
    _check(ps, reqs, _run(CompiledPolicy(ps), reqs, "numpy"))


def test_grandfathering_in_batch(repo_root) -> None:  # type: ignore[no-untyped-def]
    """The injunction's transfer rule, decided per row from a first-use column."""
    ps = load_policy_dir(repo_root / "policies")
    cp = CompiledPolicy(ps)
    t0 = datetime(2019, 3, 19, 16, tzinfo=UTC)  # 2019-03-20T00:00+08:00: the bundle's zone
    firsts = [None, t0 - timedelta(seconds=1), t0, t0 + timedelta(days=3)]
    reqs = [
        Request(
            "douyin",
            "transfer",
            "grant.login",
            frozenset({o}),
            t0 + timedelta(days=d),
            recipient=rec,
            grant_first_used_by_recipient_at=f,
        )
        for o in ("wechat", "qq", "apple")
        for rec in ("duoshan", "douyin", "toutiao")
        for f in firsts
        for d in (-1, 0, 30)
    ]
    out = _run(cp, reqs, "arrow")
    _check(ps, reqs, out)
    by = {
        (r.recipient, r.grant_first_used_by_recipient_at, next(iter(r.origins)), r.at): i
        for i, r in enumerate(reqs)
    }
    at = t0 + timedelta(days=30)
    assert out.effect[by[("duoshan", t0 - timedelta(seconds=1), "wechat", at)]] == 1
    assert out.excepted[by[("duoshan", t0 - timedelta(seconds=1), "wechat", at)]]
    assert out.effect[by[("duoshan", t0, "wechat", at)]] == 2
    assert out.effect[by[("duoshan", None, "qq", at)]] == 2
    assert out.effect[by[("douyin", None, "qq", at)]] == 0


def test_large_batch_matches_scalar_decisions(repo_root) -> None:  # type: ignore[no-untyped-def]
    """200,000 rows over every shipped bundle: per-row effects equal per-class scalar decisions."""
    ps = load_policy_dir(repo_root / "policies")
    cp = CompiledPolicy(ps)
    rng = np.random.default_rng(3)
    m = 200_000
    apps = np.array(["douyin", "duoshan", "toutiao"], dtype=object)
    acts = np.array(["use", "derive", "display", "store"], dtype=object)
    cats = np.array(["user.avatar", "user.name.nickname", "user.name.legal"], dtype=object)
    purps = np.array(["social.friend_recommendation", "profile.display"], dtype=object)
    bits = np.array([1 << REG.bit(o) for o in ("wechat", "qq", "user_input")], dtype=np.uint64)
    cols = {
        "app": apps[rng.integers(0, 3, m)],
        "action": acts[rng.integers(0, 4, m)],
        "category": cats[rng.integers(0, 3, m)],
        "purpose": purps[rng.integers(0, 2, m)],
    }
    masks = bits[rng.integers(0, 3, m)] | bits[rng.integers(0, 3, m)]
    at = np.datetime64("2019-01-01T00:00:00", "ns") + rng.integers(0, 4 * 10**16, m).astype(
        "timedelta64[ns]"
    )
    out = decide_batch(cp, origins=masks, at=at, registry=REG, **cols)
    sample = rng.integers(0, m, 400)
    for i in sample.tolist():
        t = at[i].astype("datetime64[us]").item().replace(tzinfo=UTC)
        r = Request(
            str(cols["app"][i]),
            str(cols["action"][i]),
            str(cols["category"][i]),
            REG.names_of(int(masks[i])),
            t,
            str(cols["purpose"][i]),
        )
        assert out.effect[i] == EFFECT_CODES[decide(ps, r).effect], (i, r)
    assert int((out.effect == 2).sum()) > 0 and int((out.effect == 0).sum()) > 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"action": ["use", "fly"]}, "row 1: unknown action 'fly'"),
        ({"purpose": ["social", None]}, "row 1: action 'use' needs a purpose"),
        ({"category": ["user", "user.nope"]}, "row 1: unknown data category 'user.nope'"),
        ({"origins": np.array([2, 0], dtype=np.uint64)}, "row 1: a request needs at least one"),
        ({"origins": np.array([2, 1 << 60], dtype=np.uint64)}, "row 1: label bit 60"),
        ({"app": ["a", "b", "c"]}, "column 'app' has 3 rows, expected 2"),
        ({"grant_status": ["active", "paused"]}, "row 1: unknown grant status 'paused'"),
        ({"subject": [None, ["x"]]}, "row 1: 'subject' must be a mapping"),
    ],
)
def test_bad_rows_are_named(repo_root, change: dict[str, Any], message: str) -> None:  # type: ignore[no-untyped-def]
    ps = load_policy_dir(repo_root / "policies/extra")
    cols: dict[str, Any] = {
        "app": ["douyin", "douyin"],
        "action": ["use", "use"],
        "category": ["user", "user"],
        "purpose": ["social", "social"],
        "origins": np.array([2, 2], dtype=np.uint64),
        "at": np.array(["2022-01-01", "2022-01-02"], dtype="datetime64[ns]"),
        "context": [{"legal_basis": "consent"}] * 2,
    }
    cols.update(change)
    with pytest.raises(RequestError) as err:
        decide_batch(CompiledPolicy(ps), registry=REG, **cols)
    assert message in str(err.value)

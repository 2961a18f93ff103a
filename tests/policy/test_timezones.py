"""Time zones: a bundle's date-only boundaries are local midnights in its ``timezone``.

The defining case: the Tianjin order is dated 2019-03-20 in China Standard Time, so a Douyin user
who first used the Duoshan login at 2019-03-20T07:00+08:00 (2019-03-19T23:00Z) did so *on* the day
of the order, not before it: no grandfathering. Every decision path must agree at instants just
before and after local midnight: the reference interpreter, the compiled index (and the
memoising decision point), ``decide_batch``, the Cedar translation, ``diff`` and ``can``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy_gen import time_column

from provguard.decide import CompiledPolicy, DecisionPoint, Request, decide, decide_batch
from provguard.decide.analysis import Verdict, can, diff
from provguard.decide.batch import EFFECT_CODES
from provguard.decide.cedar import cedar_request, expected_cedar, to_cedar
from provguard.errors import PolicyError, PolicyErrors
from provguard.policy import PolicySet, load_bundle_text, load_policy_dir
from provguard.policy.model import day_start, day_text
from provguard.provenance import default_registry

REG = default_registry()
CST = timezone(timedelta(hours=8))
INJ = "cn-tj-binhai-2019-douyin-duoshan"
LOCAL_MIDNIGHT = datetime(2019, 3, 19, 16, tzinfo=UTC)  # 2019-03-20T00:00+08:00
US = timedelta(microseconds=1)


def _transfer(first_used: datetime | None, at: datetime) -> Request:
    return Request(
        "douyin",
        "transfer",
        "grant.login",
        frozenset({"wechat"}),
        at,
        recipient="duoshan",
        grant_first_used_by_recipient_at=first_used,
    )


def _use(at: datetime) -> Request:
    return Request(
        "douyin",
        "use",
        "user.name.nickname",
        frozenset({"wechat"}),
        at,
        "social.friend_recommendation",
    )


def _batch_effects(ps: PolicySet, reqs: list[Request]) -> list[tuple[str, bool]]:
    def col(name: str) -> Any:
        return np.array([getattr(r, name) for r in reqs], dtype=object)

    out = decide_batch(
        CompiledPolicy(ps),
        app=col("app"),
        action=col("action"),
        category=col("category"),
        purpose=col("purpose"),
        recipient=col("recipient"),
        origins=np.array([REG.mask(r.origins) for r in reqs], dtype=np.uint64),
        at=time_column(reqs, "at"),
        grant_first_used_by_recipient_at=time_column(reqs, "grant_first_used_by_recipient_at"),
        grant_granted_at=time_column(reqs, "grant_granted_at"),
        registry=REG,
    )
    codes = {v: k for k, v in EFFECT_CODES.items()}
    return [(codes[int(out.effect[i])], bool(out.excepted[i])) for i in range(len(reqs))]


def _cedar_effects(ps: PolicySet, reqs: list[Request]) -> list[str]:
    cedarpy = pytest.importorskip("cedarpy")
    cp = to_cedar(ps)
    handle = cedarpy.PolicySet.from_str(cp.text)
    results = cedarpy.is_authorized_batch([cedar_request(r) for r in reqs], handle, [])
    return [res.decision.value for res in results]


def _all_paths(ps: PolicySet, reqs: list[Request]) -> list[tuple[str, bool]]:
    """The (effect, excepted) of every request, asserting every engine gives the same."""
    ref = [(d.effect, d.excepted) for d in (decide(ps, r) for r in reqs)]
    cp = CompiledPolicy(ps)
    assert [(d.effect, d.excepted) for d in (cp.decide(r) for r in reqs)] == ref
    point = DecisionPoint(ps)
    assert [(d.effect, d.excepted) for d in (point.decide(r) for r in reqs)] == ref
    assert _batch_effects(ps, reqs) == ref
    want = [
        expected_cedar(d.effect, {(x.rule_id, x.instrument_id) for x in d.determining})[0]
        for d in (decide(ps, r) for r in reqs)
    ]
    assert _cedar_effects(ps, reqs) == want
    return ref


@pytest.fixture(scope="module")
def injunction(repo_root: Path) -> PolicySet:
    ps = load_policy_dir(repo_root / "policies")
    assert ps.instrument(INJ).timezone == "Asia/Shanghai"
    return ps


def test_the_defining_case_is_not_grandfathered(injunction: PolicySet) -> None:
    at = datetime(2019, 6, 30, tzinfo=UTC)
    firsts = [
        LOCAL_MIDNIGHT - US,  # 2019-03-19T23:59:59.999999+08:00: before the order's day
        datetime(2019, 3, 19, 23, 59, 59, tzinfo=CST),
        LOCAL_MIDNIGHT,  # the first instant of 2019-03-20 in Beijing
        datetime(2019, 3, 20, 7, tzinfo=CST),  # the case the fresh user found
        datetime(2019, 3, 19, 23, 59, tzinfo=UTC),  # still 2019-03-19 in UTC, 03-20 in Beijing
        datetime(2019, 3, 20, tzinfo=UTC) - US,
        None,  # no recorded first use: fail closed
    ]
    got = _all_paths(injunction, [_transfer(f, at) for f in firsts])
    assert got == [("permit", True)] * 2 + [("deny", False)] * 5


def test_validity_starts_and_ends_at_local_midnight(injunction: PolicySet) -> None:
    ps = injunction.with_event(INJ, "final_judgment", date(2020, 1, 1))
    ats = [
        LOCAL_MIDNIGHT - US,
        LOCAL_MIDNIGHT,
        datetime(2019, 3, 20, 7, tzinfo=CST),
        datetime(2019, 12, 31, 16, tzinfo=UTC) - US,  # 2019-12-31T23:59:59.999999+08:00
        datetime(2019, 12, 31, 16, tzinfo=UTC),  # the judgment's day has begun in Beijing
        datetime(2019, 12, 31, 23, tzinfo=UTC),
    ]
    got = _all_paths(ps, [_use(t) for t in ats])
    assert [e for e, _ in got] == [
        "not_applicable",
        "deny",
        "deny",
        "deny",
        "not_applicable",
        "not_applicable",
    ]
    inst = ps.instrument(INJ)
    assert inst.in_force(LOCAL_MIDNIGHT, ps.events)
    assert not inst.in_force(LOCAL_MIDNIGHT - US, ps.events)
    assert "Asia/Shanghai" in inst.validity_text()


def _utc_twin(repo_root: Path) -> PolicySet:
    text = (repo_root / "policies" / f"{INJ}.yaml").read_text(encoding="utf-8")
    assert "timezone: Asia/Shanghai" in text
    return PolicySet.of([load_bundle_text(text.replace("timezone: Asia/Shanghai", ""))])


def test_diff_between_utc_and_shanghai_days_is_exactly_the_eight_hours(
    injunction: PolicySet, repo_root: Path
) -> None:
    utc = _utc_twin(repo_root)
    result = diff(utc, injunction)
    assert result.exact and result.changed > 0
    changed = {r.index: r.verdicts for r in result.rows}
    # the bins are cut at both instants, and labelled with the zone
    labels = {r.request["first_used"] for r in result.rows} | {
        r.request["from"] for r in result.rows
    }
    assert any("2019-03-20 Asia/Shanghai" in x for x in labels), labels
    at_late = datetime(2019, 6, 30, tzinfo=UTC)
    probes = [
        _transfer(LOCAL_MIDNIGHT - US, at_late),  # before both days: same
        _transfer(LOCAL_MIDNIGHT, at_late),  # inside the window: changes
        _transfer(datetime(2019, 3, 20, 7, tzinfo=CST), at_late),  # changes
        _transfer(datetime(2019, 3, 20, tzinfo=UTC), at_late),  # after both: same
        _use(LOCAL_MIDNIGHT - US),  # in force in neither
        _use(LOCAL_MIDNIGHT + timedelta(hours=3)),  # in force only in Beijing days
        _use(datetime(2019, 3, 20, tzinfo=UTC)),  # in force in both
    ]
    expect_change = [False, True, True, False, False, True, False]
    for req, changes in zip(probes, expect_change, strict=True):
        va, vb = Verdict.of(decide(utc, req)), Verdict.of(decide(injunction, req))
        assert (va != vb) is changes, req
        idx = result.locate(req)
        assert idx is not None
        assert changed.get(idx) == ((va, vb) if changes else None), req
        w = result.representative(idx)
        assert w is not None
        assert (Verdict.of(decide(utc, w)), Verdict.of(decide(injunction, w))) == (va, vb)


def test_can_shows_the_local_day(injunction: PolicySet) -> None:
    rows = can(
        injunction,
        app="douyin",
        action="transfer",
        category="grant.login",
        origin="wechat",
        purpose="account.login",
    )
    for r in rows:
        assert r.witness is not None
        assert (decide(injunction, r.witness).effect != "deny") == r.allowed
    shown = {r.request["from"] for r in rows} | {r.request["first_used"] for r in rows}
    assert "2019-03-20 Asia/Shanghai" in shown
    assert "before 2019-03-20 Asia/Shanghai" in shown


# --- conditions with days, and date-valued attributes -------------------------------------------

_COND_BUNDLE = """
timezone: {zone}
instrument: {{id: t, kind: internal_policy, issuer: us, effective_from: 2000-01-01}}
rules:
  - id: new-grants
    effect: deny
    actions: [use]
    data: {{origins: [wechat]}}
    when:
      - {{field: grant.granted_at, on_or_after: {day}}}
  - id: young-accounts
    effect: deny
    actions: [store]
    when:
      - {{field: subject.joined, before: {day}}}
"""


def _zoned_set(zone: str, day: date) -> PolicySet:
    return PolicySet.of([load_bundle_text(_COND_BUNDLE.format(zone=zone, day=day.isoformat()))])


ZONES = ["UTC", "Asia/Shanghai", "America/New_York", "Pacific/Kiritimati", "Pacific/Pago_Pago"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(ZONES),
    st.dates(date(2001, 1, 1), date(2035, 12, 31)),
    st.lists(st.integers(-2 * 86_400_000_000, 2 * 86_400_000_000), min_size=1, max_size=6),
    st.sampled_from([-1, 0, 1]),
)
def test_every_path_cuts_at_local_midnight(
    zone: str, day: date, offsets_us: list[int], date_shift: int
) -> None:
    """Property: for any zone and day, a grant time is "on or after DAY" exactly when it is at or
    after local midnight of DAY in the zone, in every engine; a date-valued attribute is the
    start of that day in the same zone."""
    ps = _zoned_set(zone, day)
    midnight = datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(zone))
    assert day_start(day, zone) == midnight
    at = datetime(2040, 1, 1, tzinfo=UTC)
    times = [midnight + timedelta(microseconds=o) for o in [0, -1, *offsets_us]]
    reqs = [
        Request(
            "app", "use", "user.avatar", frozenset({"wechat"}), at, "profile.display",
            grant_granted_at=t,
        )
        for t in times
    ]  # fmt: skip
    got = _all_paths(ps, reqs)
    assert [e for e, _ in got] == ["deny" if t >= midnight else "not_applicable" for t in times]
    # date-valued attribute (not translatable to Cedar): reference, compiled, batch agree
    joined = day + timedelta(days=date_shift)
    store = Request(
        "app", "store", "user", frozenset({"qq"}), at, subject={"joined": joined}
    )  # fmt: skip
    eff = decide(ps, store).effect
    assert eff == ("deny" if joined < day else "not_applicable")
    assert CompiledPolicy(ps).decide(store).effect == eff
    # diff against the UTC twin: a request changes exactly when the two cuts disagree
    if zone != "UTC":
        utc = _zoned_set("UTC", day)
        result = diff(utc, ps)
        changed = {r.index: r.verdicts for r in result.rows}
        utc_midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
        for req, t in zip(reqs, times, strict=True):
            moved = (t >= midnight) != (t >= utc_midnight)
            idx = result.locate(req)
            assert idx is not None
            assert (idx in changed) is moved, (t, midnight, utc_midnight)


def test_day_text_names_the_zone() -> None:
    assert day_text(day_start(date(2019, 3, 20))) == "2019-03-20"
    assert day_text(day_start(date(2019, 3, 20), "Asia/Shanghai")) == "2019-03-20 Asia/Shanghai"


# --- errors ------------------------------------------------------------------------------------


def test_bad_zone_name_is_located_with_a_hint() -> None:
    text = _COND_BUNDLE.format(zone="Asia/Shangai", day="2020-01-01")
    with pytest.raises(PolicyError) as err:
        load_bundle_text(text, "b.yaml")
    msg = str(err.value)
    assert "b.yaml:2:11" in msg, msg
    assert "unknown time zone 'Asia/Shangai'" in msg
    assert "did you mean 'Asia/Shanghai'?" in msg


def test_bad_zone_in_instrument_and_condition_are_all_reported() -> None:
    text = """instrument:
  id: t
  kind: internal_policy
  issuer: us
  effective_from: 2000-01-01
  timezone: Beijing
rules:
  - id: r
    effect: deny
    actions: [use]
    when: [{field: grant.granted_at, before: 2020-01-01, timezone: utc}]
"""
    with pytest.raises(PolicyErrors) as err:
        load_bundle_text(text, "b.yaml")
    msgs = [str(e) for e in err.value.errors]
    assert any("b.yaml:6:13" in m and "unknown time zone 'Beijing'" in m for m in msgs), msgs
    assert any("b.yaml:11:" in m and "did you mean 'UTC'?" in m for m in msgs), msgs


def test_conflicting_zones_are_an_error() -> None:
    text = """timezone: Asia/Shanghai
instrument: {id: t, kind: internal_policy, issuer: us, effective_from: 2000-01-01,
             timezone: Europe/Berlin}
rules: [{id: r, effect: deny, actions: [use]}]
"""
    with pytest.raises(PolicyError, match="differs from the instrument's"):
        load_bundle_text(text, "b.yaml")


def test_default_is_utc_and_old_bundles_are_unchanged(repo_root: Path) -> None:
    ps = _utc_twin(repo_root)
    inst = ps.instrument(INJ)
    assert inst.timezone is None
    assert inst.in_force(datetime(2019, 3, 20, tzinfo=UTC), {})
    assert not inst.in_force(datetime(2019, 3, 20, tzinfo=UTC) - US, {})
    at = datetime(2019, 6, 30, tzinfo=UTC)
    assert decide(ps, _transfer(datetime(2019, 3, 20, 7, tzinfo=CST), at)).excepted

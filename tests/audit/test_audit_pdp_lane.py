"""``DecisionPoint(audit=writer)``: the decision point queues its decisions inline, and the log
holds exactly what ``submit_decision`` would have written (same payloads, same order, same
numbering with other submissions, same drop counting and closed-writer error)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.audit.writer import AuditWriter
from provguard.clock import FixedClock
from provguard.decide import DecisionPoint, Request
from provguard.errors import AuditError
from provguard.policy import PolicySet, load_policy_dir

POLICIES = Path(__file__).resolve().parents[2] / "policies"
AT = datetime(2019, 6, 30, 9, tzinfo=UTC)


@pytest.fixture(scope="module")
def policy() -> PolicySet:
    return load_policy_dir(POLICIES)


def _requests(n: int) -> list[Request]:
    """``n`` requests, some repeated (memoised decisions are logged too), deny and permit."""
    return [
        Request(
            app="douyin",
            action="use",
            category="user.avatar",
            origins=frozenset({"wechat" if i % 3 else "user_input"}),
            at=AT + timedelta(minutes=i % 5),
            purpose="social.friend_recommendation",
        )
        for i in range(n)
    ]


def test_inline_lane_writes_what_submit_decision_writes(tmp_path: Path, policy: PolicySet) -> None:
    clock = FixedClock(AT)
    lane_log = SqliteAuditLog(tmp_path / "lane.db")
    call_log = SqliteAuditLog(tmp_path / "call.db")
    reqs = _requests(23)
    with AuditWriter(lane_log, clock=clock, batch_max=4) as w:
        pdp = DecisionPoint(policy, audit=w, audit_stage="pdp")
        numbers = []
        for i, r in enumerate(reqs):
            pdp.decide(r)
            if i % 7 == 0:
                numbers.append(w.submit("note", {"i": i}))
        assert w.flush(10)
    with AuditWriter(call_log, clock=clock, batch_max=4) as w2:
        plain = DecisionPoint(policy)
        for i, r in enumerate(reqs):
            w2.submit_decision(plain.decide(r), stage="pdp")
            if i % 7 == 0:
                w2.submit("note", {"i": i})
        assert w2.flush(10)
    lane, call = list(lane_log.entries()), list(call_log.entries())
    assert len(lane) == 23 + 4
    assert [(e.kind, e.payload) for e in lane] == [(e.kind, e.payload) for e in call]
    assert [e.hash for e in lane] == [e.hash for e in call]  # same clock: the same chain
    assert {e.payload["stage"] for e in lane if e.kind == "decision"} == {"pdp"}
    # the notes' numbers count the inline decisions before them: one numbering for both
    assert numbers == [i + 2 + i // 7 for i in range(0, 23, 7)]
    assert lane_log.verify().ok


def test_inline_lane_counts_drops_in_drop_mode(tmp_path: Path, policy: PolicySet) -> None:
    log = SqliteAuditLog(tmp_path / "a.db")
    w = AuditWriter(log, mode="drop", capacity=3)  # not started: the queue fills
    pdp = DecisionPoint(policy, audit=w)
    for r in _requests(5):
        pdp.decide(r)  # never blocks, never raises
    assert w.stats().dropped == 2
    w.start()
    stats = w.close()
    assert (stats.committed, stats.dropped) == (3, 2)
    kinds = [e.kind for e in log.entries()]
    assert kinds.count("decision") == 3 and "audit.dropped" in kinds
    assert log.verify().ok


def test_inline_lane_refuses_after_close(tmp_path: Path, policy: PolicySet) -> None:
    w = AuditWriter(SqliteAuditLog(tmp_path / "a.db")).start()
    pdp = DecisionPoint(policy, audit=w)
    pdp.decide(_requests(1)[0])
    w.close()
    with pytest.raises(AuditError, match="closed"):
        pdp.decide(_requests(2)[1])

"""The background audit writer: never-drop vs bounded delivery, checkpoints, and SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.audit.chain import AuditEntry
from provguard.audit.signing import generate_private_key, verify_signed_checkpoint
from provguard.audit.writer import DROPPED_KIND, AuditWriter
from provguard.errors import AuditError


class SlowLog:
    """A log whose appends wait for a gate: lets a test fill the queue deterministically."""

    def __init__(self, inner: SqliteAuditLog) -> None:
        self.inner = inner
        self.gate = threading.Event()

    def append_batch(
        self, items: Iterable[tuple[str, Mapping[str, object], datetime | None]]
    ) -> list[AuditEntry]:
        self.gate.wait(10)
        return self.inner.append_batch(items)

    def sign_checkpoint(self, private_key: Any) -> Any:
        return self.inner.sign_checkpoint(private_key)


def test_block_mode_never_drops(tmp_path: Path) -> None:
    log = SqliteAuditLog(tmp_path / "a.db")
    with AuditWriter(log, mode="block", capacity=8, batch_max=5) as w:
        numbers = [w.submit("decision", {"i": i}) for i in range(500)]
        assert w.flush(10)
    stats = w.stats()
    assert numbers == list(range(1, 501))
    assert (stats.committed, stats.dropped, stats.failed) == (500, 0, 0)
    assert [e.payload["i"] for e in log.entries()] == list(range(500))
    assert log.verify().ok


def test_block_mode_back_pressure_times_out(tmp_path: Path) -> None:
    slow = SlowLog(SqliteAuditLog(tmp_path / "a.db"))
    w = AuditWriter(slow, mode="block", capacity=3, batch_max=1, block_timeout=0.05).start()
    accepted = 0
    with pytest.raises(AuditError, match="back-pressure"):
        for i in range(10):
            w.submit("decision", {"i": i})
            accepted += 1
    assert 3 <= accepted <= 4  # queue bound (+1 taken by the writer thread)
    slow.gate.set()
    stats = w.close()
    assert stats.committed == accepted == slow.inner.count()


def test_drop_mode_counts_drops(tmp_path: Path) -> None:
    slow = SlowLog(SqliteAuditLog(tmp_path / "a.db"))
    w = AuditWriter(slow, mode="drop", capacity=4).start()
    results = [w.submit("decision", {"i": i}) for i in range(50)]
    slow.gate.set()
    stats = w.close()
    kept = [r for r in results if r is not None]
    assert stats.dropped == results.count(None) >= 45
    decisions = list(slow.inner.entries(kind="decision"))
    assert stats.committed == len(kept) == len(decisions)
    records = list(slow.inner.entries(kind=DROPPED_KIND))
    assert sum(int(e.payload["dropped"]) for e in records) == stats.dropped
    assert stats.drops_recorded == stats.dropped
    assert slow.inner.count() == len(kept) + len(records)
    assert slow.inner.verify().ok


def test_drops_are_recorded_in_the_chain_with_count_and_time(tmp_path: Path) -> None:
    """Two bursts of drops, each recorded by one chained entry saying how many and when."""
    slow = SlowLog(SqliteAuditLog(tmp_path / "a.db"))
    w = AuditWriter(slow, mode="drop", capacity=2, batch_max=100).start()
    t0 = datetime.now(UTC)
    first = [w.submit("decision", {"burst": 1, "i": i}) for i in range(12)]
    t1 = datetime.now(UTC)
    slow.gate.set()
    assert w.flush(10)
    deadline = time.monotonic() + 10
    while w.stats().drops_recorded < first.count(None) and time.monotonic() < deadline:
        time.sleep(0.01)
    slow.gate.clear()
    time.sleep(0.05)  # the writer is idle again; the next batch will wait at the gate
    second = [w.submit("decision", {"burst": 2, "i": i}) for i in range(30)]
    slow.gate.set()
    stats = w.close()

    dropped1, dropped2 = first.count(None), second.count(None)
    assert dropped1 >= 9 and dropped2 >= 27
    assert stats.dropped == dropped1 + dropped2 == stats.drops_recorded
    records = list(slow.inner.entries(kind=DROPPED_KIND))
    assert records[0].payload["dropped"] == dropped1
    assert sum(int(r.payload["dropped"]) for r in records) == stats.dropped
    assert records[-1].payload["dropped_total"] == stats.dropped
    r0 = records[0].payload
    first_at = datetime.fromisoformat(str(r0["first_dropped_at"]))
    last_at = datetime.fromisoformat(str(r0["last_dropped_at"]))
    slack = timedelta(milliseconds=2)  # stamps are truncated to microseconds
    assert t0 - slack <= first_at <= last_at <= t1 + slack
    assert r0["capacity"] == 2 and r0["after_submission"] >= len(first) - dropped1
    # the first record follows the first burst's kept entries and precedes the second's
    seqs = {e.seq: e for e in slow.inner.entries()}
    rec_seq = records[0].seq
    assert all(e.payload.get("burst") == 1 for s, e in seqs.items() if s < rec_seq)
    assert slow.inner.verify().ok


def test_periodic_signed_checkpoints(tmp_path: Path) -> None:
    log = SqliteAuditLog(tmp_path / "a.db")
    key = generate_private_key()
    with AuditWriter(log, signer=key, checkpoint_every=100, batch_max=50) as w:
        for i in range(250):
            w.submit("decision", {"i": i})
    stored = log.signed_checkpoints()
    counts = [c.count for c in stored]
    assert counts[-1] == 250 and len(counts) >= 2
    assert all(b - a >= 100 for a, b in zip([0, *counts[:-2]], counts[:-1], strict=True))
    for c in stored:
        assert log.verify(verify_signed_checkpoint(c, key.public_key())).ok


def test_bad_payload_fails_alone(tmp_path: Path) -> None:
    log = SqliteAuditLog(tmp_path / "a.db")
    with AuditWriter(log, batch_max=100) as w:
        w.submit("decision", {"i": 1})
        w.submit("decision", {"bad": float("nan")})
        w.submit("decision", {"i": 3})
    s = w.stats()
    assert (s.committed, s.failed) == (2, 1) and "finite" in (s.last_error or "")
    assert [e.payload["i"] for e in log.entries()] == [1, 3]


CHILD = textwrap.dedent(
    """
    import sys
    from provguard.adapters.audit_sqlite import SqliteAuditLog
    from provguard.audit.writer import DROPPED_KIND, AuditWriter
    log = SqliteAuditLog(sys.argv[1], synchronous="FULL")
    def ack(last_seq, committed):
        # one write per line: the main thread prints too, and print() is not atomic
        sys.stdout.write(f"ACK {last_seq}\\n")
        sys.stdout.flush()
    w = AuditWriter(log, mode="block", capacity=2000, batch_max=200, on_commit=ack).start()
    i = 0
    while True:
        w.submit("decision", {"i": i, "pad": "x" * 200})
        i += 1
        if i % 1000 == 0:
            sys.stdout.write(f"SUBMITTED {i}\\n")
            sys.stdout.flush()
    """
)


@pytest.mark.parametrize("kill_after_acks", [3, 40])
def test_sigkill_loses_only_unacknowledged(tmp_path: Path, kill_after_acks: int) -> None:
    db = tmp_path / "kill.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    acked = submitted = acks = 0
    deadline = time.monotonic() + 180  # generous: CI machines run other suites at once
    try:
        for line in proc.stdout:
            if line.startswith("ACK "):
                acked = int(line.split()[1])
                acks += 1
            elif line.startswith("SUBMITTED "):
                submitted = int(line.split()[1])
            if acks >= kill_after_acks or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGKILL)  # mid-write, no clean-up of any kind
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert acks >= kill_after_acks
    log = SqliteAuditLog(db, create=False)
    result = log.verify()
    assert result.ok, result.reason  # the chain never corrupts
    assert result.count >= acked  # nothing acknowledged is lost
    assert [e.payload["i"] for e in log.entries()] == list(range(result.count))  # no gaps
    assert submitted == 0 or result.count <= submitted + 1000


def test_submit_decision_builds_the_payload_in_the_writer(tmp_path: Path) -> None:
    from datetime import timedelta

    from provguard.audit.chain import normalise_payload
    from provguard.audit.records import decision_payload
    from provguard.decide import DecisionPoint, Request
    from provguard.policy import load_policy_dir

    pdp = DecisionPoint(load_policy_dir(Path(__file__).parents[2] / "policies"))
    decisions = [
        pdp.decide(
            Request(
                app="douyin",
                action="use",
                category="user.avatar",
                origins=frozenset({origin}),
                at=datetime(2019, 6, 30, tzinfo=UTC) + timedelta(seconds=i),
                purpose="social.friend_recommendation",
            )
        )
        for i, origin in enumerate(["wechat", "user_input", "qq"])
    ]
    log = SqliteAuditLog(tmp_path / "a.db")
    before = datetime.now(UTC)
    with AuditWriter(log) as w:
        numbers = [
            w.submit_decision(d, stage="test", context={"i": i}) for i, d in enumerate(decisions)
        ]
        assert w.wait(3, timeout=10)
    after = datetime.now(UTC)
    entries = list(log.entries())
    assert numbers == [1, 2, 3] and [e.kind for e in entries] == ["decision"] * 3
    for i, (entry, d) in enumerate(zip(entries, decisions, strict=True)):
        expected = normalise_payload(decision_payload(d, stage="test", context={"i": i}))
        assert entry.payload == expected
        assert before - timedelta(microseconds=1) <= entry.at <= after  # stamped at submit
    assert [e.payload["effect"] for e in entries] == ["deny", "not_applicable", "deny"]
    assert log.verify().ok


def test_concurrent_submitters_numbers_match_log_order(tmp_path: Path) -> None:
    log = SqliteAuditLog(tmp_path / "a.db", synchronous="NORMAL")
    got: dict[int, str] = {}
    lock = threading.Lock()
    w = AuditWriter(log, capacity=64, batch_max=50, interval=0.001).start()

    def worker(t: int) -> None:
        for k in range(400):
            ident = f"{t}-{k}"
            number = w.submit("decision", {"id": ident})
            assert number is not None
            with lock:
                got[number] = ident

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    stats = w.close()
    assert sorted(got) == list(range(1, 1601))
    assert (stats.accepted, stats.committed, stats.failed) == (1600, 1600, 0)
    # submission number n is log entry seq n: wait(n) acknowledges exactly that entry
    assert {e.seq: e.payload["id"] for e in log.entries()} == got
    per_thread = [
        [e.payload["id"] for e in log.entries() if e.payload["id"].startswith(f"{t}-")]
        for t in range(4)
    ]
    assert per_thread == [[f"{t}-{k}" for k in range(400)] for t in range(4)]
    assert log.verify().ok


def test_numbering_gap_holds_later_entries_and_counts_as_failed_at_close(
    tmp_path: Path,
) -> None:
    log = SqliteAuditLog(tmp_path / "a.db")
    w = AuditWriter(log, interval=0.001).start()
    assert w.submit("decision", {"i": 1}) == 1
    assert w.wait(1, timeout=10)
    # a submitter that took number 2 and never appended its entry (e.g. interrupted)
    assert next(w._numbers) == 2
    assert w.submit("decision", {"i": 3}) == 3
    assert not w.wait(3, timeout=0.2)  # held behind the gap: order is never broken
    assert log.count() == 1
    stats = w.close()
    assert (stats.accepted, stats.committed, stats.failed) == (3, 2, 1)
    assert [e.payload["i"] for e in log.entries()] == [1, 3]
    assert not w.wait(2, timeout=0) and w.wait(3, timeout=0)
    assert log.verify().ok


def test_closed_writer_refuses_submissions(tmp_path: Path) -> None:
    w = AuditWriter(SqliteAuditLog(tmp_path / "a.db")).start()
    w.close()
    with pytest.raises(AuditError, match="closed"):
        w.submit("decision", {"i": 1})
    with pytest.raises(AuditError, match="closed"):
        w.submit_decision(object(), stage="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="interval"):
        AuditWriter(SqliteAuditLog(tmp_path / "b.db"), interval=0)

"""Decision latency with the audit log off vs on (background AuditWriter, block mode).

Each decision: the real PDP (DecisionPoint over policies/, compiled engine) on a request whose
``at`` differs per call (so the memo never answers); log on: the decision is handed to the
writer with ``AuditWriter.submit_decision`` (the writer thread builds, masks, encodes, hashes
and commits batches to SQLite WAL, synchronous=NORMAL, in the background). For reference a third
arm does what callers did before: build the payload on the caller's thread and ``submit`` it.
Latency per call with time.perf_counter_ns around decide + submit; N calls per arm; the arms
are interleaved in 5 rounds, and the writer is flushed (idle) before every log-off round so
that the log-off arm never runs beside a draining writer. Prints p50/p99/mean and the ratios.

    .venv/bin/python bench/bench_audit.py [N]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.audit.records import decision_payload
from provguard.audit.writer import AuditWriter
from provguard.decide import DecisionPoint, Request
from provguard.policy import load_policy_dir

Arm = Literal["off", "on", "caller-payload"]


def run(n: int, arm: Arm, writer: AuditWriter, pdp: DecisionPoint, base: datetime) -> list[int]:
    """Latencies (ns) of ``n`` decisions (+ audit submissions, per ``arm``)."""
    out = []
    for i in range(n):
        req = Request(
            app="douyin",
            action="use",
            category="user.avatar",
            origins=frozenset({"wechat" if i % 2 else "user_input"}),
            at=base + timedelta(microseconds=i),
            purpose="social.friend_recommendation",
        )
        s = time.perf_counter_ns()
        d = pdp.decide(req)
        if arm == "on":
            writer.submit_decision(d, stage="bench", context={"i": i})
        elif arm == "caller-payload":
            writer.submit("decision", decision_payload(d, stage="bench", context={"i": i}))
        out.append(time.perf_counter_ns() - s)
    return out


def pct(xs: list[int], q: float) -> float:
    """The ``q`` quantile of ``xs`` (ns) in microseconds (nearest rank)."""
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] / 1000.0


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    policy = load_policy_dir(Path("policies"))
    arms: dict[Arm, list[int]] = {"off": [], "on": [], "caller-payload": []}
    with tempfile.TemporaryDirectory() as tmp:
        log = SqliteAuditLog(Path(tmp) / "a.db", synchronous="NORMAL")
        writer = AuditWriter(log, mode="block", capacity=50_000).start()
        for r in range(5):
            base = datetime(2019, 6, 30, tzinfo=UTC) + timedelta(days=r)
            for k, arm in enumerate(arms):
                if arm == "off":
                    writer.flush()
                at = base + timedelta(hours=k)
                arms[arm] += run(n, arm, writer, DecisionPoint(policy), at)
        stats = writer.close()
        ok = log.verify().ok
    off = arms["off"]
    print(
        f"decisions per arm: {len(off)} (5 rounds x {n}); audit committed {stats.committed}, "
        f"dropped {stats.dropped}, failed {stats.failed}, chain ok {ok}"
    )
    print(f"{'arm':<26}{'p50 us':>8}{'p99 us':>8}{'mean us':>9}{'p50 ratio':>11}{'p99 ratio':>11}")
    names = {
        "off": "log off",
        "on": "log on (submit_decision)",
        "caller-payload": "log on (payload on caller)",
    }
    for arm, xs in arms.items():
        print(
            f"{names[arm]:<26}{pct(xs, 0.5):>8.1f}{pct(xs, 0.99):>8.1f}"
            f"{statistics.fmean(xs) / 1000:>9.1f}"
            f"{pct(xs, 0.5) / pct(off, 0.5):>11.3f}{pct(xs, 0.99) / pct(off, 0.99):>11.3f}"
        )


if __name__ == "__main__":
    main()

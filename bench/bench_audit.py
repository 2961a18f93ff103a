"""Decision latency with the audit log off vs on (background AuditWriter, block mode).

Each decision: the real PDP (DecisionPoint over policies/) on a request whose ``at`` differs per
call (so the memo never answers), then -- log on -- the audit payload is built and submitted
to the writer, which commits batches to SQLite in a background thread. Latency per call with
time.perf_counter_ns; N calls per arm, arms interleaved in 5 rounds. Prints p50/p99 and ratios.

    .venv/bin/python bench/bench_audit.py [N]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.audit.records import decision_payload
from provguard.audit.writer import AuditWriter
from provguard.decide import DecisionPoint, Request
from provguard.policy import load_policy_dir


def run(n: int, writer: AuditWriter | None, pdp: DecisionPoint, base: datetime) -> list[int]:
    out = []
    t0 = base
    for i in range(n):
        req = Request(
            app="douyin",
            action="use",
            category="user.avatar",
            origins=frozenset({"wechat" if i % 2 else "user_input"}),
            at=t0 + timedelta(microseconds=i),
            purpose="social.friend_recommendation",
        )
        s = time.perf_counter_ns()
        d = pdp.decide(req)
        if writer is not None:
            writer.submit("decision", decision_payload(d, stage="bench", context={"i": i}))
        out.append(time.perf_counter_ns() - s)
    return out


def pct(xs: list[int], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] / 1000.0


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    policy = load_policy_dir(Path("policies"))
    off: list[int] = []
    on: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        log = SqliteAuditLog(Path(tmp) / "a.db", synchronous="NORMAL")
        writer = AuditWriter(log, mode="block", capacity=50_000).start()
        for r in range(5):
            base = datetime(2019, 6, 30, tzinfo=UTC) + timedelta(days=r)
            off += run(n, None, DecisionPoint(policy), base)
            on += run(n, writer, DecisionPoint(policy), base + timedelta(hours=1))
        stats = writer.close()
        ok = log.verify().ok
    print(
        f"decisions per arm: {len(off)} (5 rounds x {n}); audit committed {stats.committed}, "
        f"dropped {stats.dropped}, chain ok {ok}"
    )
    print(f"{'arm':<10}{'p50 us':>10}{'p99 us':>10}{'mean us':>10}")
    for name, xs in (("log off", off), ("log on", on)):
        print(
            f"{name:<10}{pct(xs, 0.5):>10.1f}{pct(xs, 0.99):>10.1f}"
            f"{statistics.fmean(xs) / 1000:>10.1f}"
        )
    print(
        f"ratio on/off: p50 {pct(on, 0.5) / pct(off, 0.5):.3f}, "
        f"p99 {pct(on, 0.99) / pct(off, 0.99):.3f}"
    )


if __name__ == "__main__":
    main()

"""Cost of counting this process's audit entries (session 7, G12: ``/healthz``
``written_by_this_process``).

The service's log is :class:`provguard.service.ownlog.OwnEntriesAuditLog`, a
:class:`~provguard.adapters.audit_sqlite.SqliteAuditLog` that counts what is appended through
it. This compares the two on the audit writer's two write paths, interleaved in one process
(plain, counting, plain, counting, ...), each round on a fresh SQLite file:

- ``canonical``: :meth:`append_canonical` of pre-encoded decision-sized entries (the writer's
  fast path), in batches of 512;
- ``dicts``: :meth:`append_batch` of payload dicts (the writer's dict path), in batches of 512.

Prints medians (seconds per round) and the ratio counting / plain, plus the load average.

    .venv/bin/python bench/bench_ownlog.py --entries 20000 --rounds 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.audit.chain import canonical_payload, format_at
from provguard.service.ownlog import OwnEntriesAuditLog

BATCH = 512


def _payload(i: int) -> dict[str, object]:
    return {
        "stage": "service",
        "effect": "deny" if i % 3 else "permit",
        "rules": ["no-platform-profile-in-friend-recommendation"],
        "request": {
            "app": "douyin",
            "action": "use",
            "category": "user.avatar",
            "origins": ["wechat"],
            "purpose": "social.friend_recommendation",
            "subject": {"id": i},
        },
        "context": {"client_app": "douyin", "key": "douyin-prod"},
    }


def _run(cls: type[SqliteAuditLog], path: Path, mode: str, n: int) -> float:
    log = cls(path, synchronous="NORMAL")
    at = format_at(datetime.now(UTC))
    try:
        start = time.perf_counter()
        for lo in range(0, n, BATCH):
            hi = min(n, lo + BATCH)
            if mode == "canonical":
                log.append_canonical(
                    ("decision", at, canonical_payload(_payload(i))) for i in range(lo, hi)
                )
            else:
                log.append_batch([("decision", _payload(i), None) for i in range(lo, hi)])
        elapsed = time.perf_counter() - start
        assert log.count() == n
        if isinstance(log, OwnEntriesAuditLog):
            assert log.own_writes().entries == n
        return elapsed
    finally:
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    variants: dict[str, type[SqliteAuditLog]] = {
        "plain": SqliteAuditLog,
        "counting": OwnEntriesAuditLog,
    }
    times: dict[tuple[str, str], list[float]] = {
        (m, v): [] for m in ("canonical", "dicts") for v in variants
    }
    with tempfile.TemporaryDirectory(prefix="bench-ownlog-") as tmp:
        k = 0
        for _ in range(args.rounds):
            for mode in ("canonical", "dicts"):
                for name, cls in variants.items():
                    k += 1
                    times[(mode, name)].append(_run(cls, Path(tmp) / f"{k}.db", mode, args.entries))
    load = os.getloadavg()
    print(
        f"{args.entries} entries per round, {args.rounds} rounds, interleaved; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print("| write path | plain s (median) | counting s (median) | counting / plain |")
    print("|---|---|---|---|")
    for mode in ("canonical", "dicts"):
        a = statistics.median(times[(mode, "plain")])
        b = statistics.median(times[(mode, "counting")])
        print(f"| {mode} | {a:.3f} | {b:.3f} | {b / a:.3f} |")


if __name__ == "__main__":
    main()

"""What session 6's checks add to ``provguard audit verify`` on a job output folder.

Usage::

    .venv/bin/python bench/bench_audit_verify_extras.py OUT_DIR [--rounds 7]

``OUT_DIR`` is a ``provguard run`` output folder (``control.db``, ``audit.pub``,
``checkpoint.json``, ``grants.db``); it is only read. Arms, interleaved per round in rotating
order (medians over rounds, milliseconds):

* ``chain`` -- ``assess()``: the chain re-hashed against every stored and exported checkpoint
  with signatures checked (what ``audit verify`` did before; the anchor);
* ``time order`` -- ``check_time_order(log.timestamps())``: the non-decreasing timestamps check;
* ``store cross-check`` -- ``check_store`` with the signed count (I-2's signature rule included);
* ``registry cross-check`` -- ``check_registry``: ``grants.db`` against the chain's grant events.

Prints one table (each arm's median and its ratio to ``chain``) and the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.adapters.control_sqlite import check_registry, check_store
from provguard.audit.chain import check_time_order
from provguard.audit.coverage import assess
from provguard.audit.crosscheck import VerifiedRange
from provguard.audit.signing import SignedCheckpoint, load_public_key


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    root: Path = args.out
    db = root / "control.db"
    key = load_public_key(root / "audit.pub")
    exported = SignedCheckpoint.from_json((root / "checkpoint.json").read_text())
    log = SqliteAuditLog(db, create=False)
    n = log.count()
    covered = assess(log, public_key=key, exported=exported).covered
    verified = VerifiedRange(1, n, min(covered, n))

    def chain() -> object:
        return assess(log, public_key=key, exported=exported)

    def order() -> object:
        return check_time_order(log.timestamps())

    def store() -> object:
        return check_store(db, verified=verified)

    def registry() -> object:
        return check_registry(root / "grants.db", db, verified=verified)

    arms: list[tuple[str, Callable[[], object]]] = [
        ("chain (anchor)", chain),
        ("time order", order),
        ("store cross-check", store),
        ("registry cross-check", registry),
    ]
    times: dict[str, list[float]] = {name: [] for name, _ in arms}
    for r in range(args.rounds):
        for name, fn in arms[r % len(arms) :] + arms[: r % len(arms)]:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    log.close()
    base = statistics.median(times["chain (anchor)"])
    print(f"audit verify extras on {root} ({n} entries), {args.rounds} rounds, interleaved")
    print("| arm | median ms | ratio to chain |")
    print("|---|---|---|")
    for name, _ in arms:
        m = statistics.median(times[name])
        print(f"| {name} | {m * 1000:.0f} | {m / base:.3f} |")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

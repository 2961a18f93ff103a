"""What checking the report anchor (fresh user 10, H3) adds to ``provguard report --store``.

On an output folder (default ``out/demo``, the full demo: ~92,800 audit entries), interleaved
in one process, ``--rounds`` rounds of:

* A: the whole rebuild, :func:`provguard.report.from_store.build_model_from_store` (verify the
  chain, tally, cross-check, read the registry, carry over);
* B: the anchor check alone, as a fresh reader does it once (the ``job.report`` entries read
  with one keyset query on the log, the anchored files hashed: evidence.json's report digest
  recomputed, the two Parquet files' SHA-256);
* C: the same check on a reader that already read the log (a dashboard refresh: only entries
  after the last one read).

Prints medians and the ratio B / A and C / A, and the load average. Nothing is written.

    .venv/bin/python bench/bench_report_anchor.py [FOLDER] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from provguard.audit.crosscheck import VerifiedRange
from provguard.report.anchor import check_files
from provguard.report.from_store import StoreReader, build_model_from_store


def _anchor_fresh(root: Path) -> float:
    reader = StoreReader(root)
    try:
        t0 = time.perf_counter()
        found = reader.report_entry(VerifiedRange(1, 10**12))
        check_files(root, found)
        return time.perf_counter() - t0
    finally:
        reader.close()


def _anchor_warm(reader: StoreReader) -> float:
    t0 = time.perf_counter()
    found = reader.report_entry(VerifiedRange(1, 10**12))
    check_files(reader.root, found)
    return time.perf_counter() - t0


def _rebuild(root: Path) -> float:
    t0 = time.perf_counter()
    build_model_from_store(root)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", nargs="?", default="out/demo", type=Path)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    root: Path = args.folder
    warm = StoreReader(root)
    warm.tally.refresh(warm.log)
    _anchor_warm(warm)
    a: list[float] = []
    b: list[float] = []
    c: list[float] = []
    try:
        for _ in range(args.rounds):
            a.append(_rebuild(root))
            b.append(_anchor_fresh(root))
            c.append(_anchor_warm(warm))
    finally:
        warm.close()
    ma, mb, mc = (statistics.median(x) for x in (a, b, c))
    entries = build_model_from_store(root).audit
    n = entries.entries if entries is not None else 0
    load = os.getloadavg()
    print(f"folder {root} ({n:,} audit entries), {args.rounds} rounds interleaved A B C")
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("| variant | median (ms) | ratio to A |")
    print("|---|---|---|")
    print(f"| A whole rebuild (build_model_from_store) | {ma * 1e3:.1f} | 1.000 |")
    print(f"| B anchor check, fresh reader | {mb * 1e3:.1f} | {mb / ma:.4f} |")
    print(f"| C anchor check, warm reader (refresh) | {mc * 1e3:.2f} | {mc / ma:.5f} |")


if __name__ == "__main__":
    main()

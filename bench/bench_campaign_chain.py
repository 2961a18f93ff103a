"""Cost of chaining a campaign rescan (fresh user 11, M3) against the unchained store call.

Usage::

    .venv/bin/python bench/bench_campaign_chain.py OUT_DIR [--rounds 7]

``OUT_DIR`` is a ``provguard run`` output folder; it is copied to a temporary folder, never
changed. The rescan's own scan (picture hashing, handle matching) is the same in both arms and is
left out: each arm moves the same targets from the same state (every notified target to
``changed``, then back), so only the bookkeeping differs.

Arms, interleaved per round (A, B, C, A, B, C, ...; medians over rounds, milliseconds):

* ``unchained`` -- ``SqlCampaignStore.apply_rescan`` (the anchor: what ``campaign rescan``
  wrote before: targets, events, snapshot; no audit entry);
* ``chained`` -- the same inside :func:`provguard.cli.campaign.chained_operation` (one
  ``BEGIN IMMEDIATE`` transaction with the ``campaign.rescan`` audit entry);
* ``baseline check`` -- :func:`provguard.cli.campaign.recorded_baseline` (verify the whole
  chain, find the recorded export, check its signed cover) plus the provider digest of the
  export (:func:`provguard.campaign.chained.provider_digest`): what a rescan adds before it
  scans.

Prints one table (ratios against ``unchained``) and the load average.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq

from provguard.adapters.campaign_sqlite import SqlCampaignStore
from provguard.campaign.chained import provider_digest
from provguard.cli.campaign import chained_operation, recorded_baseline


def _campaign(store: Path) -> str:
    con = sqlite3.connect(store)
    (cid,) = con.execute("SELECT campaign_id FROM campaigns").fetchone()
    con.close()
    return str(cid)


def _reset(store: Path) -> None:
    """Every target moved by the previous arm back to ``notified`` (outside the timing)."""
    con = sqlite3.connect(store)
    con.execute("UPDATE campaign_targets SET state='notified' WHERE state='changed'")
    con.commit()
    con.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-campaign-"))
    try:
        folder = work / "f"
        shutil.copytree(args.out_dir, folder)
        store = folder / "control.db"
        cid = _campaign(store)
        at = datetime(2019, 7, 1, tzinfo=UTC)
        plat = folder / "platform"

        def unchained() -> None:
            db = SqlCampaignStore(store)
            db.apply_rescan(cid, [], at, ignore_after=timedelta(days=7))
            db.engine.dispose()

        def chained() -> None:
            chained_operation(
                store,
                cid,
                "campaign.rescan",
                lambda s: {"moved": s.apply_rescan(cid, [], at, ignore_after=timedelta(days=7))},
                at=at,
            )

        def baseline() -> None:
            recorded_baseline(store, cid)
            provider_digest(
                pq.read_table(plat / "provider_profiles.parquet"),
                pq.read_table(plat / "pictures.parquet"),
            )

        arms: dict[str, Callable[[], None]] = {
            "unchained": unchained,
            "chained": chained,
            "baseline check": baseline,
        }
        con = sqlite3.connect(store)
        (targets,) = con.execute(
            "SELECT count(*) FROM campaign_targets WHERE state='notified'"
        ).fetchone()
        con.close()
        times: dict[str, list[float]] = {k: [] for k in arms}
        for _ in range(args.rounds):
            for name, fn in arms.items():
                _reset(store)
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1000)
        con = sqlite3.connect(store)
        (entries,) = con.execute("SELECT count(*) FROM audit_log").fetchone()
        con.close()
        anchor = statistics.median(times["unchained"])
        print(
            f"folder {args.out_dir}: {entries:,} audit entries at the end, {targets:,} targets moved"
        )
        print(f"{'arm':16} {'median ms':>10} {'min ms':>9} {'ratio':>7}")
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"{name:16} {med:10.1f} {min(ts):9.1f} {med / anchor:7.2f}")
        print(f"rounds {args.rounds}; load average {os.getloadavg()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

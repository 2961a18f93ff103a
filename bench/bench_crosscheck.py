"""Cost of verifying instrument events against the audit chain (``SqlControlStore.events()``).

Usage::

    .venv/bin/python bench/bench_crosscheck.py OUT_DIR [--rounds 9]

``OUT_DIR`` is a ``provguard run`` output folder (control.db, audit.pub, audit-key.pem); it is
copied to a temporary folder twice, never changed:

* ``after job``: the job's store plus one ``final_judgment`` recorded with
  :meth:`SqlControlStore.record_event` (the usual order: job, event, queries);
* ``rerun after event``: the same, then 92,000 more entries appended and a signed checkpoint
  every 20,000 (what a second ``provguard run`` leaves), so the event's entry is far from the
  head.

Arms, interleaved per round in rotating order (medians over rounds, milliseconds):

* ``raw`` -- ``raw_events()``: the table read alone (the anchor: what ``events()`` cost before);
* ``verified`` -- ``events()`` in a fresh process (the in-process proof cache cleared);
* ``cached`` -- ``events()`` again in the same process (a long-lived service);
* ``full chain`` -- ``SqliteAuditLog.verify()`` of the whole chain (the naive alternative).

Prints one table (ratios against ``raw``) and the load average.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

from provguard.adapters import control_sqlite
from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.adapters.control_sqlite import SqlControlStore
from provguard.audit.chain import format_at
from provguard.audit.folder import existing_signing_key

INJ = "cn-tj-binhai-2019-douyin-duoshan"


def _prepare(src: Path, work: Path, rerun: bool) -> Path:
    dst = work / ("rerun" if rerun else "after")
    shutil.copytree(src, dst)
    db = dst / "control.db"
    SqlControlStore(db).record_event(INJ, "final_judgment", date(2019, 5, 1))
    if rerun:
        found = existing_signing_key(dst)
        if found is None:
            raise SystemExit(f"no signing key in {src} (audit-key.pem)")
        key = found[0]
        at = format_at(datetime.now(UTC))
        payload = '{"effect":"deny","stage":"bench"}'
        with SqliteAuditLog(db) as log:
            for _ in range(4):
                log.append_canonical(("decision", at, payload) for _ in range(20_000))
                log.sign_checkpoint(key)
            log.append_canonical(("decision", at, payload) for _ in range(12_000))
            log.sign_checkpoint(key)
    return db


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-xcheck-") as tmp:
        rows = []
        for rerun in (False, True):
            db = _prepare(args.out, Path(tmp), rerun)
            store = SqlControlStore(db)
            log = SqliteAuditLog(db, create=False)

            def fresh(store: SqlControlStore = store) -> object:
                control_sqlite._VERIFIED.clear()
                return store.events()

            arms: dict[str, Callable[[], object]] = {
                "raw": store.raw_events,
                "verified": fresh,
                "cached": store.events,
                "full chain": log.verify,
            }
            store.events()  # warm the page cache and the proof cache once
            times: dict[str, list[float]] = {name: [] for name in arms}
            names = list(arms)
            for r in range(args.rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                for name in order:
                    if name == "cached":
                        store.events()  # make sure the proof is cached
                    times[name].append(_time(arms[name]))
            entries = log.count()
            log.close()
            store.engine.dispose()
            base = statistics.median(times["raw"])
            label = "rerun after event" if rerun else "after job"
            for name in names:
                med = statistics.median(times[name])
                rows.append((label, entries, name, med, med / base))
    print(f"{'store':<18} {'entries':>8} {'arm':<11} {'median ms':>10} {'x raw':>8}")
    for label, entries, name, med, ratio in rows:
        print(f"{label:<18} {entries:>8,} {name:<11} {med:>10.1f} {ratio:>8.1f}")
    load = os.getloadavg()
    print(f"rounds {args.rounds}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()

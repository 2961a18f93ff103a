"""Cost of checking derived tables against the audit log (findings I-3, ``AuditLabelsLedger``).

Usage::

    .venv/bin/python bench/bench_labels_ledger.py OUT_DIR [--rounds 9]

``OUT_DIR`` is a ``provguard run`` output folder (``data/``, ``control.db``, ``audit.pub``,
``audit-key.pem``); it is copied to a temporary folder, never changed. In the copy, one derived
table ``h`` (``CREATE TABLE h AS SELECT subject_id, handle FROM profiles`` by douyin under
``profile.display``, 4,039 rows on the demo) is made with ``provguard query``, so its entry is
the newest and covered by a signed checkpoint, as after the README's commands.

Arms, interleaved per round in rotating order (medians over rounds, milliseconds), each the
``LabelledStore.schema`` property (what every query reads once or more before it runs):

* ``sidecar only`` -- ``LabelledStore(data)``: the token and file identity in the sidecar (the
  anchor: the Python API without an audit log, and the CLI before session 6);
* ``ledger`` -- ``LabelledStore(data, ledger=AuditLabelsLedger(control.db))``, one ledger
  reused (the CLI's case: one process, several reads);
* ``ledger, fresh`` -- a new ledger and store each time (a new SQLite engine; the file hash
  still cached in the process);
* ``ledger, unattested`` -- the same store with a derived table ``x`` no entry records: the log
  is scanned to its start before the refusal (the cost of a refusal, not of a read).

Prints one table (ratios against ``sidecar only``) and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.cli.query import query_app
from provguard.dataplane import LabelledStore
from provguard.dataplane.store import AuditLabelsLedger
from provguard.sqlgen.schema import job_schema


def _ms(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_ledger_") as tmp:
        root = Path(tmp) / "out"
        shutil.copytree(args.out, root)
        data, control = root / "data", root / "control.db"
        made = CliRunner().invoke(
            query_app,
            [
                "--app",
                "douyin",
                "--purpose",
                "profile.display",
                "--store",
                str(data),
                "CREATE OR REPLACE TABLE h AS SELECT subject_id, handle FROM profiles",
            ],
        )
        assert made.exit_code == 0, made.output
        ledger = AuditLabelsLedger(control)
        with_ledger = LabelledStore(data, base=job_schema(), ledger=ledger)

        def fresh() -> object:
            one = AuditLabelsLedger(control)
            try:
                return LabelledStore(data, base=job_schema(), ledger=one).schema
            finally:
                one.close()

        # an unattested derived table, in a second copy: h's files copied as x (no entry
        # records x)
        unattested_root = Path(tmp) / "out2"
        shutil.copytree(root, unattested_root)
        x = unattested_root / "data" / "x.parquet"
        shutil.copy2(data / "h.parquet", x)
        sidecar = json.loads((data / "_labels" / "h.json").read_text(encoding="utf-8"))
        st = os.stat(x)  # the forger's step: x's own stat, so only the ledger can refuse it
        sidecar["labels_file"] = {
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns,
            "ino": st.st_ino,
        }
        (unattested_root / "data" / "_labels" / "x.json").write_text(
            json.dumps(sidecar), encoding="utf-8"
        )
        refusing = LabelledStore(
            unattested_root / "data",
            base=job_schema(),
            ledger=AuditLabelsLedger(unattested_root / "control.db"),
        )
        arms: dict[str, Callable[[], object]] = {
            "sidecar only": lambda: LabelledStore(data, base=job_schema()).schema,
            "ledger": lambda: with_ledger.schema,
            "ledger, fresh": fresh,
            "ledger, unattested": lambda: refusing.schema,
        }
        for fn in arms.values():  # warm: imports, the file hash cache, the chain proof cache
            fn()
        assert "x" in refusing.unattested and not with_ledger.unreadable
        times: dict[str, list[float]] = {name: [] for name in arms}
        names = list(arms)
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                times[name].append(_ms(arms[name]))
        ledger.close()
        with SqliteAuditLog(control) as log:
            count = log.count()
    anchor = statistics.median(times["sidecar only"])
    print(f"audit log: {count} entries; rounds: {args.rounds}; medians in ms")
    print("| arm | median ms | ratio to sidecar only |")
    print("|---|---|---|")
    for name in names:
        m = statistics.median(times[name])
        print(f"| {name} | {m:.2f} | {m / anchor:.1f}x |")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

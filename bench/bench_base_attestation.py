"""Read cost of attesting base tables against the audit log (session 8, issue 4).

Usage::

    .venv/bin/python bench/bench_base_attestation.py OUT_DIR [--rounds 9] [--table profiles]

``OUT_DIR`` is a ``provguard run`` output folder written by this version (its log ends the run
with a ``job.data`` entry); it is copied to a temporary folder, never changed.

Arms, interleaved per round in rotating order (medians over rounds, milliseconds):

* ``sha256 only`` -- SHA-256 of the table's Parquet file read from disk (hashlib, 1 MiB blocks):
  the part of the check that grows with the table;
* ``attestation, cold`` -- what one ``provguard query`` process pays: a new
  :class:`~provguard.dataplane.attest.StoreAttestation` and an empty in-process hash cache
  (file hash, ledger lookup walking the log back from its head to the newest recording entry,
  the chain walk from that entry to the next signed checkpoint, the signed-cover check);
* ``attestation, warm`` -- the same with the file hash cached (path, device, inode, size,
  mtime_ns, ctime_ns): a long-lived process reading the table again;
* ``query without check`` / ``query with check`` -- ``provguard query --app douyin --purpose
  profile.display "SELECT count(*) AS n FROM <table>"`` run in-process (CliRunner), the first
  with ``StoreAttestation.check`` replaced by a no-op (the anchor: the command before session
  8), the second as shipped; the hash cache is cleared before each. Both append and sign their
  own audit entry.

Prints one table (the query arms as a ratio to ``query without check``) and the load average.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from provguard.cli.query import JOB_WRITTEN_TABLES, query_app
from provguard.dataplane import attest
from provguard.dataplane import store as store_module


def _ms(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _hash_only(path: Path) -> None:
    _sha(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--table", default="profiles")
    parser.add_argument("--policy", type=Path, default=Path("policies"))
    args = parser.parse_args()
    table: str = args.table
    with tempfile.TemporaryDirectory(prefix="bench_base_attest_") as tmp:
        out = Path(tmp) / "out"
        shutil.copytree(args.out, out)
        data, control = out / "data", out / "control.db"
        path = data / f"{table}.parquet"
        import sqlite3

        con = sqlite3.connect(control)
        entries = con.execute("SELECT count(*) FROM audit_log").fetchone()[0]
        (job_seq,) = con.execute(
            "SELECT max(seq) FROM audit_log WHERE kind = ?", (attest.JOB_DATA_KIND,)
        ).fetchone()
        con.close()
        if job_seq is None:
            raise SystemExit(f"{args.out}: no job.data entry (written before session 8)")

        def check_cold() -> None:
            store_module._SHA_CACHE.clear()
            a = attest.StoreAttestation(data, control, base_tables=JOB_WRITTEN_TABLES)
            try:
                got = a.check([table])
            finally:
                a.close()
            assert got[table].status == "recorded", got

        def check_warm() -> None:
            a = attest.StoreAttestation(data, control, base_tables=JOB_WRITTEN_TABLES)
            try:
                a.check([table])
            finally:
                a.close()

        runner = CliRunner()
        cli = [
            *("--app", "douyin", "--purpose", "profile.display", "--store", str(data)),
            *("--policy", str(args.policy), f"SELECT count(*) AS n FROM {table}"),
        ]
        real_check = attest.StoreAttestation.check

        def query(with_check: bool) -> Callable[[], None]:
            def run() -> None:
                store_module._SHA_CACHE.clear()
                if not with_check:
                    attest.StoreAttestation.check = lambda self, tables: {}  # type: ignore[method-assign]
                try:
                    res: Any = runner.invoke(query_app, cli)
                finally:
                    attest.StoreAttestation.check = real_check  # type: ignore[method-assign]
                assert res.exit_code == 0, res.output

            return run

        arms: dict[str, Callable[[], None]] = {
            "sha256 only": lambda: _hash_only(path),
            "attestation, cold": check_cold,
            "attestation, warm": check_warm,
            "query without check": query(False),
            "query with check": query(True),
        }
        for fn in arms.values():  # warm-up: imports, SQLite pages, the OS cache
            fn()
        times: dict[str, list[float]] = {name: [] for name in arms}
        names = list(arms)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                times[name].append(_ms(arms[name]))
        med = {name: statistics.median(v) for name, v in times.items()}
        size = path.stat().st_size
        print(
            f"table {table}: {size / 1e6:.2f} MB; audit log {entries:,} entries, job.data at"
            f" #{job_seq:,}; {args.rounds} interleaved rounds"
        )
        print("| arm | median ms | min ms | ratio to query without check |")
        print("|---|---|---|---|")
        anchor = med["query without check"]
        for name in names:
            ratio = f"{med[name] / anchor:.3f}" if name.startswith("query") else "-"
            print(f"| {name} | {med[name]:.2f} | {min(times[name]):.2f} | {ratio} |")
        print(f"check's share of a query: {med['attestation, cold'] / anchor * 100:.1f} %")
        print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

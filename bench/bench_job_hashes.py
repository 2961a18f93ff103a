"""What storing the keyed hashes costs the main job, and what it saves a query.

    .venv/bin/python bench/bench_job_hashes.py [--rounds 2] [--graph data/graphs/snap-ego-facebook.txt]
                                              [--query-rounds 15]

1. **The job** (``provguard run``, what ``make demo`` runs, on the bundled ego-Facebook graph):
   ``--rounds`` rounds of the whole job without a hash key (the anchor: the job as before) and
   with ``$PROVGUARD_HASH_KEY`` set (it then stores the HMAC-SHA256 of the protected columns of
   ``profiles``, :func:`provguard.job.run.store_profile_hashes`), interleaved (no key, key, no
   key, key, ...), each in a fresh output folder. Prints the median wall time of each arm, their
   ratio, and the median time of the stored-hash step itself.
2. **A query** over the demo's ``profiles`` under the test mask policy that hashes WeChat
   handles (``tests/golden/sqlgen/policy-masks.yaml``, douyin, friend recommendation):
   ``SELECT app_id, subject_id, handle, avatar_key FROM profiles`` on the folder with stored
   hashes (the rewrite reads ``handle__hmac``) and on the same table without them (HMAC per
   cell), ``--query-rounds`` interleaved rounds, median seconds and the ratio.

The load average (``os.getloadavg``) is printed before and after: the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from provguard.adapters.data_duckdb import ParquetDataStore  # noqa: E402
from provguard.config import RunSettings  # noqa: E402
from provguard.dataplane import LabelledStore  # noqa: E402
from provguard.job.run import run_main_job  # noqa: E402
from provguard.policy import load_policy_dir  # noqa: E402
from provguard.provenance import default_registry  # noqa: E402
from provguard.sqlgen import QueryPolicy, job_schema  # noqa: E402

KEY = "bench-hash-key-0123456789abcdef"
SQL = "SELECT app_id, subject_id, handle, avatar_key FROM profiles"


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def _job(graph: Path, work: Path, keyed: bool, n: int) -> tuple[float, float | None, Path]:
    out = work / f"{'key' if keyed else 'nokey'}-{n}"
    if keyed:
        os.environ["PROVGUARD_HASH_KEY"] = KEY
    else:
        os.environ.pop("PROVGUARD_HASH_KEY", None)
    t0 = time.perf_counter()
    result = run_main_job(RunSettings(out=out, graph=graph, policy=ROOT / "policies"))
    wall = time.perf_counter() - t0
    os.environ.pop("PROVGUARD_HASH_KEY", None)
    step = result.stored_hashes.seconds if result.stored_hashes is not None else None
    return wall, step, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--query-rounds", type=int, default=15)
    ap.add_argument("--graph", type=Path, default=ROOT / "data/graphs/snap-ego-facebook.txt")
    args = ap.parse_args()
    print(f"load average before: {_load()}")
    work = Path(tempfile.mkdtemp(prefix="bench-job-hashes-"))
    try:
        plain: list[float] = []
        keyed: list[float] = []
        steps: list[float] = []
        keyed_out = work
        for n in range(args.rounds):
            for arm in (False, True):
                wall, step, out = _job(args.graph, work, arm, n)
                (keyed if arm else plain).append(wall)
                if step is not None:
                    steps.append(step)
                    keyed_out = out
                else:
                    shutil.rmtree(out, ignore_errors=True)
                print(f"  round {n + 1} {'key   ' if arm else 'no key'}: {wall:7.2f} s", flush=True)

        # the same profiles without the stored companions
        data = keyed_out / "data"
        bare = work / "bare" / "data"
        bare.mkdir(parents=True)
        table = ParquetDataStore(data).read_table("profiles")
        keep = [c for c in table.column_names if not c.endswith("__hmac")]
        ParquetDataStore(bare).write_table("profiles", table.select(keep))
        policy = QueryPolicy(
            load_policy_dir(ROOT / "tests/golden/sqlgen/policy-masks.yaml"),
            default_registry(),
            app="douyin",
            purpose="social.friend_recommendation",
            at=datetime(2019, 6, 30, tzinfo=UTC),
            hash_key=KEY,
        )
        stored_store = LabelledStore(data, base=job_schema())
        bare_store = LabelledStore(bare, base=job_schema())
        assert "__hmac" in stored_store.rewrite(SQL, policy).sql
        assert "__hmac" not in bare_store.rewrite(SQL, policy).sql
        a = stored_store.query(SQL, policy).table
        b = bare_store.query(SQL, policy).table
        assert a.equals(b), "stored and computed hashes differ"
        q_stored: list[float] = []
        q_bare: list[float] = []
        for _ in range(args.query_rounds):
            for st, acc in ((bare_store, q_bare), (stored_store, q_stored)):
                t0 = time.perf_counter()
                st.query(SQL, policy)
                acc.append(time.perf_counter() - t0)
        rows = a.num_rows
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    print()
    print("| what | anchor | variant | anchor s | variant s | ratio |")
    print("|---|---|---|---|---|---|")
    print(
        f"| `provguard run` ({len(plain)}+{len(keyed)} runs, interleaved) | no key | "
        f"$PROVGUARD_HASH_KEY | {med(plain):.2f} | {med(keyed):.2f} | "
        f"{med(keyed) / med(plain):.3f} |"
    )
    print(
        f"| `{SQL}` ({rows:,} rows, {args.query_rounds} rounds) | HMAC per cell | "
        f"stored `__hmac` | {med(q_bare):.4f} | {med(q_stored):.4f} | "
        f"{med(q_stored) / med(q_bare):.3f} |"
    )
    print()
    print(f"stored-hash step of the job (median of {len(steps)}): {med(steps):.3f} s")
    print(f"load average after: {_load()}")


if __name__ == "__main__":
    main()

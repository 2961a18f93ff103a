"""Policy-aware SQL benchmark: overhead of the rewrite in DuckDB, rewrite time, Spark vs DuckDB.

    .venv/bin/python bench/bench_query.py [--rows 10000000] [--rounds 9] [--no-spark]

Builds a labelled profile table in DuckDB (handles, avatars and their origins bitmasks with the
label mix of real exports: user_input / wechat / qq / unknown / mixed), every row collected by
the querying app (``app_id = 'douyin'``: a policy-aware query reads only its own app's rows, so
a mixed table would compare the policy on two thirds of the rows with the plain query on all of
them; here the controller filter is measured at its full cost, passing every row), stores the keyed hashes
of ``handle`` and ``avatar_key`` (``stored_hash_select``: what ``LabelledStore.store_hashes``
writes), and builds the **as loaded** copy through the product's own path: the table written as
Parquet into a ``LabelledStore``, its hashes stored (``LabelledStore.store_hashes``), then
``provguard.job.run.finish_profiles_store`` (labels normalised, the masks of every (app,
purpose) pair the policy serves stored: ``provguard.dataplane.served.store_served_masks``, what
``provguard run`` and ``provguard data load`` call by default), read back into DuckDB with the
store's own spec. It times each query (results fetched as Arrow) under these
**configurations**, interleaved round by round (plain, then every configuration, ``--rounds``
times after one warm-up each) so that load changes on a shared machine hit all alike:

==============================  ==========================================================
plain                           the query without policy
labels only                     no policy: lineage labels only, as the engine runs it
as loaded (default): SQL        the policy (test mask policy: hash / redact / nullify /
                                placeholder; the hash is the keyed HMAC) on the store as
                                ``run`` / ``data load`` write it now: stored hashes, labels
                                normalised, the served masks stored; self-contained SQL
as loaded (default): plan       the same, the execution plan the engine runs
                                (``LabelledStore.query``, ``query_frames``)
without stored masks: SQL       the store as ``--no-store-masks`` leaves it (stored keyed
                                hashes, raw labels): self-contained SQL, every label and
                                mask in DuckDB
without stored masks: plan/SQL  the execution plan with its masks kept in SQL
                                (``plan_masks=False``): constant label bits and label
                                normalisation after fetch
without stored masks: plan      the execution plan: masks too applied after fetch, in pyarrow
computed: plan                  no stored hashes: the HMAC computed in SQL per returned
                                cell, execution plan (a store without ``store_hashes``)
==============================  ==========================================================

For each (query, configuration) the table gives the median seconds, ``ratio`` (median /
plain median), ``min ratio`` (fastest run / fastest plain run) and ``cpu ratio`` (median
process CPU time, all DuckDB threads and the post-fetch step, / plain's), and ``same``: the
configuration answers exactly as the self-contained SQL without stored masks (sorted rows, values and
labels). A second table gives the rewrite time (median of 50): warm (the parsed/qualified query
memoised), cold (the parsed-query cache cleared before each call) and cold+schema (also the
registry's sqlglot schema), and the post-fetch step alone (``finish`` on the plan SQL's
result). Then the same rewrites run on Spark (``local[2]``, ``--spark-master URL``, or with
``--spark-standalone`` a loopback standalone cluster started for the run) and DuckDB over
``--spark-rows`` rows (self-contained Spark SQL) and the answers are checked identical.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from provguard.dataplane import (  # noqa: E402
    LabelledStore,
    run_duckdb,
    stored_hash_select,
    stored_mask_select,
)
from provguard.dataplane.served import StoredMasks  # noqa: E402
from provguard.job.run import finish_profiles_store  # noqa: E402
from provguard.policy import PolicySet, load_policy_dir  # noqa: E402
from provguard.provenance import default_registry  # noqa: E402
from provguard.sqlgen import (  # noqa: E402
    PROFILES,
    QueryPolicy,
    Rewritten,
    SchemaRegistry,
    default_schema,
    rewrite,
)
from provguard.sqlgen.rewrite import clear_cache  # noqa: E402

POLICY = ROOT / "tests" / "golden" / "sqlgen" / "policy-masks.yaml"
QUERIES = {
    "aggregate": "SELECT app_id, count(*) AS n, count(DISTINCT handle) AS handles,"
    " max(avatar_key) AS last_avatar FROM profiles GROUP BY app_id",
    "filter+project": "SELECT subject_id, handle, avatar_key FROM profiles"
    " WHERE subject_id % 100 = 7",
    "group by handle": "SELECT handle, count(*) AS n FROM profiles GROUP BY handle"
    " ORDER BY n DESC, handle LIMIT 100",
    "window": "SELECT subject_id, handle, count(*) OVER (PARTITION BY handle) AS c"
    " FROM profiles WHERE subject_id % 1000 = 7",
}

TABLE_SQL = """
CREATE TABLE profiles AS
SELECT 'douyin' AS app_id,
       i AS subject_id,
       'acc' || i AS account_id,
       'h' || (hash(i) % 2000000)::VARCHAR AS handle,
       ([2, 4, 8, 1, 6, 2, 4, 2])[1 + (hash(i * 7) % 8)::BIGINT]::UBIGINT AS handle_origins,
       'grt_' || i AS handle_grant,
       'av/' || (hash(i * 13) % 500000)::VARCHAR || '.jpg' AS avatar_key,
       ([2, 4, 8, 2, 4, 2, 12, 1])[1 + (hash(i * 11) % 8)::BIGINT]::UBIGINT AS avatar_origins,
       'grt_' || i AS avatar_grant,
       'grt_' || i AS grant_id,
       TIMESTAMPTZ '2018-01-01 00:00:00+00' + to_seconds(i) AS created_at
FROM range({n}) t(i)
"""


def _median_time(fn: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _interleaved(
    con: duckdb.DuckDBPyConnection,
    sqls: dict[str, str | tuple[duckdb.DuckDBPyConnection, str]],
    rounds: int,
) -> dict[str, list[float]]:
    """Seconds per run of each query (results fetched as Arrow), the queries interleaved; a
    query given as ``(connection, sql)`` runs on that connection."""
    runs = {k: v if isinstance(v, tuple) else (con, v) for k, v in sqls.items()}
    for c, q in runs.values():
        c.sql(q).to_arrow_table()  # warm
    times: dict[str, list[float]] = {k: [] for k in sqls}
    for _ in range(rounds):
        for k, (c, q) in runs.items():
            t0 = time.perf_counter()
            c.sql(q).to_arrow_table()
            times[k].append(time.perf_counter() - t0)
    return times


def _store_hashes(con: duckdb.DuckDBPyConnection, key: bytes) -> SchemaRegistry:
    """Replace ``profiles`` by itself plus stored hash companions; the registry describing it."""
    sql, spec = stored_hash_select("profiles", PROFILES, key, columns=["handle", "avatar_key"])
    con.execute(f"CREATE TABLE profiles_h AS {sql}")
    con.execute("DROP TABLE profiles")
    con.execute("ALTER TABLE profiles_h RENAME TO profiles")
    return SchemaRegistry(tables={"profiles": spec})


def _store_masks(
    con: duckdb.DuckDBPyConnection, schema: SchemaRegistry, qp: QueryPolicy
) -> SchemaRegistry:
    """Replace ``profiles`` by itself plus the stored masks of ``qp``; the registry describing
    it."""
    sql, spec, _ = stored_mask_select("profiles", schema, qp, columns=["handle", "avatar_key"])
    con.execute(f"CREATE TABLE profiles_m AS {sql}")
    con.execute("DROP TABLE profiles")
    con.execute("ALTER TABLE profiles_m RENAME TO profiles")
    return SchemaRegistry(tables={"profiles": spec})


def _as_loaded(
    con: duckdb.DuckDBPyConnection,
    folder: Path,
    policy: PolicySet,
    key: bytes,
) -> tuple[duckdb.DuckDBPyConnection, SchemaRegistry, StoredMasks]:
    """The raw ``profiles`` (no companions yet) written as Parquet into a ``LabelledStore`` at
    ``folder``, its keyed hashes of ``handle`` and ``avatar_key`` stored, then the job's own
    finishing step (:func:`provguard.job.run.finish_profiles_store`: labels normalised, the
    served masks stored). Returns a cursor whose search path is schema ``l`` holding that file's
    rows, the registry with the store's own spec of it, and what was stored."""
    ls = LabelledStore(folder)
    con.execute(f"COPY profiles TO '{ls.data.path('profiles')}' (FORMAT parquet)")
    ls.store_hashes("profiles", key, columns=["handle", "avatar_key"])
    stored = finish_profiles_store(folder, policy, AT, key)
    spec = LabelledStore(folder).schema.table("profiles")
    if not (spec.labels_normalised and spec.mask_columns()):
        raise SystemExit("the as-loaded store has no normalised labels or no stored masks")
    con.execute("CREATE SCHEMA l")
    con.execute(
        f"CREATE TABLE l.profiles AS SELECT * FROM read_parquet('{ls.data.path('profiles')}')"
    )
    cur = con.cursor()
    cur.execute("SET search_path = 'l'")
    return cur, SchemaRegistry(tables={"profiles": spec}), stored


AT = datetime(2019, 6, 1, tzinfo=UTC)


def _policy(path: Path, key: bytes) -> QueryPolicy:
    return QueryPolicy(
        load_policy_dir(path),
        default_registry(),
        app="douyin",
        purpose="social.friend_recommendation",
        at=AT,
        hash_key=key,
    )


def _configurations(
    con: duckdb.DuckDBPyConnection,
    ncon: duckdb.DuckDBPyConnection,
    sql: str,
    schemas: dict[str, SchemaRegistry],
    qp: QueryPolicy,
) -> dict[str, Callable[[], pa.Table]]:
    """The configurations of the module docstring for ``sql``: name -> a call returning the
    Arrow result."""
    default, loaded, computed = schemas["default"], schemas["loaded"], schemas["computed"]

    def sql_of(c: duckdb.DuckDBPyConnection, q: str) -> Callable[[], pa.Table]:
        return lambda: c.sql(q).to_arrow_table()

    def plan_of(c: duckdb.DuckDBPyConnection, rw: Rewritten) -> Callable[[], pa.Table]:
        # the engine's path: the plan when there is one, else the SQL itself
        return lambda: run_duckdb(c, rw)

    return {
        "plain": sql_of(con, sql),
        "labels only": plan_of(con, rewrite(sql, default, None)),
        "as loaded (default): SQL": sql_of(ncon, rewrite(sql, loaded, qp).sql),
        "as loaded (default): plan": plan_of(ncon, rewrite(sql, loaded, qp)),
        "without stored masks: SQL": sql_of(con, rewrite(sql, default, qp).sql),
        "without stored masks: plan/SQL": plan_of(con, rewrite(sql, default, qp, plan_masks=False)),
        "without stored masks: plan": plan_of(con, rewrite(sql, default, qp)),
        "computed: plan": plan_of(con, rewrite(sql, computed, qp)),
    }


def _run_interleaved(
    calls: dict[str, Callable[[], pa.Table]], rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and process-CPU seconds per run of each call, interleaved round by round after
    one warm-up each."""
    for f in calls.values():
        f()
    wall: dict[str, list[float]] = {k: [] for k in calls}
    cpu: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for k, f in calls.items():
            t0, c0 = time.perf_counter(), time.process_time()
            f()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return wall, cpu


def _rows(t: pa.Table) -> list[str]:
    return sorted(map(repr, (tuple(r.values()) for r in t.to_pylist())))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--spark-rows", type=int, default=1_000_000)
    ap.add_argument("--no-spark", action="store_true")
    ap.add_argument(
        "--spark-master",
        default="local[2]",
        help="Spark master URL for the Spark section (default local[2])",
    )
    ap.add_argument(
        "--spark-standalone",
        action="store_true",
        help="run the Spark section on a loopback standalone cluster (one master, one worker of"
        " 2 cores) started here, instead of --spark-master",
    )
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    key = b"bench-only-hash-key-0123456789"
    qp = _policy(POLICY, key)
    computed_schema = default_schema()
    con = duckdb.connect()
    t0 = time.perf_counter()
    con.execute(TABLE_SQL.format(n=args.rows))
    print(f"built {args.rows:,} labelled rows in {time.perf_counter() - t0:.1f} s")
    folder = tempfile.TemporaryDirectory(prefix="bench-query-")
    t0 = time.perf_counter()
    ncon, loaded_schema, stored = _as_loaded(con, Path(folder.name), qp.policy, key)
    print(
        f"as loaded: Parquet + stored hashes + finish_profiles_store in"
        f" {time.perf_counter() - t0:.1f} s (finishing step {stored.seconds:.1f} s:"
        f" {stored.summary()})"
    )
    t0 = time.perf_counter()
    schema = _store_hashes(con, key)
    print(f"stored keyed hashes of handle, avatar_key in {time.perf_counter() - t0:.1f} s")
    schemas = {"default": schema, "loaded": loaded_schema, "computed": computed_schema}
    load = os.getloadavg()[0]
    print(
        f"\nDuckDB {duckdb.__version__}, {args.rows:,} rows, {args.rounds} interleaved rounds,"
        f" load average {load:.1f} at start, {os.cpu_count()} cores"
    )
    print(
        f"{'query':<16} {'configuration':<30} {'median s':>9} {'ratio':>6} {'min ratio':>9}"
        f" {'cpu ratio':>9} {'same':>5}"
    )
    timings: list[tuple[str, float, float, float, float]] = []
    for name, sql in QUERIES.items():
        calls = _configurations(con, ncon, sql, schemas, qp)
        reference = _rows(con.sql(rewrite(sql, schema, qp).sql).to_arrow_table())
        bare = _rows(con.sql(rewrite(sql, schema, None).sql).to_arrow_table())
        wall, cpu = _run_interleaved(calls, args.rounds)
        p_med, p_min = statistics.median(wall["plain"]), min(wall["plain"])
        p_cpu = statistics.median(cpu["plain"])
        for conf, runs in wall.items():
            if conf == "plain":
                agrees = ""
            else:
                expected = bare if conf == "labels only" else reference
                agrees = str(_rows(calls[conf]()) == expected)
            med = statistics.median(runs)
            print(
                f"{name:<16} {conf:<30} {med:>9.4f} {med / p_med:>6.2f} {min(runs) / p_min:>9.2f}"
                f" {statistics.median(cpu[conf]) / p_cpu:>9.2f} {agrees:>5}"
            )
        rewrite_s = _median_time(lambda sql=sql: rewrite(sql, schema, qp), 50)

        def cold(sql: str = sql) -> None:
            clear_cache()
            rewrite(sql, schema, qp)

        def cold_schema(sql: str = sql) -> None:
            clear_cache(schemas=True)
            rewrite(sql, schema, qp)

        rw = rewrite(sql, schema, qp)
        assert rw.plan is not None
        fetched = con.sql(rw.plan.sql).to_arrow_table()
        finish_s = _median_time(lambda p=rw.plan, f=fetched: p.finish(f), 20)
        timings.append(
            (name, rewrite_s, _median_time(cold, 50), _median_time(cold_schema, 50), finish_s)
        )
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    folder.cleanup()
    print(
        f"\n{'query':<16} {'warm rewrite ms':>15} {'cold ms':>8} {'cold+schema ms':>15}"
        f" {'post-fetch ms':>14} {'rows out':>9}"
    )
    for name, warm, cold_s, cold_schema_s, finish_s in timings:
        rows_out = con.sql(f"SELECT count(*) FROM ({QUERIES[name]})").fetchall()[0]
        print(
            f"{name:<16} {warm * 1000:>15.2f} {cold_s * 1000:>8.2f} {cold_schema_s * 1000:>15.2f}"
            f" {finish_s * 1000:>14.2f} {rows_out[0]:>9,}"
        )
    if args.no_spark:
        return
    from contextlib import ExitStack

    from provguard.adapters.spark_engine import SparkEngine
    from provguard.adapters.spark_standalone import StandaloneCluster

    small = duckdb.connect()
    small.execute(TABLE_SQL.format(n=args.spark_rows))
    small_schema = _store_masks(small, _store_hashes(small, key), qp)
    arrow = small.sql("SELECT * FROM profiles").to_arrow_table()
    with ExitStack() as stack:
        master = args.spark_master
        if args.spark_standalone:
            cluster = stack.enter_context(StandaloneCluster(workers=1, cores=2, memory="2g"))
            master = cluster.url
        spark = stack.enter_context(SparkEngine(master))
        spark.register("profiles", arrow)
        spark.session.table("profiles").cache().count()
        print(f"\nSpark {master} vs DuckDB, {args.spark_rows:,} rows (policy-aware, median of 3)")
        print(
            f"{'query':<16} {'duckdb s':>9} {'spark s':>8} {'rows':>8} {'identical':>9}"
            f" {'spark stored-mask s':>19} {'stored-mask identical':>21}"
        )
        for name, sql in QUERIES.items():
            d_rw = rewrite(sql, schema, qp, dialect="duckdb")
            s_rw = rewrite(sql, schema, qp, dialect="spark")
            labels = [c.origins_column for c in s_rw.columns]
            d_res = small.sql(d_rw.sql).to_arrow_table()
            s_res = spark.query(s_rw.sql, labels)
            d_t = _median_time(lambda q=d_rw.sql: small.sql(q).to_arrow_table(), 3)
            s_t = _median_time(lambda q=s_rw.sql, lb=labels: spark.query(q, lb), 3)

            def rows(t: object) -> list[tuple[str, ...]]:
                return sorted(tuple(map(repr, r.values())) for r in t.to_pylist())  # type: ignore[attr-defined]

            same = rows(d_res) == rows(s_res)
            # Spark reading the stored masks (written by DuckDB) vs DuckDB's CASE
            m_rw = rewrite(sql, small_schema, qp, dialect="spark")
            m_res = spark.query(m_rw.sql, labels)
            m_t = _median_time(lambda q=m_rw.sql, lb=labels: spark.query(q, lb), 3)
            m_same = rows(d_res) == rows(m_res)
            print(
                f"{name:<16} {d_t:>9.3f} {s_t:>8.3f} {d_res.num_rows:>8} {same!s:>9}"
                f" {m_t:>19.3f} {m_same!s:>21}"
            )


if __name__ == "__main__":
    main()

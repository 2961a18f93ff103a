"""Policy-aware SQL benchmark: overhead of the rewrite in DuckDB, rewrite time, Spark vs DuckDB.

    .venv/bin/python bench/bench_query.py [--rows 10000000] [--spark-rows 1000000] [--no-spark]

Builds a labelled profile table in DuckDB (handles, avatars and their origins bitmasks with the
label mix of real exports: user_input / wechat / qq / unknown / mixed), then for each query times
the plain query and the policy-aware rewrite (test mask policy: hash / redact / nullify /
placeholder; the ``hash`` mask is the keyed HMAC-SHA256) in the same run (median of 3, results
fetched as Arrow), the labels-only rewrite (no policy: lineage labels, no masks) for reference,
and the rewrite itself (median of 50): warm (the parsed/qualified query memoised, as for a
repeated query) and cold (cache cleared before each call). Then runs the same rewrites on Spark local[2] and DuckDB over ``--spark-rows``
rows and checks the answers are identical.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from provguard.policy import load_policy_dir  # noqa: E402
from provguard.provenance import default_registry  # noqa: E402
from provguard.sqlgen import QueryPolicy, default_schema, rewrite  # noqa: E402
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
SELECT CASE WHEN i % 3 = 0 THEN 'duoshan' ELSE 'douyin' END AS app_id,
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--spark-rows", type=int, default=1_000_000)
    ap.add_argument("--no-spark", action="store_true")
    args = ap.parse_args()
    qp = QueryPolicy(
        load_policy_dir(POLICY),
        default_registry(),
        app="douyin",
        purpose="social.friend_recommendation",
        at=datetime(2019, 6, 1, tzinfo=UTC),
        hash_key=b"bench-only-hash-key-0123456789",
    )
    schema = default_schema()
    con = duckdb.connect()
    t0 = time.perf_counter()
    con.execute(TABLE_SQL.format(n=args.rows))
    print(f"built {args.rows:,} labelled rows in {time.perf_counter() - t0:.1f} s")
    print(f"\nDuckDB {duckdb.__version__}, {args.rows:,} rows (median of 3)")
    print(
        f"{'query':<16} {'plain s':>8} {'labels s':>9} {'policy s':>9} {'ratio':>6}"
        f" {'rewrite ms':>11} {'cold ms':>8}"
    )
    for name, sql in QUERIES.items():
        rw = rewrite(sql, schema, qp)
        bare = rewrite(sql, schema, None)
        rewrite_s = _median_time(lambda sql=sql: rewrite(sql, schema, qp), 50)

        def cold(sql: str = sql) -> None:
            clear_cache()
            rewrite(sql, schema, qp)

        cold_s = _median_time(cold, 50)
        con.sql(sql).to_arrow_table()  # warm
        plain = _median_time(lambda sql=sql: con.sql(sql).to_arrow_table(), 3)
        labels = _median_time(lambda b=bare: con.sql(b.sql).to_arrow_table(), 3)
        policy = _median_time(lambda rw=rw: con.sql(rw.sql).to_arrow_table(), 3)
        print(
            f"{name:<16} {plain:>8.3f} {labels:>9.3f} {policy:>9.3f} {policy / plain:>6.2f}"
            f" {rewrite_s * 1000:>11.2f} {cold_s * 1000:>8.2f}"
        )
    if args.no_spark:
        return
    from provguard.adapters.spark_engine import SparkEngine

    small = duckdb.connect()
    small.execute(TABLE_SQL.format(n=args.spark_rows))
    arrow = small.sql("SELECT * FROM profiles").to_arrow_table()
    with SparkEngine() as spark:
        spark.register("profiles", arrow)
        spark.session.table("profiles").cache().count()
        print(f"\nSpark local[2] vs DuckDB, {args.spark_rows:,} rows (policy-aware, median of 3)")
        print(f"{'query':<16} {'duckdb s':>9} {'spark s':>8} {'rows':>8} {'identical':>9}")
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
            print(f"{name:<16} {d_t:>9.3f} {s_t:>8.3f} {d_res.num_rows:>8} {same!s:>9}")


if __name__ == "__main__":
    main()

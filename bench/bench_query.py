"""Policy-aware SQL benchmark: overhead of the rewrite in DuckDB, rewrite time, Spark vs DuckDB.

    .venv/bin/python bench/bench_query.py [--rows 10000000] [--spark-rows 1000000] [--no-spark]

Builds a labelled profile table in DuckDB (handles, avatars and their origins bitmasks with the
label mix of real exports: user_input / wechat / qq / unknown / mixed), then for each query times
the plain query and the policy-aware rewrite (test mask policy: hash / redact / nullify /
placeholder; the ``hash`` mask is the keyed HMAC-SHA256) in the same run, results fetched as
Arrow, the labels-only rewrite (no policy: lineage labels, no masks) and the policy with its
``hash`` mask swapped for ``redact`` (``nohash``: what the HMAC costs) for the decomposition, and
the rewrite itself (median of 50): warm (the parsed/qualified query memoised, as for a repeated
query) and cold (the parsed-query cache cleared before each call: a new query text against a
registry already in use; ``cold+schema ms`` also rebuilds the registry's sqlglot schema). The engine timings are interleaved (``--rounds``
rounds of plain, labels, nohash, policy, after one warm-up each) so that load changes on a shared
machine hit all variants alike; the table gives medians and the ratio of the medians, and the
``min ratio`` of the fastest runs. Then runs the same rewrites on Spark local[2] and DuckDB over
``--spark-rows`` rows and checks the answers are identical.

The table is labelled as a store is after ``LabelledStore.store_hashes``: the keyed hash of
``handle`` and ``avatar_key`` computed once (``provguard.dataplane.stored_hash_select``, time
printed) into ``<col>__hmac`` companions, recorded in the table spec with the key's fingerprint.
``policy s`` reads the stored hash; ``computed s`` is the same policy on the spec without stored
hashes (HMAC computed per returned cell, as in round 3).

Then the masks of the bench's policy are stored too (``LabelledStore.store_masks``' SQL,
``provguard.dataplane.stored_mask_select``, time printed): a ``<col>__mask_<fp12>`` companion per
masked column holding the rewrite's own masked value, recorded in the spec with the verdict's
fingerprint; ``stored-mask s`` is the policy-aware query reading them (no masking ``CASE``, no
stored hash), interleaved with the other variants, and ``same`` checks that it answers exactly
as the computing rewrite.

``--probe`` adds a decomposition of the filter+project query (same rows, interleaved): the plain
query with the two stored label columns returned raw (``raw labels``) and the policy's masks
applied by pyarrow on the compact result of that query (``2-stage arrow``, hash branch replaced
by a constant: a floor for moving the masks out of DuckDB's sparse chunks), the stored masks
(``stored mask``) and the stored masks over labels normalised at load (``norm labels+stored
mask``: ``LabelledStore.normalise_labels`` rewrites 0/NULL labels as ``unknown`` so the rewrite
drops ``COALESCE(NULLIF(x, 0), 1)``; ``norm+mask`` in the main table).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from provguard.dataplane import (  # noqa: E402
    normalised_labels_select,
    stored_hash_select,
    stored_mask_select,
)
from provguard.policy import load_policy_dir  # noqa: E402
from provguard.provenance import default_registry  # noqa: E402
from provguard.sqlgen import (  # noqa: E402
    PROFILES,
    QueryPolicy,
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


def _store_normalised(
    con: duckdb.DuckDBPyConnection, schema: SchemaRegistry, qp: QueryPolicy
) -> tuple[duckdb.DuckDBPyConnection, SchemaRegistry]:
    """A copy of ``profiles`` in schema ``n`` with its labels normalised at load
    (``LabelledStore.normalise_labels``' SQL) and then the masks of ``qp`` stored over them; a
    cursor whose search path is ``n`` and the registry describing that table."""
    sql, spec = normalised_labels_select("profiles", schema.table("profiles"), 1)
    con.execute("CREATE SCHEMA n")
    con.execute(f"CREATE TABLE n.profiles AS {sql}")
    cur = con.cursor()
    cur.execute("SET search_path = 'n'")
    normalised = SchemaRegistry(tables={"profiles": spec})
    return cur, _store_masks(cur, normalised, qp)


def _policy(path: Path, key: bytes) -> QueryPolicy:
    return QueryPolicy(
        load_policy_dir(path),
        default_registry(),
        app="douyin",
        purpose="social.friend_recommendation",
        at=datetime(2019, 6, 1, tzinfo=UTC),
        hash_key=key,
    )


def _probe(
    con: duckdb.DuckDBPyConnection,
    qp: QueryPolicy,
    rounds: int,
    stored: SchemaRegistry,
    masked: SchemaRegistry,
    normalised: tuple[duckdb.DuckDBPyConnection, SchemaRegistry],
) -> None:
    """Variants of filter+project, interleaved; each checked equal to the policy's answer.

    Besides wall time, the process CPU time (all DuckDB threads) is recorded: on a shared machine
    it is the steadier of the two. The ``compacted`` variants test DuckDB's chunk compaction: a
    selective filter pushed into the scan leaves ~20-row chunks, and every masking expression pays
    its per-chunk cost ~4,900 times; a 1-row ``CROSS JOIN`` is a caching operator that glues small
    chunks back into full ones, but only when the result need not keep insertion order
    (``preserve_insertion_order=false``; a query without ORDER BY promises no order).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    schema = default_schema()
    sql = QUERIES["filter+project"]
    where = sql[sql.index(" WHERE ") :]
    policy = rewrite(sql, schema, qp).sql
    raw = "SELECT subject_id, handle, avatar_key, handle_origins, avatar_origins FROM profiles"
    raw += where
    u64 = pa.uint64()

    def two_stage() -> pa.Table:
        t = con.sql(raw).to_arrow_table().combine_chunks()

        def label(c: str) -> pa.Array:
            v = t[c]
            unknown = pc.fill_null(pc.equal(v, pa.scalar(0, u64)), True)
            return pc.bit_wise_or(pc.if_else(unknown, pa.scalar(1, u64), v), pa.scalar(192, u64))

        def hit(lb: pa.Array, m: int) -> pa.Array:
            return pc.not_equal(pc.bit_wise_and(lb, pa.scalar(m, u64)), pa.scalar(0, u64))

        h_o, a_o = label("handle_origins"), label("avatar_origins")
        h = t["handle"]
        redact = pc.binary_join_element_wise(pc.utf8_slice_codeunits(h, 0, 1), "***", "")
        hv = pc.case_when(
            pc.make_struct(hit(h_o, 1), hit(h_o, 8), hit(h_o, 4)), "[withheld]", redact, "#", h
        )
        av = pc.case_when(
            pc.make_struct(hit(a_o, 12), hit(a_o, 1)),
            pa.scalar(None, pa.string()),
            "[withheld]",
            t["avatar_key"],
        )
        s_o = pa.array([192] * len(t), u64)
        return pa.table(
            [t["subject_id"], hv, av, s_o, h_o, a_o], names=["s", "h", "a", "so", "ho", "ao"]
        )

    stored_policy = rewrite(sql, stored, qp).sql
    one = " CROSS JOIN (SELECT 1 AS _one) AS _pg_one WHERE "
    compacted = stored_policy.replace(
        " FROM profiles AS profiles WHERE ", " FROM profiles AS profiles" + one
    )
    assert compacted != stored_policy
    no_fetch = compacted.replace("profiles.handle__hmac AS _pg_hash1", "'#' AS _pg_hash1")
    assert no_fetch != compacted

    def unordered(q: str) -> pa.Table:
        con.execute("SET preserve_insertion_order = false")
        try:
            return con.sql(q).to_arrow_table()
        finally:
            con.execute("RESET preserve_insertion_order")

    expected = con.sql(stored_policy).to_arrow_table().sort_by("subject_id")
    assert unordered(compacted).sort_by("subject_id").equals(expected)
    # stored masks; and labels normalised at load with the masks stored over them
    stored_mask = rewrite(sql, masked, qp).sql
    assert "_pg_mask" in stored_mask and "CASE" not in stored_mask
    assert con.sql(stored_mask).to_arrow_table().sort_by("subject_id").equals(expected)
    ncon, norm_schema = normalised
    norm_mask = rewrite(sql, norm_schema, qp).sql
    assert "_pg_mask" in norm_mask and "NULLIF" not in norm_mask
    assert ncon.sql(norm_mask).to_arrow_table().sort_by("subject_id").equals(expected)
    variants: dict[str, Callable[[], object]] = {
        "plain": lambda: con.sql(sql).to_arrow_table(),
        "raw labels": lambda: con.sql(raw).to_arrow_table(),
        "computed policy": lambda: con.sql(policy).to_arrow_table(),
        "stored policy": lambda: con.sql(stored_policy).to_arrow_table(),
        "2-stage arrow": two_stage,
        "plain unordered": lambda: unordered(sql),
        "compacted": lambda: unordered(compacted),
        "compacted no hash fetch": lambda: unordered(no_fetch),
        "stored mask": lambda: con.sql(stored_mask).to_arrow_table(),
        "norm labels+stored mask": lambda: ncon.sql(norm_mask).to_arrow_table(),
    }
    for f in variants.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for k, f in variants.items():
            t0, c0 = time.perf_counter(), time.process_time()
            f()
            times[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    plain = statistics.median(times["plain"])
    plain_cpu = statistics.median(cpu["plain"])
    print(
        f"\nfilter+project decomposition, {rounds} interleaved rounds,"
        f" load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'variant':<24} {'median s':>9} {'ratio':>6} {'min ratio':>9} {'cpu ratio':>9}")
    for k, v in times.items():
        print(
            f"{k:<24} {statistics.median(v):>9.4f} {statistics.median(v) / plain:>6.2f}"
            f" {min(v) / min(times['plain']):>9.2f}"
            f" {statistics.median(cpu[k]) / plain_cpu:>9.2f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--spark-rows", type=int, default=1_000_000)
    ap.add_argument("--no-spark", action="store_true")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--probe", action="store_true", help="decompose filter+project (see above)")
    args = ap.parse_args()
    key = b"bench-only-hash-key-0123456789"
    qp = _policy(POLICY, key)
    with tempfile.TemporaryDirectory() as tmp:
        nohash_yaml = Path(tmp) / "policy-nohash.yaml"
        text = POLICY.read_text(encoding="utf-8")
        assert "strategy: hash" in text
        nohash_yaml.write_text(text.replace("strategy: hash", "strategy: redact"), encoding="utf-8")
        qp_nohash = _policy(nohash_yaml, key)
    computed_schema = default_schema()
    con = duckdb.connect()
    t0 = time.perf_counter()
    con.execute(TABLE_SQL.format(n=args.rows))
    print(f"built {args.rows:,} labelled rows in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    schema = _store_hashes(con, key)
    print(f"stored keyed hashes of handle, avatar_key in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    masked_schema = _store_masks(con, schema, qp)
    print(f"stored the policy's masks of handle, avatar_key in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    ncon, norm_schema = _store_normalised(con, masked_schema, qp)
    print(
        "copy with labels normalised at load, then its masks stored, in"
        f" {time.perf_counter() - t0:.1f} s"
    )
    load = os.getloadavg()[0]
    print(
        f"\nDuckDB {duckdb.__version__}, {args.rows:,} rows, {args.rounds} interleaved rounds,"
        f" load average {load:.1f} at start"
    )
    print(
        f"{'query':<16} {'plain s':>8} {'labels s':>9} {'nohash s':>9} {'computed s':>10}"
        f" {'policy s':>9} {'ratio':>6} {'min ratio':>9} {'computed ratio':>14}"
        f" {'warm ms':>11} {'cold ms':>8} {'cold+schema ms':>15} {'same':>5}"
        f" {'stored-mask s':>13} {'stored-mask ratio':>17}"
        f" {'norm+mask s':>11} {'norm+mask ratio':>15}"
    )
    for name, sql in QUERIES.items():
        rw = rewrite(sql, schema, qp)
        bare = rewrite(sql, schema, None)
        nohash = rewrite(sql, schema, qp_nohash)
        computed = rewrite(sql, computed_schema, qp)
        with_masks = rewrite(sql, masked_schema, qp)
        with_norm = rewrite(sql, norm_schema, qp)
        rewrite_s = _median_time(lambda sql=sql: rewrite(sql, schema, qp), 50)

        def cold(sql: str = sql) -> None:
            clear_cache()
            rewrite(sql, schema, qp)

        cold_s = _median_time(cold, 50)

        def cold_schema(sql: str = sql) -> None:
            clear_cache(schemas=True)
            rewrite(sql, schema, qp)

        cold_schema_s = _median_time(cold_schema, 50)
        times = _interleaved(
            con,
            {
                "plain": sql,
                "labels": bare.sql,
                "nohash": nohash.sql,
                "computed": computed.sql,
                "policy": rw.sql,
                "stored-mask": with_masks.sql,
                "norm+mask": (ncon, with_norm.sql),
            },
            args.rounds,
        )
        # the stored-hash and stored-mask rewrites answer exactly as the computing one
        reference = sorted(map(repr, con.sql(computed.sql).fetchall()))
        same = sorted(map(repr, con.sql(rw.sql).fetchall())) == reference
        same = same and sorted(map(repr, con.sql(with_masks.sql).fetchall())) == reference
        same = same and sorted(map(repr, ncon.sql(with_norm.sql).fetchall())) == reference
        med = {k: statistics.median(v) for k, v in times.items()}
        low = {k: min(v) for k, v in times.items()}
        print(
            f"{name:<16} {med['plain']:>8.3f} {med['labels']:>9.3f} {med['nohash']:>9.3f}"
            f" {med['computed']:>10.3f} {med['policy']:>9.3f} {med['policy'] / med['plain']:>6.2f}"
            f" {low['policy'] / low['plain']:>9.2f} {med['computed'] / med['plain']:>14.2f}"
            f" {rewrite_s * 1000:>11.2f} {cold_s * 1000:>8.2f}"
            f" {cold_schema_s * 1000:>15.2f} {same!s:>5}"
            f" {med['stored-mask']:>13.3f} {med['stored-mask'] / med['plain']:>17.2f}"
            f" {med['norm+mask']:>11.3f} {med['norm+mask'] / med['plain']:>15.2f}"
        )
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    if args.probe:
        _probe(con, qp, args.rounds, schema, masked_schema, (ncon, norm_schema))
    if args.no_spark:
        return
    from provguard.adapters.spark_engine import SparkEngine

    small = duckdb.connect()
    small.execute(TABLE_SQL.format(n=args.spark_rows))
    small_schema = _store_masks(small, _store_hashes(small, key), qp)
    arrow = small.sql("SELECT * FROM profiles").to_arrow_table()
    with SparkEngine() as spark:
        spark.register("profiles", arrow)
        spark.session.table("profiles").cache().count()
        print(f"\nSpark local[2] vs DuckDB, {args.spark_rows:,} rows (policy-aware, median of 3)")
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

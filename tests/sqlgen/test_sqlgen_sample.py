"""A sample is drawn from the rows the policy lets the query read (fresh user 11, issue 4).

``--app douyin "SELECT subject_id FROM profiles USING SAMPLE 5 ROWS"`` returned 4 rows: the
sample was drawn from both apps' rows, then the controller filter (``app_id = 'douyin'``, in the
scope's ``WHERE``) removed Duoshan's. The rewrite now samples the filtered scan (controller
isolation, row rule): DuckDB for both forms (``t TABLESAMPLE``, ``USING SAMPLE``), Spark for a
sample of one relation, PostgreSQL refuses (it samples base tables only, never a filtered
derived table).

Checked on tables of two apps with distinct subject ids (Douyin even, Duoshan odd): a ``ROWS``
sample has exactly the asked count (or every Douyin row when fewer), every returned row is
Douyin's, and a seeded sample equals DuckDB's same sample over Douyin's rows alone.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from provguard.dataplane import query_frames
from provguard.errors import StoreError
from provguard.provenance import default_registry
from provguard.sqlgen import QueryError, QueryPolicy, SchemaRegistry, default_schema, rewrite
from provguard.sqlgen.schema import PROFILES, RowSpec, TableSpec

from .conftest import LABELS, make_profiles, own_rows

REG = default_registry()
WECHAT, QQ = REG.mask(["wechat"]), REG.mask(["qq"])
#: Douyin has 30 rows (even subjects), Duoshan 30 (odd subjects), interleaved
DOUYIN_ROWS = 30


def _two_apps(n: int = 2 * DOUYIN_ROWS) -> pa.Table:
    rows = [
        (i, "douyin" if i % 2 == 0 else "duoshan", i % 7, LABELS[i % len(LABELS)], i % 5, 0)
        for i in range(n)
    ]
    return make_profiles(rows)


def _subjects(table: pa.Table) -> list[int]:
    return sorted(table.column("subject_id").to_pylist())


def _plain(sql: str, frames: dict[str, pa.Table]) -> list[int]:
    """Subjects of ``sql`` run as written by DuckDB over ``frames`` (no policy, no rewrite)."""
    con = duckdb.connect()
    try:
        for name, table in frames.items():
            con.register(name, table)
        return sorted(r[0] for r in con.execute(sql).fetchall())
    finally:
        con.close()


ROWS_FORMS = [
    "SELECT subject_id, app_id FROM profiles USING SAMPLE {n} ROWS",
    "SELECT subject_id, app_id FROM profiles TABLESAMPLE {n} ROWS",
    "SELECT p.subject_id, p.app_id FROM profiles AS p USING SAMPLE reservoir({n} ROWS)"
    " REPEATABLE (7)",
    "SELECT p.subject_id, p.app_id FROM profiles p TABLESAMPLE reservoir({n} ROWS) REPEATABLE (7)",
    "WITH s AS (SELECT subject_id, app_id FROM profiles USING SAMPLE {n} ROWS) SELECT * FROM s",
    "SELECT d.subject_id, d.app_id FROM (SELECT * FROM profiles TABLESAMPLE {n} ROWS) AS d",
    # a sample of a CTE or derived table reads rows its own (filtered) scan already returned
    "WITH s AS (SELECT subject_id, app_id FROM profiles) SELECT * FROM s USING SAMPLE {n} ROWS",
    "SELECT d.subject_id, d.app_id FROM (SELECT * FROM profiles) AS d TABLESAMPLE {n} ROWS",
]


@pytest.mark.parametrize("form", ROWS_FORMS)
@pytest.mark.parametrize("n", [1, 5, 29, 45])
def test_a_rows_sample_has_the_count_of_the_apps_rows(
    form: str, n: int, qpolicy: QueryPolicy
) -> None:
    table = _two_apps()
    res = query_frames({"profiles": table}, form.format(n=n), default_schema(), qpolicy).table
    assert res.num_rows == min(n, DOUYIN_ROWS)
    assert set(res.column("app_id").to_pylist()) == {"douyin"}
    assert all(s % 2 == 0 for s in res.column("subject_id").to_pylist())


PERCENT_FORMS = [
    "SELECT subject_id FROM profiles USING SAMPLE 40 PERCENT (bernoulli, 11)",
    "SELECT subject_id FROM profiles TABLESAMPLE 40 PERCENT (bernoulli, 11)",
    "SELECT p.subject_id FROM profiles AS p TABLESAMPLE bernoulli(60 PERCENT) REPEATABLE (3)",
    "SELECT subject_id FROM profiles USING SAMPLE 25 ROWS (reservoir, 5)",
]


@pytest.mark.parametrize("sql", PERCENT_FORMS)
def test_a_seeded_sample_is_the_plain_sample_of_the_apps_rows(
    sql: str, qpolicy: QueryPolicy
) -> None:
    table = _two_apps(400)
    got = _subjects(query_frames({"profiles": table}, sql, default_schema(), qpolicy).table)
    assert got and all(s % 2 == 0 for s in got)
    assert got == _plain(sql, {"profiles": own_rows(table)})
    # the rows drawn before the fix: the same sample over both apps, Duoshan's then dropped
    both = _plain(sql, {"profiles": table})
    assert [s for s in both if s % 2 == 0] != got


def test_masked_values_and_labels_of_sampled_rows_are_those_of_the_full_query(
    qpolicy: QueryPolicy,
) -> None:
    table = _two_apps()
    sql = "SELECT subject_id, handle, avatar_key FROM profiles"
    full = query_frames({"profiles": table}, sql, default_schema(), qpolicy).table.to_pylist()
    by_subject = {r["subject_id"]: r for r in full}
    sampled = query_frames(
        {"profiles": table}, sql + " USING SAMPLE 12 ROWS", default_schema(), qpolicy
    ).table.to_pylist()
    assert len(sampled) == 12
    assert all(r == by_subject[r["subject_id"]] for r in sampled)
    assert any(r["handle"] != table.column("handle")[r["subject_id"]].as_py() for r in sampled)


def test_a_sample_over_a_join_reads_filtered_scans(qpolicy: QueryPolicy) -> None:
    table = _two_apps()
    sql = (
        "SELECT a.subject_id, b.app_id FROM profiles a JOIN profiles b"
        " ON b.subject_id = a.subject_id + 2 USING SAMPLE 9 ROWS"
    )
    res = query_frames({"profiles": table}, sql, default_schema(), qpolicy).table
    assert res.num_rows == 9
    assert set(res.column("app_id").to_pylist()) == {"douyin"}
    assert all(s % 2 == 0 for s in res.column("subject_id").to_pylist())


#: ``profiles`` with a row rule: the mask policy denies user.social.friend_list for WeChat and
#: QQ under social.friend_recommendation, so rows whose ``row_origins`` hold either are dropped
ROW_RULE = SchemaRegistry(
    tables={
        "profiles": TableSpec(
            columns=PROFILES.columns,
            controller_column="app_id",
            rows=RowSpec(category="user.social.friend_list", origins_column="row_origins"),
        )
    }
)


def _with_row_origins(table: pa.Table) -> pa.Table:
    """``table`` plus ``row_origins``: WeChat on every third subject, QQ on every fifth."""
    bits = [
        WECHAT if s % 3 == 0 else QQ if s % 5 == 0 else 0
        for s in table.column("subject_id").to_pylist()
    ]
    return table.append_column("row_origins", pa.array(bits, pa.uint64()))


def _kept(table: pa.Table) -> pa.Table:
    """Douyin's rows the row rule keeps, in table order."""
    rows = own_rows(table).to_pylist()
    return pa.Table.from_pylist([r for r in rows if r["row_origins"] == 0], schema=table.schema)


def test_a_sample_is_drawn_after_the_row_rule(qpolicy: QueryPolicy) -> None:
    table = _with_row_origins(_two_apps(400))
    kept = _kept(table)
    assert 0 < kept.num_rows < own_rows(table).num_rows
    allowed = set(kept.column("subject_id").to_pylist())
    for n in (7, 40):
        sql = f"SELECT subject_id FROM profiles USING SAMPLE {n} ROWS"
        got = _subjects(query_frames({"profiles": table}, sql, ROW_RULE, qpolicy).table)
        assert len(got) == n and set(got) <= allowed
    sql = "SELECT subject_id FROM profiles TABLESAMPLE 50 PERCENT (bernoulli, 21)"
    got = _subjects(query_frames({"profiles": table}, sql, ROW_RULE, qpolicy).table)
    assert got and set(got) <= allowed
    assert got == _plain(sql, {"profiles": kept})


def test_spark_samples_the_filtered_relation_or_refuses(qpolicy: QueryPolicy, spark: Any) -> None:
    table = _two_apps()
    spark.register("profiles", table)
    for sql in (
        "SELECT subject_id, app_id FROM profiles TABLESAMPLE 5 ROWS",
        "SELECT p.subject_id, p.app_id FROM profiles p USING SAMPLE 5 ROWS",
    ):
        r = rewrite(sql, default_schema(), qpolicy, dialect="spark")
        assert "TABLESAMPLE (5 ROWS) AS" in r.query_sql  # on the filtered derived table
        got = spark.query(r.query_sql, list(r.label_columns))
        assert got.num_rows == 5, sql
        assert set(got.column("app_id").to_pylist()) == {"douyin"}
    r = rewrite(
        "SELECT subject_id, app_id FROM profiles TABLESAMPLE 50 PERCENT",
        default_schema(),
        qpolicy,
        dialect="spark",
    )
    got = spark.query(r.query_sql, list(r.label_columns))
    assert got.num_rows <= DOUYIN_ROWS
    assert set(got.column("app_id").to_pylist()) <= {"douyin"}
    # the plain Spark SQL samples before the filter: Douyin gets fewer than 5 rows
    con = spark.query(
        "SELECT count(*) AS n FROM profiles TABLESAMPLE (5 ROWS) WHERE app_id = 'douyin'"
    )
    assert con.column("n").to_pylist()[0] < 5


@pytest.mark.parametrize(
    ("sql", "words"),
    [
        ("SELECT subject_id FROM profiles TABLESAMPLE 10 PERCENT (bernoulli, 4)", "with a seed"),
        ("SELECT subject_id FROM profiles USING SAMPLE 5 ROWS REPEATABLE (4)", "with a seed"),
        (
            "SELECT a.subject_id FROM profiles a JOIN profiles b ON a.subject_id = b.subject_id"
            " USING SAMPLE 5 ROWS",
            "over a join",
        ),
    ],
)
def test_spark_refuses_what_it_cannot_sample_after_the_filter(
    sql: str, words: str, qpolicy: QueryPolicy
) -> None:
    with pytest.raises(QueryError, match=words) as info:
        rewrite(sql, default_schema(), qpolicy, dialect="spark")
    assert type(info.value) is QueryError and info.value.code == "PG160"
    assert "cannot be drawn after its row filters in Spark SQL" in str(info.value)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT subject_id FROM profiles TABLESAMPLE 10 PERCENT (bernoulli, 4)",
        "SELECT subject_id FROM profiles USING SAMPLE 5 ROWS",
        "SELECT x.s FROM (SELECT p.subject_id AS s FROM profiles p TABLESAMPLE 5 ROWS) AS x",
    ],
)
def test_postgres_refuses_a_sample_of_a_filtered_scan(sql: str, qpolicy: QueryPolicy) -> None:
    with pytest.raises(QueryError, match="in PostgreSQL, which samples base tables only") as info:
        rewrite(sql, default_schema(), qpolicy, dialect="postgres")
    assert type(info.value) is QueryError and info.value.code == "PG160"
    # without a policy nothing is filtered: the sample stays on the table
    assert "TABLESAMPLE" in rewrite(sql, default_schema(), None, dialect="postgres").query_sql


@pytest.fixture()
def pg() -> Iterator[Any]:
    url = os.environ.get("PROVGUARD_TEST_PG_URL")
    if not url:
        pytest.skip("PROVGUARD_TEST_PG_URL is not set")
    from provguard.adapters.data_postgres import PostgresEngine

    engine = PostgresEngine(url, schema=f"sample_{uuid.uuid4().hex[:12]}")
    yield engine
    engine.drop_schema()
    engine.close()


def test_postgres_samples_base_tables_only(pg: Any) -> None:
    """Why PostgreSQL is refused: the form that samples after the filter is a syntax error."""
    pg.register("profiles", _two_apps())
    whole = pg.query("SELECT count(*) AS n FROM profiles TABLESAMPLE BERNOULLI (100)")
    assert whole.column("n").to_pylist() == [2 * DOUYIN_ROWS]
    with pytest.raises(StoreError, match="syntax error"):
        pg.query(
            "SELECT count(*) AS n FROM (SELECT * FROM profiles WHERE app_id = 'douyin') AS p"
            " TABLESAMPLE BERNOULLI (100)"
        )

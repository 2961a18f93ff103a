"""Every statement other than a query or ``CREATE TABLE ... AS`` is refused by name (PG160).

Fresh user 11 (issue 4): ``CREATE MACRO m(x) AS x`` was refused with a PG161 about ``x`` (the
reference check saw the macro's parameter as an unbound value), ``CHECKPOINT`` as "not COLUMN"
(sqlglot parses it as a column), ``EXPORT DATABASE`` as a sqlglot parse error, and ``SELECT ...
FOR UPDATE`` ran with sqlglot's warning printed once per generation. The list below is checked
against DuckDB's own parser (``duckdb.extract_statements``): each is a statement DuckDB accepts,
of a type other than a query, so the refusals are not of strings no one could run.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provguard.sqlgen import LineageError, QueryError, QueryPolicy, default_schema, rewrite
from provguard.sqlgen.statement import (
    NOT_ALLOWED,
    UnsupportedStatement,
    describe_statement,
    refuse_statement,
    statement_name,
)

#: (statement, the name it is refused by); each one DuckDB 2.x parses
REFUSED = [
    ("CREATE MACRO m(x) AS x", "CREATE MACRO"),
    ("CREATE OR REPLACE TEMP MACRO m(x) AS TABLE SELECT x", "CREATE MACRO"),
    ("CREATE FUNCTION f(x) AS x + 1", "CREATE FUNCTION"),
    ("CREATE VIEW v AS SELECT subject_id FROM profiles", "CREATE VIEW"),
    ("CREATE OR REPLACE VIEW v AS SELECT handle FROM profiles", "CREATE VIEW"),
    ("CREATE TYPE mood AS ENUM ('a', 'b')", "CREATE TYPE"),
    ("CREATE SEQUENCE s START 1", "CREATE SEQUENCE"),
    ("CREATE INDEX i ON profiles (handle)", "CREATE INDEX"),
    ("CREATE UNIQUE INDEX i ON profiles (handle)", "CREATE INDEX"),
    ("CREATE SCHEMA s", "CREATE SCHEMA"),
    ("CREATE SECRET (TYPE S3, KEY_ID 'a', SECRET 'b')", "CREATE SECRET"),
    ("CREATE PERSISTENT SECRET s (TYPE S3)", "CREATE SECRET"),
    ("INSERT INTO profiles SELECT * FROM profiles", "INSERT"),
    ("INSERT OR REPLACE INTO profiles SELECT * FROM profiles", "INSERT"),
    ("UPDATE profiles SET handle = 'x'", "UPDATE"),
    ("DELETE FROM profiles", "DELETE"),
    ("TRUNCATE profiles", "TRUNCATE"),
    ("MERGE INTO profiles USING profiles p2 ON true WHEN MATCHED THEN DELETE", "MERGE"),
    ("COPY profiles TO 'x.csv'", "COPY"),
    ("COPY (SELECT handle FROM profiles) TO 'x.csv'", "COPY"),
    ("COPY profiles FROM 'x.csv'", "COPY"),
    ("ATTACH 'x.db' AS x", "ATTACH"),
    ("DETACH x", "DETACH"),
    ("DETACH DATABASE x", "DETACH"),
    ("SET threads = 1", "SET"),
    ("SET memory_limit = '1GB'", "SET"),
    ("RESET threads", "RESET"),
    ("PRAGMA table_info('profiles')", "PRAGMA"),
    ("PRAGMA version", "PRAGMA"),
    ("INSTALL httpfs", "INSTALL"),
    ("FORCE INSTALL httpfs", "FORCE INSTALL"),
    ("LOAD httpfs", "LOAD"),
    ("UPDATE EXTENSIONS", "UPDATE EXTENSIONS"),
    ("CALL pragma_version()", "CALL"),
    ("EXPORT DATABASE 'dir'", "EXPORT DATABASE"),
    ("IMPORT DATABASE 'dir'", "IMPORT DATABASE"),
    ("VACUUM", "VACUUM"),
    ("ANALYZE", "ANALYZE"),
    ("CHECKPOINT", "CHECKPOINT"),
    ("FORCE CHECKPOINT", "FORCE CHECKPOINT"),
    ("SUMMARIZE profiles", "SUMMARIZE"),
    ("SUMMARIZE SELECT handle FROM profiles", "SUMMARIZE"),
    ("DESCRIBE profiles", "DESCRIBE"),
    ("DESC profiles", "DESC"),
    ("SHOW TABLES", "SHOW"),
    ("SHOW profiles", "SHOW"),
    ("USE memory", "USE"),
    ("ALTER TABLE profiles ADD COLUMN x INTEGER", "ALTER TABLE"),
    ("ALTER VIEW v RENAME TO v2", "ALTER VIEW"),
    ("COMMENT ON TABLE profiles IS 'x'", "COMMENT"),
    ("DROP TABLE profiles", "DROP TABLE"),
    ("DROP MACRO m", "DROP MACRO"),
    ("DROP SECRET s", "DROP SECRET"),
    ("BEGIN", "BEGIN"),
    ("BEGIN TRANSACTION", "BEGIN"),
    ("START TRANSACTION", "START TRANSACTION"),
    ("COMMIT", "COMMIT"),
    ("ROLLBACK", "ROLLBACK"),
    ("ABORT", "ABORT"),
    ("END", "END"),
    ("EXPLAIN SELECT subject_id FROM profiles", "EXPLAIN"),
    ("EXPLAIN ANALYZE SELECT subject_id FROM profiles", "EXPLAIN"),
    ("PREPARE p AS SELECT subject_id FROM profiles", "PREPARE"),
    ("EXECUTE p", "EXECUTE"),
    ("DEALLOCATE p", "DEALLOCATE"),
    ("PIVOT profiles ON app_id USING count(*)", "PIVOT"),
    ("UNPIVOT profiles ON handle INTO NAME k VALUE v", "UNPIVOT"),
    ("VALUES (1), (2)", "VALUES"),
]

#: a statement whose first word is a query's: refused from its parse tree, by name
WITH_PREFIXED = [
    ("WITH x AS (SELECT subject_id FROM profiles) INSERT INTO t SELECT * FROM x", "INSERT"),
    (
        "WITH x AS (SELECT 1 AS a) DELETE FROM profiles WHERE subject_id IN (SELECT a FROM x)",
        "DELETE",
    ),
    ("WITH x AS (SELECT 1 AS a) UPDATE profiles SET handle = 'h' FROM x", "UPDATE"),
]

LOCKS = [
    "SELECT subject_id FROM profiles FOR UPDATE",
    "SELECT subject_id FROM profiles FOR SHARE",
    "SELECT subject_id FROM profiles FOR UPDATE NOWAIT",
    "SELECT subject_id FROM profiles FOR NO KEY UPDATE",
    "SELECT s FROM (SELECT subject_id AS s FROM profiles FOR UPDATE) AS t",
    "CREATE TABLE t AS SELECT subject_id FROM profiles FOR SHARE",
]


@pytest.mark.parametrize(("sql", "name"), REFUSED)
def test_duckdb_accepts_each_statement_and_it_is_no_query(sql: str, name: str) -> None:
    try:
        kinds = {str(s.type) for s in duckdb.extract_statements(sql)}
    except ValueError as exc:  # the binding knows no enum value for UPDATE EXTENSIONS
        assert sql == "UPDATE EXTENSIONS", exc
        return
    assert len(kinds) == 1
    if name in ("SUMMARIZE", "DESCRIBE", "DESC", "SHOW", "UNPIVOT", "VALUES"):
        # DuckDB runs these as a SELECT over a catalog function or an inline table: still not a
        # query the lineage reads (no schema table as written); refused by name like the rest
        assert kinds == {"StatementType.SELECT"}
    else:
        assert kinds != {"StatementType.SELECT"}, kinds


@pytest.mark.parametrize(("sql", "name"), REFUSED + WITH_PREFIXED)
@pytest.mark.parametrize("policy_on", [True, False])
def test_each_statement_is_refused_by_name(
    sql: str, name: str, policy_on: bool, qpolicy: QueryPolicy
) -> None:
    with pytest.raises(QueryError) as info:
        rewrite(sql, default_schema(), qpolicy if policy_on else None)
    # PG160, not the lineage's (PG161) or the policy's (PG162) refusal
    assert type(info.value) is UnsupportedStatement and info.value.code == "PG160"
    assert str(info.value) == f"[PG160] {NOT_ALLOWED.format(name=name)}"


@pytest.mark.parametrize(("sql", "name"), REFUSED)
def test_statement_name(sql: str, name: str) -> None:
    assert statement_name(sql) == name


def test_queries_and_create_table_as_pass_the_statement_check(qpolicy: QueryPolicy) -> None:
    for sql in (
        "SELECT subject_id FROM profiles",
        "  /* a comment */ -- another\n select subject_id from profiles",
        "WITH c AS (SELECT subject_id FROM profiles) SELECT * FROM c",
        "FROM profiles SELECT subject_id",
        "TABLE profiles",
        "CREATE TABLE mine AS SELECT subject_id FROM profiles",
        "create or replace table mine as select subject_id from profiles",
    ):
        refuse_statement(sql)
        out = rewrite(sql, default_schema(), qpolicy)
        assert out.columns, sql
    # not a word first: left to the parser (PG160 with its message), never named
    for sql in ("", "'x'", '"select" 1', "42"):
        assert statement_name(sql) is None
        refuse_statement(sql)
    # CREATE TABLE forms other than AS keep their own PG160 messages
    for sql, words in (
        ("CREATE TABLE t (x INTEGER)", "only CREATE TABLE ... AS SELECT"),
        ("CREATE TEMP TABLE t AS SELECT subject_id FROM profiles", "CREATE TEMP/TEMPORARY"),
    ):
        with pytest.raises(QueryError, match=words.replace(".", r"\.")) as info:
            rewrite(sql, default_schema(), qpolicy)
        assert info.value.code == "PG160"
    # a parenthesised query is still the lineage's refusal (PG161), not a statement's
    with pytest.raises(LineageError):
        rewrite("(SELECT subject_id FROM profiles)", default_schema(), qpolicy)


def _scramble(sql: str, rnd: random.Random) -> str:
    """``sql`` with its keywords in random case, a comment in front and extra spaces."""
    words = [w.upper() if rnd.random() < 0.5 else w.lower() for w in sql.split(" ")]
    lead = rnd.choice(["", "  ", "\n", "/* why */ ", "-- note\n"])
    return lead + (" " * rnd.randint(1, 3)).join(words)


@settings(max_examples=60, deadline=None)
@given(index=st.integers(0, len(REFUSED) - 1), seed=st.integers(0, 2**16))
def test_case_spacing_and_comments_do_not_change_the_name(index: int, seed: int) -> None:
    sql, name = REFUSED[index]
    if "'" in sql:  # keep literals as written (case matters inside them)
        return
    scrambled = _scramble(sql, random.Random(seed))
    with pytest.raises(QueryError) as info:
        rewrite(scrambled, default_schema(), None)
    assert str(info.value) == f"[PG160] {NOT_ALLOWED.format(name=name)}", scrambled


@pytest.mark.parametrize("sql", LOCKS)
def test_locking_reads_are_refused_once_without_sqlglot_warnings(
    sql: str, qpolicy: QueryPolicy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(QueryError) as info:
        rewrite(sql, default_schema(), qpolicy)
    assert type(info.value) is UnsupportedStatement and info.value.code == "PG160"
    assert "locking reads (FOR UPDATE / FOR SHARE) are not supported" in str(info.value)
    describe_statement(sql)  # the audit summary generates the statement's shape too
    assert not [r for r in caplog.records if "Locking reads" in r.getMessage()]


def test_the_sqlglot_lock_warning_is_what_the_filter_removes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without the filter, generating a locking read for DuckDB logs sqlglot's warning on the
    ``sqlglot`` logger: the filter is what keeps it off the CLI's stderr."""
    import sqlglot

    logger = logging.getLogger("sqlglot")
    saved = list(logger.filters)
    caplog.set_level(logging.WARNING)
    try:
        for f in saved:
            logger.removeFilter(f)
        sqlglot.parse_one(LOCKS[0], read="duckdb").sql(dialect="duckdb")
    finally:
        for f in saved:
            logger.addFilter(f)
    assert [r for r in caplog.records if "Locking reads" in r.getMessage()]


def test_the_audit_summary_names_the_statement() -> None:
    """``statement_kind`` of an audit entry: the statement's name, not sqlglot's node key (a
    ``CHECKPOINT`` was ``column``, a ``CREATE VIEW ... AS SELECT`` was ``create_table_as``)."""
    cases = {
        "CREATE MACRO m(x) AS x": ("create_macro", ()),
        "CREATE VIEW v AS SELECT handle FROM profiles": ("create_view", ()),
        "CHECKPOINT": ("checkpoint", ()),
        "DEALLOCATE p": ("deallocate", ()),
        "PRAGMA version": ("pragma", ()),
        "WITH x AS (SELECT 1 AS a) INSERT INTO t SELECT a FROM x": ("insert", ()),
        "CREATE TABLE ids AS SELECT subject_id FROM profiles": ("create_table_as", ("ids",)),
        "SELECT subject_id FROM profiles": ("select", ()),
    }
    for sql, (kind, created) in cases.items():
        summary = describe_statement(sql)
        assert (summary.kind, summary.tables_created) == (kind, created), sql
    assert describe_statement("CREATE VIEW v AS SELECT handle FROM profiles").tables_read == (
        "profiles",
    )


# ---------------------------------------------------------------- fresh user 12, L6

#: (text, statements DuckDB's own parser counts in it)
MULTI = [
    ("CREATE TABLE fu12_w AS SELECT subject_id FROM profiles; SELECT 1", 2),
    ("SELECT 1 AS a; SELECT 2 AS b", 2),
    ("SELECT subject_id FROM profiles; DROP TABLE profiles", 2),
    ("SELECT 1; SELECT 2; SELECT 3;", 3),
    ("SELECT ';' AS a; SELECT 2", 2),
]
#: one statement each, although ';' appears in them
SINGLE = [
    "SELECT 1;",
    "SELECT ';' AS semi FROM profiles",
    'SELECT subject_id AS "a;b" FROM profiles',
    "SELECT subject_id FROM profiles -- a; comment\n",
    "SELECT subject_id FROM profiles /* x; y */ ;",
]


@pytest.mark.parametrize(("sql", "count"), MULTI)
def test_several_statements_are_refused_first(sql: str, count: int, qpolicy: QueryPolicy) -> None:
    """A text of several statements is refused as such (PG160, "one statement per query")
    before any of its statements is checked: ``CREATE TABLE t AS ...; SELECT 1`` was refused
    as "table(s) t have no provenance schema", and ``...; DROP TABLE`` as a DROP."""
    from provguard.sqlgen.statement import ONE_STATEMENT, statement_count

    assert len(duckdb.extract_statements(sql)) == count
    assert statement_count(sql) == count
    with pytest.raises(UnsupportedStatement) as err:
        refuse_statement(sql)
    assert str(err.value) == f"[PG160] {ONE_STATEMENT.format(count=count)}"
    assert err.value.code == "PG160"
    for policy in (qpolicy, None):
        with pytest.raises(UnsupportedStatement, match="one statement per query") as err:
            rewrite(sql, default_schema(), policy)
        assert f"got {count} statements" in str(err.value)


@pytest.mark.parametrize("sql", SINGLE)
def test_a_semicolon_inside_one_statement_is_not_a_second(sql: str) -> None:
    from provguard.sqlgen.statement import statement_count

    assert len(duckdb.extract_statements(sql)) == 1
    assert statement_count(sql) == 1
    refuse_statement(sql)  # passes: it is one query


def test_a_labelled_store_keeps_the_one_statement_message(
    tmp_path: Path, qpolicy: QueryPolicy
) -> None:
    """The data plane rewords a plain QueryError naming an unschematised table; the
    multi-statement refusal is not reworded, and nothing is written."""
    import pyarrow as pa

    from provguard.dataplane import LabelledStore

    store = LabelledStore(tmp_path / "data")
    store.data.write_table(
        "profiles",
        pa.table(
            {
                "app_id": ["douyin"],
                "subject_id": [1],
                "handle": ["h"],
                "avatar_key": ["k"],
                "handle__origins": [["user_input"]],
                "avatar_key__origins": [["user_input"]],
            }
        ),
    )
    before = sorted(p.name for p in (tmp_path / "data").rglob("*"))
    with pytest.raises(UnsupportedStatement, match="one statement per query"):
        store.query("CREATE TABLE fu12_w AS SELECT subject_id FROM profiles; SELECT 1", qpolicy)
    assert sorted(p.name for p in (tmp_path / "data").rglob("*")) == before

"""Engine errors of policy-aware queries never print protected values (fresh user 12, H2;
issue 4).

DuckDB's messages echo their inputs unquoted (strptime's continuation line, RE2 pattern errors,
overflow numbers), so scrubbing quoted literals (session 7) could not be complete: a failing
query that reads a column with data categories now reports PG200 with the engine's error class
only. Every reproduction of the finding is run through the CLI on a store loaded under the test
mask policy (the first 600 lines of ego-Facebook, seed 7): QQ handles redacted, WeChat handles
hashed, platform pictures nullified. The raw values must not appear in the output (plain or
``--json``) nor in the audit log; a query over unprotected columns still shows its (scrubbed)
message."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.cli.main import app as main_app
from provguard.dataplane import LabelledStore
from provguard.dataplane.store import query_frames, reads_categorised
from provguard.errors import WITHHELD_SENTENCE, EngineError, engine_error_class, engine_failure
from provguard.policy import load_policy_dir
from provguard.provenance import default_registry
from provguard.sqlgen import QueryPolicy, job_schema, rewrite

ROOT = Path(__file__).resolve().parents[2]
MASKS = ROOT / "tests" / "golden" / "sqlgen" / "policy-masks.yaml"
KEY = "0123456789abcdef0123456789abcdef"
REG = default_registry()
QQ, WECHAT = 1 << REG.bit("qq"), 1 << REG.bit("wechat")
APP, PURPOSE = "douyin", "social.friend_recommendation"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``data load`` of a sandbox export under the mask policy (stored masks, with a key)."""
    from provguard.adapters.graph_files import read_edge_list
    from provguard.sandbox import build_platform

    work = tmp_path_factory.mktemp("engine-errors")
    lines = (ROOT / "data/graphs/snap-ego-facebook.txt").read_text().splitlines()
    graph = work / "ego-600.txt"
    graph.write_text("\n".join(lines[:600]) + "\n")
    platform = build_platform(read_edge_list(graph), seed=7)
    profiles, grants = work / "profiles.parquet", work / "grants.parquet"
    pq.write_table(platform.app_profiles, profiles)
    pq.write_table(platform.grants, grants)
    r = CliRunner().invoke(
        main_app,
        ["data", "load", "--profiles", str(profiles), "--grants", str(grants),
         "--store", str(work / "out" / "data"), "--policy", str(MASKS), "--at", "2019-06-30"],
        env={"PROVGUARD_HASH_KEY": KEY, "PROVGUARD_AUDIT_KEY": None},
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    return work / "out" / "data"


@pytest.fixture(scope="module")
def rows(store: Path) -> list[dict[str, Any]]:
    """Douyin's rows as stored (raw values and their labels)."""
    cols = ["app_id", "subject_id", "handle", "handle_origins", "avatar_key", "avatar_origins"]
    table = pq.read_table(store / "profiles.parquet", columns=cols)
    return [r for r in table.to_pylist() if r["app_id"] == APP]


def _subject(rows: list[dict[str, Any]], label: str, mask: int, wide: bool = False) -> Any:
    """The first row whose ``label`` is exactly ``mask`` (``wide``: first character beyond
    U+03FF, so its code point is a 4-5 digit number no fixed text holds)."""
    for r in rows:
        value = r["handle" if label == "handle_origins" else "avatar_key"]
        if r[label] == mask and value and (not wide or ord(value[0]) > 0x3FF):
            return r
    raise AssertionError(f"no row with {label} == {mask}")


def _query(store: Path, sql: str, *extra: str) -> Any:
    return CliRunner().invoke(
        main_app,
        ["query", "--app", APP, "--purpose", PURPOSE, "--store", str(store),
         "--policy", str(MASKS), *extra, sql],
        env={"PROVGUARD_HASH_KEY": KEY, "COLUMNS": "200"},
    )  # fmt: skip


def _text(r: Any) -> str:
    parts = [r.output]
    for name in ("stdout", "stderr"):
        with contextlib.suppress(ValueError):  # not captured apart by this click version
            parts.append(getattr(r, name))
    return "\n".join(parts)


def _last_query(store: Path) -> dict[str, Any]:
    with SqliteAuditLog(store.parent / "control.db", create=False) as log:
        return dict([e.payload for e in log.entries(kind="query")][-1])


def _audit_text(store: Path) -> str:
    with SqliteAuditLog(store.parent / "control.db", create=False) as log:
        return "\n".join(json.dumps(e.payload, ensure_ascii=False) for e in log.entries())


def _assert_withheld(store: Path, r: Any, secrets: list[str], engine_class: str) -> None:
    text = _text(r)
    assert r.exit_code == 2, text
    assert f"[PG200] query failed: {engine_class} ({WITHHELD_SENTENCE})" in " ".join(text.split())
    for s in secrets:
        assert s not in text
    last = _last_query(store)
    assert (last["outcome"], last["error_code"]) == ("error", "PG200")
    assert last["engine_error"] == {"class": engine_class, "message_withheld": True}
    audit = _audit_text(store)
    for s in secrets:
        assert s not in audit


@pytest.mark.parametrize(
    ("label", "mask", "column"),
    [
        ("handle_origins", QQ, "handle"),  # redacted: 温*** shown, the handle never
        ("handle_origins", WECHAT, "handle"),  # hashed: only the HMAC shown
        ("avatar_origins", WECHAT, "avatar_key"),  # nullified
    ],
    ids=["qq-handle-redacted", "wechat-handle-hashed", "wechat-picture-nullified"],
)
def test_strptime_on_a_masked_value_prints_no_value(
    store: Path, rows: list[dict[str, Any]], label: str, mask: int, column: str
) -> None:
    row = _subject(rows, label, mask)
    sid, raw = row["subject_id"], row[column]
    # the mask policy serves the column masked, never raw
    shown = _query(store, f"SELECT {column} FROM profiles WHERE subject_id = {sid}", "--json")
    assert shown.exit_code == 0, shown.output
    assert raw not in _text(shown)
    sql = f"SELECT subject_id, strptime({column}, '%Y') AS x FROM profiles WHERE subject_id = {sid}"
    _assert_withheld(store, _query(store, sql), [raw], "Invalid Input Error")
    _assert_withheld(store, _query(store, sql, "--json"), [raw], "Invalid Input Error")


def test_the_string_agg_dump_prints_no_value(store: Path, rows: list[dict[str, Any]]) -> None:
    sql = (
        "SELECT strptime(string_agg(CAST(subject_id AS VARCHAR) || '=' || handle || '=' ||"
        " coalesce(avatar_key, ''), '|'), '%Y') AS x FROM profiles"
    )
    handles = [r["handle"] for r in rows if r["handle"] and len(r["handle"]) >= 4]
    pictures = [r["avatar_key"] for r in rows if r["avatar_key"]]
    assert len(handles) > 100 and len(pictures) > 100
    _assert_withheld(store, _query(store, sql), handles + pictures, "Invalid Input Error")


def test_a_predicate_and_a_regexp_pattern_print_no_value(
    store: Path, rows: list[dict[str, Any]]
) -> None:
    qq = _subject(rows, "handle_origins", QQ)
    wechat = _subject(rows, "handle_origins", WECHAT)
    where = "SELECT subject_id FROM profiles WHERE strptime(handle, '%Y') IS NOT NULL"
    secrets = [qq["handle"], wechat["handle"]]
    _assert_withheld(store, _query(store, where), secrets, "Invalid Input Error")
    for row, opener in ((qq, "("), (wechat, "[")):
        sql = (
            f"SELECT regexp_matches('abc', '{opener}' || handle) AS x FROM profiles"
            f" WHERE subject_id = {row['subject_id']}"
        )
        _assert_withheld(store, _query(store, sql), [row["handle"]], "Invalid Input Error")


def test_overflow_numbers_are_not_printed(store: Path, rows: list[dict[str, Any]]) -> None:
    row = _subject(rows, "handle_origins", QQ, wide=True)
    sid, point = row["subject_id"], str(ord(row["handle"][0]))
    add = (
        f"SELECT subject_id, CAST(unicode(handle) + 2147483647 AS INTEGER) AS x FROM profiles"
        f" WHERE subject_id = {sid}"
    )
    r = _query(store, add)
    _assert_withheld(store, r, [row["handle"], point], "Out Of Range Error")
    assert "Overflow" not in _text(r)
    tiny = f"SELECT CAST(ascii(handle) AS TINYINT) AS x FROM profiles WHERE subject_id = {sid}"
    _assert_withheld(store, _query(store, tiny), [point], "Conversion Error")


def test_a_query_over_unprotected_columns_shows_its_message(store: Path) -> None:
    r = _query(store, "SELECT subject_id, CAST(app_id AS INTEGER) AS x FROM profiles")
    text = " ".join(_text(r).split())
    assert r.exit_code == 2, text
    assert "[PG200] query failed: Conversion Error: Could not convert string ? to INT32" in text
    assert WITHHELD_SENTENCE not in text and "'douyin'" not in text  # quoted literal scrubbed
    last = _last_query(store)
    assert last["engine_error"] == {"class": "Conversion Error", "message_withheld": False}


def test_postgres_withholds_too(store: Path, rows: list[dict[str, Any]]) -> None:
    url = os.environ.get("PROVGUARD_TEST_PG_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("PROVGUARD_TEST_PG_URL is not set")
        pytest.skip("PROVGUARD_TEST_PG_URL is not set")
    row = _subject(rows, "handle_origins", QQ)
    pg = ["--engine", "postgres", "--pg-url", url]
    sql = (
        f"SELECT subject_id FROM profiles WHERE subject_id = {row['subject_id']}"
        " AND CAST(handle AS INTEGER) > 0"
    )
    r = _query(store, sql, *pg)
    text = " ".join(_text(r).split())
    assert r.exit_code == 2, text
    expected = (
        f"PostgreSQL query failed: InvalidTextRepresentation (SQLSTATE 22P02) ({WITHHELD_SENTENCE})"
    )
    assert expected in text and row["handle"] not in text
    r = _query(store, "SELECT subject_id, CAST(app_id AS INTEGER) AS x FROM profiles", *pg)
    text = " ".join(_text(r).split())
    assert r.exit_code == 2 and "invalid input syntax for type integer: ?" in text, text


def test_spark_withholds_too(store: Path, rows: list[dict[str, Any]]) -> None:
    """Spark's casts return NULL (ANSI off), but a regexp pattern built from a handle fails
    and its message echoes the pattern: withheld, with PySpark's error condition."""
    pytest.importorskip("pyspark")
    from provguard.adapters.spark_engine import SparkEngine

    row = _subject(rows, "handle_origins", QQ)
    ls = LabelledStore(store, base=job_schema())
    sql = (
        "SELECT regexp_extract('abc', concat('(', {c}), 1) AS x FROM profiles"
        " WHERE subject_id = {s}"
    )
    spark = SparkEngine("local[2]")
    try:
        with pytest.raises(EngineError) as caught:
            ls.query(
                sql.format(c="handle", s=row["subject_id"]), _qp(), engine="spark", spark=spark
            )
        err = caught.value
        assert err.withheld and row["handle"] not in str(err)
        assert err.engine_class == "SparkRuntimeException (INVALID_PARAMETER_VALUE.PATTERN)"
        with pytest.raises(EngineError) as caught:
            ls.query(
                sql.format(c="app_id", s=row["subject_id"]), _qp(), engine="spark", spark=spark
            )
        assert not caught.value.withheld
        assert "[INVALID_PARAMETER_VALUE.PATTERN]" in str(caught.value)
        assert "(douyin" not in str(caught.value)  # the quoted pattern is scrubbed
    finally:
        spark.stop()


# ------------------------------------------------------------------ the Python API


def _qp() -> QueryPolicy:
    from datetime import UTC, datetime

    at = datetime(2019, 6, 30, tzinfo=UTC)
    return QueryPolicy(
        load_policy_dir(MASKS), REG, app=APP, purpose=PURPOSE, at=at, hash_key=KEY.encode()
    )


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT subject_id, app_id FROM profiles", False),
        ("SELECT subject_id, CAST(app_id AS INTEGER) AS x FROM profiles", False),
        ("SELECT count(*) AS n FROM profiles WHERE subject_id > 3", False),
        ("SELECT subject_id FROM profiles WHERE handle = 'x'", True),
        ("SELECT upper(avatar_key) AS a FROM profiles", True),
        # a projection the outer query drops: only the syntax sees it
        ("SELECT count(*) AS n FROM (SELECT strptime(handle, '%Y') AS h FROM profiles) t", True),
        ("SELECT * FROM profiles", True),
        ("SELECT p.* FROM profiles p", True),
        ("SELECT account_id FROM profiles", True),
        ("SELECT src FROM edges", True),
    ],
)
def test_reads_categorised(sql: str, expected: bool) -> None:
    rw = rewrite(sql, job_schema(), None)
    assert reads_categorised(sql, rw, job_schema()) is expected


def test_the_store_and_frames_withhold_under_a_policy_only(
    store: Path, rows: list[dict[str, Any]]
) -> None:
    row = _subject(rows, "handle_origins", QQ)
    sql = f"SELECT strptime(handle, '%Y') AS x FROM profiles WHERE subject_id = {row['subject_id']}"
    ls = LabelledStore(store, base=job_schema())
    with pytest.raises(EngineError) as caught:
        ls.query(sql, _qp())
    err = caught.value
    assert err.withheld and err.code == "PG200" and row["handle"] not in str(err)
    assert err.__cause__ is None and err.engine_class == "Invalid Input Error"
    # without a policy nothing is masked: the scrubbed message is kept
    with pytest.raises(EngineError) as caught:
        ls.query(sql, None)
    assert not caught.value.withheld and "Could not parse string" in str(caught.value)
    frame = pa.table(
        {
            "app_id": ["douyin"],
            "subject_id": [1],
            "account_id": ["a"],
            "handle": [row["handle"]],
            "handle_grant": [None],
            "handle_origins": pa.array([QQ], pa.uint64()),
            "avatar_key": [None],
            "avatar_grant": [None],
            "avatar_origins": pa.array([0], pa.uint64()),
            "grant_id": [None],
            "created_at": [None],
        }
    )
    with pytest.raises(EngineError) as caught:
        query_frames({"profiles": frame}, sql.split(" WHERE")[0], job_schema(), _qp())
    assert caught.value.withheld and row["handle"] not in str(caught.value)


def test_engine_error_class_uses_names_only() -> None:
    con = duckdb.connect()
    try:
        with pytest.raises(duckdb.Error) as caught:
            con.sql("SELECT CAST('温柔月亮' AS INTEGER)").fetchall()
    finally:
        con.close()
    assert engine_error_class(caught.value) == "Conversion Error"
    failed = engine_failure("query failed", caught.value)
    assert "温柔月亮" not in str(failed) and "Could not convert string ?" in str(failed)
    withheld = engine_failure("query failed", caught.value, withhold=True)
    assert str(withheld) == f"[PG200] query failed: Conversion Error ({WITHHELD_SENTENCE})"

    class CapturedLike(Exception):  # PySpark's captured exceptions expose getErrorClass()
        def getErrorClass(self) -> str:
            return "CAST_INVALID_INPUT"

    spark_like = CapturedLike("[CAST_INVALID_INPUT] The value '温柔月亮' ...")
    assert engine_error_class(spark_like) == "CapturedLike (CAST_INVALID_INPUT)"

    class Spark4Like(Exception):  # PySpark 4 names it getCondition
        def getCondition(self) -> str:
            return "INVALID_PARAMETER_VALUE.PATTERN"

    spark4 = Spark4Like("missing ): (温柔月亮")
    assert engine_error_class(spark4) == "Spark4Like (INVALID_PARAMETER_VALUE.PATTERN)"

    class SqlStateLike(Exception):
        sqlstate = "22P02"

    assert engine_error_class(SqlStateLike("温柔月亮")) == "SqlStateLike (SQLSTATE 22P02)"

"""Derived tables in the store: their row labels on PostgreSQL (same cells as DuckDB), and the
``CREATE TABLE`` forms the store honours or refuses (issue 4: ``CREATE OR REPLACE`` and ``IF
NOT EXISTS`` never replace a source table nor leave a table and its labels disagreeing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from provguard.dataplane import LabelledStore
from provguard.dataplane.store import LABELS_DIR, TOKEN_KEY
from provguard.policy import load_policy_dir
from provguard.provenance import default_registry
from provguard.sqlgen import QueryError, QueryPolicy, QueryRefused, job_schema

from .conftest import AT, HASH_KEY, ROOT

MATCH = (
    "CREATE TABLE t AS SELECT a.subject_id AS a_id, b.subject_id AS b_id, a.avatar_key AS av"
    " FROM profiles AS a JOIN profiles AS b ON a.handle = b.handle AND a.subject_id < b.subject_id"
)


def _profiles(n: int, seed: int) -> Any:
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from sqlgen.conftest import random_profiles

    return random_profiles(n, seed=seed)


def _qp(bundle: str, purpose: str) -> QueryPolicy:
    path = (
        ROOT / "policies"
        if bundle == "injunction"
        else ROOT / "tests/golden/sqlgen/policy-masks.yaml"
    )
    return QueryPolicy(
        load_policy_dir(path),
        default_registry(),
        app="douyin",
        purpose=purpose,
        at=AT,
        hash_key=HASH_KEY,
    )


def _rows(t: Any) -> list[tuple[Any, ...]]:
    return sorted((tuple(r.values()) for r in t.to_pylist()), key=repr)


@pytest.fixture()
def store(tmp_path: Path) -> LabelledStore:
    s = LabelledStore(tmp_path / "data")
    s.data.write_table("profiles", _profiles(60, 3))
    return s


def _files(store: LabelledStore) -> dict[str, bytes]:
    return {
        str(p.relative_to(store.data.root)): p.read_bytes()
        for p in sorted(store.data.root.rglob("*"))
        if p.is_file()
    }


def test_derived_table_on_postgres_matches_duckdb(store: LabelledStore, pg: Any) -> None:
    """The CTAS runs on PostgreSQL (row labels come back as uint64) and the queries over the
    derived table give DuckDB's cells; under the injunction the count is refused there too."""
    display = _qp("masks", "profile.display")
    on_pg = store.query(MATCH, display, engine="postgres", postgres=pg)
    expected = store.query(MATCH.replace("TABLE t ", "TABLE t_duck "), display)
    assert _rows(on_pg.table) == _rows(expected.table)
    assert on_pg.table.schema.field("__row__origins").type == "uint64"
    friend = _qp("masks", "social.friend_recommendation")
    for sql in (
        "SELECT count(*) AS n FROM {t}",
        "SELECT a_id, av FROM {t}",
        "SELECT p.subject_id FROM profiles AS p WHERE EXISTS"
        " (SELECT 1 FROM {t} WHERE {t}.a_id = p.subject_id)",
    ):
        got = store.query(sql.format(t="t"), friend, engine="postgres", postgres=pg)
        want = store.query(sql.format(t="t_duck"), friend)
        assert _rows(got.table) == _rows(want.table), sql
        assert any(f.clause == "FROM t" for f in got.rewritten.control_filters)
    with pytest.raises(QueryRefused):
        store.query(
            "SELECT count(*) AS n FROM t",
            _qp("injunction", "social.friend_recommendation"),
            engine="postgres",
            postgres=pg,
        )


def test_create_or_replace_a_source_table_is_refused(store: LabelledStore) -> None:
    before = _files(store)
    for sql in (
        "CREATE OR REPLACE TABLE profiles AS SELECT * FROM profiles WHERE app_id = 'douyin'",
        "CREATE TABLE IF NOT EXISTS profiles AS SELECT * FROM profiles",
    ):
        with pytest.raises(QueryError, match="never replaces or relabels a source table"):
            store.query(sql, None)
    # not stored, but a table of the schema (the job's): creating it would relabel it
    job = LabelledStore(store.data.root, base=job_schema())
    with pytest.raises(QueryError, match="a table of the store's provenance schema"):
        job.query("CREATE TABLE edges AS SELECT subject_id AS src FROM profiles", None)
    assert _files(store) == before


def test_create_or_replace_a_stored_table_without_labels_is_refused(
    store: LabelledStore,
) -> None:
    store.data.write_table("transfer_audit", _profiles(3, 1).select(["subject_id"]))
    before = _files(store)
    with pytest.raises(QueryError, match="a stored table with no derived labels"):
        store.query("CREATE OR REPLACE TABLE transfer_audit AS SELECT app_id FROM profiles", None)
    assert _files(store) == before


def test_create_or_replace_a_derived_table_rewrites_data_and_labels_together(
    store: LabelledStore,
) -> None:
    store.query("CREATE TABLE f AS SELECT subject_id FROM profiles", None)
    with pytest.raises(QueryError, match="already exists"):
        store.query("CREATE TABLE f AS SELECT handle FROM profiles", None)
    res = store.query("CREATE OR REPLACE TABLE f AS SELECT subject_id, handle FROM profiles", None)
    assert res.created == "replaced"
    spec = store.schema.table("f")
    assert spec.columns["handle"].categories == ("user.name.nickname",)
    assert store.data.read_table("f").column_names == [
        "subject_id",
        "handle",
        "subject_id__origins",
        "handle__origins",
        "__row__origins",
    ]
    # the replaced table is labelled like its source: a handle is still refused
    with pytest.raises(QueryRefused):
        store.query("SELECT handle FROM f", _qp("injunction", "social.friend_recommendation"))
    with pytest.raises(QueryError, match="choose one"):
        store.query("CREATE OR REPLACE TABLE IF NOT EXISTS f AS SELECT 1 AS x FROM profiles", None)


def test_if_not_exists_keeps_the_existing_table_and_its_labels(store: LabelledStore) -> None:
    store.query("CREATE TABLE f AS SELECT subject_id FROM profiles", None)
    before = _files(store)
    res = store.query("CREATE TABLE IF NOT EXISTS f AS SELECT handle FROM profiles", None)
    assert res.created == "kept"
    assert res.table.num_rows == 0 and "subject_id" in res.table.column_names
    assert _files(store) == before
    assert set(store.schema.table("f").columns) == {"subject_id"}
    new = store.query("CREATE TABLE IF NOT EXISTS g AS SELECT subject_id FROM profiles", None)
    assert new.created == "created" and new.table.num_rows == 60


def test_a_table_that_disagrees_with_its_labels_cannot_be_read(store: LabelledStore) -> None:
    """An interrupted CREATE OR REPLACE (new data, old sidecar) is caught by the token."""
    store.query("CREATE TABLE f AS SELECT subject_id FROM profiles", None)
    table = store.data.read_table("f")
    store.data.write_table("f", table.replace_schema_metadata({TOKEN_KEY: b"other"}))
    with pytest.raises(QueryError, match="does not match its labels sidecar"):
        store.query("SELECT count(*) AS n FROM f", None)
    # it can be made again
    store.query("CREATE OR REPLACE TABLE f AS SELECT subject_id FROM profiles", None)
    assert store.query("SELECT count(*) AS n FROM f", None).table["n"].to_pylist() == [60]
    assert pq.read_schema(store.data.path("f")).metadata[TOKEN_KEY] != b"other"


def test_a_derived_table_made_before_row_labels_is_refused(store: LabelledStore) -> None:
    store.query("CREATE TABLE f AS SELECT subject_id FROM profiles", None)
    sidecar = store.data.root / LABELS_DIR / "f.json"
    raw = json.loads(sidecar.read_text(encoding="utf-8"))
    del raw["spec"]["row_label"]
    del raw["token"]
    sidecar.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(QueryError, match="before row labels were recorded"):
        store.query("SELECT count(*) AS n FROM f", None)
    # other tables stay queryable
    assert store.query("SELECT count(*) AS n FROM profiles", None).table.num_rows == 1


def test_declassify_and_stored_hashes_keep_a_derived_table_readable(
    store: LabelledStore, tmp_path: Path
) -> None:
    """Both rewrite a derived table's Parquet file: its labels token (and row label) survive."""
    from datetime import UTC, datetime

    from provguard.adapters.audit_sqlite import SqliteAuditLog

    store.query(MATCH, _qp("masks", "profile.display"))
    n = store.query("SELECT count(*) AS n FROM t", None).table["n"].to_pylist()
    store.declassify(
        "t",
        "av",
        "wechat",
        actor="dpo@douyin",
        reason="re-entered",
        at=datetime(2019, 4, 1, tzinfo=UTC),
        audit=SqliteAuditLog(tmp_path / "audit.db"),
    )
    assert store.query("SELECT count(*) AS n FROM t", None).table["n"].to_pylist() == n
    spec = store.store_hashes("t", HASH_KEY)
    assert spec.row_label is not None and spec.columns["av"].hash_column == "av__hmac"
    assert store.query("SELECT count(*) AS n FROM t", None).table["n"].to_pylist() == n
    assert "__row__origins" in store.data.read_table("t").column_names

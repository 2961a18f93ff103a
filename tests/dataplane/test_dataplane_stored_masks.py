"""Stored masks in a labelled store: ``LabelledStore.store_masks`` writes the companions and the
fingerprints, queries read them only while they are current (same verdict, same table), several
policies' masks coexist and can be dropped, and DuckDB and PostgreSQL answer as the CASE."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.dataplane import LabelledStore, mask_fingerprints, stored_mask_select
from provguard.dataplane.store import MASKS_TOKEN_KEY
from provguard.errors import InputError
from provguard.provenance import default_registry
from provguard.sqlgen import QueryError, QueryPolicy, SchemaRegistry, default_schema, rewrite

from .conftest import AT, HASH_KEY
from .test_dataplane_postgres import _profiles, _rows

SQL = "SELECT subject_id, handle, avatar_key FROM profiles WHERE subject_id % 2 = 0"
REG = default_registry()


def _pair(tmp_path: Path, seed: int = 5) -> tuple[LabelledStore, LabelledStore]:
    """A plain store and one that will get stored masks, with the same table."""
    t = _profiles(seed)
    plain, masked = LabelledStore(tmp_path / "plain"), LabelledStore(tmp_path / "masked")
    plain.data.write_table("profiles", t)
    masked.data.write_table("profiles", t)
    return plain, masked


def _other_key(policy: QueryPolicy) -> QueryPolicy:
    return QueryPolicy(
        policy.policy,
        REG,
        app="douyin",
        purpose="social.friend_recommendation",
        at=AT,
        hash_key=b"another-deployment-key-0123",
    )


def test_store_masks_and_query(tmp_path: Path, mask_policy: QueryPolicy) -> None:
    plain, masked = _pair(tmp_path)
    fps = masked.store_masks("profiles", mask_policy)
    assert set(fps) == {"handle", "avatar_key"}
    # the sidecar records the fingerprints; a fresh store object reads them back
    again = LabelledStore(masked.data.root)
    spec = again.schema.table("profiles")
    for column, fp in fps.items():
        assert spec.columns[column].stored_masks == {fp: f"{column}__mask_{fp[:12]}"}
    got = again.query(SQL, mask_policy)
    assert "handle__mask_" in got.rewritten.sql and "avatar_key__mask_" in got.rewritten.sql
    assert "CASE" not in got.rewritten.sql and "SHA256" not in got.rewritten.sql
    assert _rows(got.table) == _rows(plain.query(SQL, mask_policy).table)
    sidecar = json.loads((masked.data.root / "_labels" / "profiles.json").read_text())
    assert HASH_KEY.decode() not in json.dumps(sidecar)


def test_masks_of_several_policies_coexist_and_drop(
    tmp_path: Path, mask_policy: QueryPolicy
) -> None:
    plain, masked = _pair(tmp_path)
    other = _other_key(mask_policy)
    first = masked.store_masks("profiles", mask_policy)
    second = masked.store_masks("profiles", other)
    # the avatar's masks need no key: same fingerprint, recomputed in place; the handle's differ
    assert first["avatar_key"] == second["avatar_key"]
    assert first["handle"] != second["handle"]
    columns = masked.data.read_table("profiles").column_names
    assert sum(c.startswith("handle__mask_") for c in columns) == 2
    assert sum(c.startswith("avatar_key__mask_") for c in columns) == 1
    for qp in (mask_policy, other):
        got = masked.query(SQL, qp)
        assert "CASE" not in got.rewritten.sql
        assert _rows(got.table) == _rows(plain.query(SQL, qp).table)
    # drop the other key's masks: its handle falls back to the CASE, the first policy's stay
    spec = masked.drop_masks("profiles", policy=other)
    assert spec.columns["handle"].stored_masks == {
        first["handle"]: f"handle__mask_{first['handle'][:12]}"
    }
    assert spec.columns["avatar_key"].stored_masks == {}  # shared fingerprint: dropped too
    got = masked.query(SQL, other)
    assert "__mask_" not in got.rewritten.sql
    assert _rows(got.table) == _rows(plain.query(SQL, other).table)
    assert "handle__mask_" in masked.query(SQL, mask_policy).rewritten.sql
    # drop everything: no companion left in the table or the spec
    spec = masked.drop_masks("profiles")
    assert not spec.mask_columns()
    assert not [c for c in masked.data.read_table("profiles").column_names if "__mask_" in c]
    got = masked.query(SQL, mask_policy)
    assert "__mask_" not in got.rewritten.sql
    assert _rows(got.table) == _rows(plain.query(SQL, mask_policy).table)


def test_table_rewritten_elsewhere_disables_masks(tmp_path: Path, mask_policy: QueryPolicy) -> None:
    """A table rewritten without provguard (labels changed, companions kept, metadata lost)
    has no current masks token: its stored masks are never read."""
    plain, masked = _pair(tmp_path)
    masked.store_masks("profiles", mask_policy)
    t = masked.data.read_table("profiles")
    # relabel every handle as unknown (0): the stored masks are now stale
    zeros = pa.array([0] * t.num_rows, pa.uint64())
    stale = t.set_column(t.schema.get_field_index("handle_origins"), "handle_origins", zeros)
    pq.write_table(stale.replace_schema_metadata({}), masked.data.path("profiles"))
    plain.data.write_table("profiles", stale.select(plain.data.read_table("profiles").column_names))
    got = masked.query(SQL, mask_policy)
    assert "__mask_" not in got.rewritten.sql
    assert _rows(got.table) == _rows(plain.query(SQL, mask_policy).table)
    handles = {r["handle"] for r in got.table.to_pylist() if r["handle"] is not None}
    assert handles == {"[withheld]"}  # unknown: placeholder everywhere


def test_store_hashes_after_masks_keeps_them(tmp_path: Path, mask_policy: QueryPolicy) -> None:
    plain, masked = _pair(tmp_path)
    masked.store_masks("profiles", mask_policy)
    masked.store_hashes("profiles", HASH_KEY)
    got = masked.query(SQL, mask_policy)
    assert "handle__mask_" in got.rewritten.sql
    assert _rows(got.table) == _rows(plain.query(SQL, mask_policy).table)


def test_declassify_drops_stale_masks(tmp_path: Path, mask_policy: QueryPolicy) -> None:
    plain, masked = _pair(tmp_path, seed=9)
    fps = masked.store_masks("profiles", mask_policy)
    with SqliteAuditLog(tmp_path / "audit.db") as audit:
        for store in (plain, masked):
            res = store.declassify(
                "profiles",
                "handle",
                "wechat",
                actor="dpo@example.com",
                reason="re-entered by the user",
                at=AT,
                audit=audit,
            )
            assert res.rows > 0
        last = list(audit.entries())[-1]
    assert last.payload["stored_masks_dropped"] == [f"handle__mask_{fps['handle'][:12]}"]
    spec = masked.schema.table("profiles")
    assert spec.columns["handle"].stored_masks == {}
    assert spec.columns["avatar_key"].stored_masks  # another label: still current
    got = masked.query(SQL, mask_policy)
    assert "handle__mask_" not in got.rewritten.sql and "avatar_key__mask_" in got.rewritten.sql
    assert _rows(got.table) == _rows(plain.query(SQL, mask_policy).table)


def test_store_masks_errors(tmp_path: Path, mask_policy: QueryPolicy) -> None:
    _, masked = _pair(tmp_path)
    with pytest.raises(InputError):
        masked.store_masks("profiles", mask_policy, columns=["subject_id"])
    t = masked.data.read_table("profiles")
    as_float = t.set_column(
        t.schema.get_field_index("handle"),
        "handle",
        pa.array([float(i) for i in range(t.num_rows)]),
    )
    masked.data.write_table("profiles", as_float)
    with pytest.raises(InputError):  # a float's text form differs between back-ends
        masked.store_masks("profiles", mask_policy, columns=["handle"])
    assert not masked.schema.table("profiles").mask_columns()  # nothing written


def test_injunction_stores_nothing_for_refused_columns(
    tmp_path: Path, injunction: QueryPolicy
) -> None:
    """The injunction refuses platform handles outright (no mask): no companion to store."""
    _, masked = _pair(tmp_path)
    assert mask_fingerprints("profiles", default_schema(), injunction).keys() <= {"avatar_key"}
    stored = masked.store_masks("profiles", injunction)
    assert "handle" not in stored


def test_stored_mask_postgres(tmp_path: Path, pg: Any, mask_policy: QueryPolicy) -> None:
    """One fixed table: PostgreSQL reading the companions answers as DuckDB's CASE."""
    t = _profiles(6)
    plain = LabelledStore(tmp_path / "p")
    plain.data.write_table("profiles", t)
    expected = _rows(plain.query(SQL, mask_policy).table)
    sql, spec, stored = stored_mask_select("profiles", default_schema(), mask_policy)
    assert set(stored) == {"handle", "avatar_key"}
    masked = plain.data.connect().sql(sql).to_arrow_table()
    pg.register("profiles", masked)
    reg = SchemaRegistry(tables={"profiles": spec})
    r = rewrite(SQL, reg, mask_policy, dialect="postgres")
    assert "handle__mask_" in r.sql and "CASE" not in r.sql
    got = pg.query(r.sql, [c.origins_column for c in r.columns])
    assert _rows(got) == expected
    case = rewrite(SQL, default_schema(), mask_policy, dialect="postgres")
    assert _rows(pg.query(case.sql, [c.origins_column for c in case.columns])) == expected


def test_normalised_labels_then_masks(tmp_path: Path, mask_policy: QueryPolicy) -> None:
    """Labels normalised at load (0/NULL -> unknown) are read as they are; masks stored over
    them answer as the CASE over the raw labels; declassifying a label's last origin leaves it
    unknown (never 0)."""
    plain, masked = _pair(tmp_path, seed=9)
    raw = plain.data.read_table("profiles")["handle_origins"].to_pylist()
    assert 0 in raw or None in raw  # the sample has unrecorded labels
    spec = masked.normalise_labels("profiles")
    assert spec.labels_normalised
    stored = masked.data.read_table("profiles")
    assert 0 not in stored["handle_origins"].to_pylist()
    assert None not in stored["avatar_origins"].to_pylist()
    masked.store_masks("profiles", mask_policy)
    got = masked.query(SQL, mask_policy)
    assert "NULLIF" not in got.rewritten.sql and "handle__mask_" in got.rewritten.sql
    assert _rows(got.table) == _rows(plain.query(SQL, mask_policy).table)
    with SqliteAuditLog(tmp_path / "audit.db") as audit:
        for store in (plain, masked):
            store.declassify(
                "profiles",
                "handle",
                "wechat",
                actor="dpo@example.com",
                reason="re-entered by the user",
                at=AT,
                audit=audit,
            )
    assert 0 not in masked.data.read_table("profiles")["handle_origins"].to_pylist()
    assert masked.schema.table("profiles").labels_normalised
    got = masked.query(SQL, mask_policy)
    assert "handle__mask_" not in got.rewritten.sql
    assert _rows(got.table) == _rows(plain.query(SQL, mask_policy).table)


def test_normalised_flag_needs_the_token(tmp_path: Path, mask_policy: QueryPolicy) -> None:
    """A normalised table rewritten elsewhere with 0 labels is read with raw labels again:
    the 0s are unknown (fail closed), never an empty label."""
    plain, masked = _pair(tmp_path)
    masked.normalise_labels("profiles")
    t = masked.data.read_table("profiles")
    zeros = pa.array([0] * t.num_rows, pa.uint64())
    t = t.set_column(t.schema.get_field_index("handle_origins"), "handle_origins", zeros)
    pq.write_table(t.replace_schema_metadata({}), masked.data.path("profiles"))
    plain.data.write_table("profiles", t.replace_schema_metadata({}))
    assert not masked.schema.table("profiles").labels_normalised
    got = masked.query(SQL, mask_policy)
    assert "NULLIF" in got.rewritten.sql
    assert _rows(got.table) == _rows(plain.query(SQL, mask_policy).table)
    handles = {r["handle"] for r in got.table.to_pylist() if r["handle"] is not None}
    assert handles == {"[withheld]"}


# ---------------------------------------------------------------- file identity (issue: sm3)
def _keep_meta_write(store: LabelledStore, table: pa.Table) -> None:
    """Rewrite ``profiles`` as a user would with pyarrow: schema metadata (the masks token)
    kept, written in place over the file."""
    pq.write_table(table, store.data.path("profiles"))


def _sidecar(store: LabelledStore) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(
        (store.data.root / "_labels" / "profiles.json").read_text(encoding="utf-8")
    )
    return raw


def test_sidecar_records_the_file_identity(tmp_path: Path, mask_policy: QueryPolicy) -> None:
    _, masked = _pair(tmp_path)
    masked.store_masks("profiles", mask_policy)
    st = os.stat(masked.data.path("profiles"))
    assert _sidecar(masked)["masks_file"] == {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "ino": st.st_ino,
    }


def test_pyarrow_relabel_keeping_metadata_disables_masks(
    tmp_path: Path, mask_policy: QueryPolicy
) -> None:
    """The fresh user's scenario: one row relabelled ``wechat`` with pyarrow, the metadata (and
    the masks token) kept. The query answers as the per-row CASE over the new label."""
    plain, masked = _pair(tmp_path)
    masked.store_masks("profiles", mask_policy)
    before = masked.query(SQL, mask_policy)
    assert "handle__mask_" in before.rewritten.sql
    t = masked.data.read_table("profiles")
    assert MASKS_TOKEN_KEY in (t.schema.metadata or {})
    wechat = 1 << REG.bit("wechat")
    labels = t["handle_origins"].to_pylist()
    row = next(
        i
        for i, (sid, h, o, a) in enumerate(
            zip(
                t["subject_id"].to_pylist(),
                t["handle"].to_pylist(),
                labels,
                t["app_id"].to_pylist(),
                strict=True,
            )
        )
        # a douyin row: controller isolation hides duoshan's rows from the douyin query
        if sid % 2 == 0
        and h is not None
        and o is not None
        and o != 0
        and not o & wechat
        and a == "douyin"
    )
    labels[row] = wechat
    relabelled = t.set_column(
        t.schema.get_field_index("handle_origins"),
        "handle_origins",
        pa.array(labels, pa.uint64()),
    )
    _keep_meta_write(masked, relabelled)
    assert MASKS_TOKEN_KEY in (pq.read_schema(masked.data.path("profiles")).metadata or {})
    plain.data.write_table("profiles", relabelled.select(_base_columns(plain)))
    got = masked.query(SQL, mask_policy)
    assert "__mask_" not in got.rewritten.sql
    assert _rows(got.table) == _rows(plain.query(SQL, mask_policy).table)
    # the answer did change for the relabelled row: the stored mask would have been stale
    sid = t["subject_id"][row].as_py()
    old = {r["subject_id"]: r["handle"] for r in before.table.to_pylist()}
    new = {r["subject_id"]: r["handle"] for r in got.table.to_pylist()}
    assert old[sid] != new[sid]
    assert not masked.schema.table("profiles").mask_columns()


def test_overwritten_companion_is_not_read(tmp_path: Path, mask_policy: QueryPolicy) -> None:
    """A companion column overwritten with the raw handles (metadata kept) is never returned:
    the query answers as the CASE, with redactions where they are due."""
    plain, masked = _pair(tmp_path)
    fps = masked.store_masks("profiles", mask_policy)
    t = masked.data.read_table("profiles")
    comp = f"handle__mask_{fps['handle'][:12]}"
    raw = t.set_column(t.schema.get_field_index(comp), comp, t["handle"])
    _keep_meta_write(masked, raw)
    got = masked.query(SQL, mask_policy)
    assert "__mask_" not in got.rewritten.sql
    want = plain.query(SQL, mask_policy).table
    assert _rows(got.table) == _rows(want)
    raw_handles = dict(zip(t["subject_id"].to_pylist(), t["handle"].to_pylist(), strict=True))
    assert any(r["handle"] != raw_handles[r["subject_id"]] for r in want.to_pylist())


def test_same_bytes_or_restored_mtime_still_disable_masks(
    tmp_path: Path, mask_policy: QueryPolicy
) -> None:
    """A rewrite right after ``store_masks`` with the same bytes (same size) changes the
    mtime; setting the mtime back (``touch -d``) still changes the ctime. Both fall back."""
    plain, masked = _pair(tmp_path)
    masked.store_masks("profiles", mask_policy)
    path = masked.data.path("profiles")
    recorded = _sidecar(masked)["masks_file"]
    _keep_meta_write(masked, masked.data.read_table("profiles"))
    assert os.stat(path).st_size == recorded["size"]
    assert "__mask_" not in masked.query(SQL, mask_policy).rewritten.sql
    os.utime(path, ns=(recorded["mtime_ns"], recorded["mtime_ns"]))
    st = os.stat(path)
    assert (st.st_size, st.st_mtime_ns, st.st_ino) == (
        recorded["size"],
        recorded["mtime_ns"],
        recorded["ino"],
    )
    got = masked.query(SQL, mask_policy)
    assert "__mask_" not in got.rewritten.sql
    assert _rows(got.table) == _rows(plain.query(SQL, mask_policy).table)
    # storing the masks again makes them current
    masked.store_masks("profiles", mask_policy)
    assert "handle__mask_" in masked.query(SQL, mask_policy).rewritten.sql


def test_provguard_writes_keep_masks_current(tmp_path: Path, mask_policy: QueryPolicy) -> None:
    """Each of provguard's own writes records the new identity: masks stored before stay
    readable after store_hashes, a partial drop_masks and normalise_labels + store_masks."""
    plain, masked = _pair(tmp_path)
    other = _other_key(mask_policy)
    masked.store_masks("profiles", mask_policy)
    masked.store_masks("profiles", other)
    masked.store_hashes("profiles", HASH_KEY)
    assert "handle__mask_" in masked.query(SQL, other).rewritten.sql
    masked.drop_masks("profiles", policy=other)
    got = masked.query(SQL, mask_policy)
    assert "handle__mask_" in got.rewritten.sql
    assert _rows(got.table) == _rows(plain.query(SQL, mask_policy).table)
    st = os.stat(masked.data.path("profiles"))
    assert _sidecar(masked)["masks_file"]["mtime_ns"] == st.st_mtime_ns


def test_declassify_never_revalidates_stale_masks(tmp_path: Path, mask_policy: QueryPolicy) -> None:
    """Masks made stale by a rewrite elsewhere stay unread after a declassify (which rewrites
    the table itself); masks current before a declassify stay current (the test above)."""
    plain, masked = _pair(tmp_path, seed=9)
    masked.store_masks("profiles", mask_policy)
    t = masked.data.read_table("profiles")
    zeros = pa.array([0] * t.num_rows, pa.uint64())
    stale = t.set_column(t.schema.get_field_index("avatar_origins"), "avatar_origins", zeros)
    _keep_meta_write(masked, stale)
    plain.data.write_table("profiles", stale.select(_base_columns(plain)))
    with SqliteAuditLog(tmp_path / "audit.db") as audit:
        for store in (plain, masked):
            store.declassify(
                "profiles",
                "handle",
                "wechat",
                actor="dpo@example.com",
                reason="re-entered by the user",
                at=AT,
                audit=audit,
            )
    got = masked.query(SQL, mask_policy)
    assert "__mask_" not in got.rewritten.sql
    assert _rows(got.table) == _rows(plain.query(SQL, mask_policy).table)


def _base_columns(store: LabelledStore) -> list[str]:
    return [str(c) for c in store.data.read_table("profiles").column_names]


def test_derived_table_masks_follow_its_file(tmp_path: Path, mask_policy: QueryPolicy) -> None:
    """A table made by ``CREATE TABLE AS`` with masks stored on it: provguard's write records
    the identity (masks read); a pyarrow rewrite keeping the metadata disables them, and since
    session 5 the derived table's labels too: the query is refused (PG160) until the table is
    made again (tests/dataplane/test_dataplane_derived_identity.py)."""
    _, masked = _pair(tmp_path)
    make = "CREATE TABLE evens AS SELECT subject_id, handle FROM profiles WHERE subject_id % 2 = 0"
    masked.query(make, mask_policy)
    fps = masked.store_masks("evens", mask_policy)
    assert "token" in json.loads((masked.data.root / "_labels" / "evens.json").read_text())
    sql = "SELECT subject_id, handle FROM evens"
    first = masked.query(sql, mask_policy)
    assert f"__mask_{fps['handle'][:12]}" in first.rewritten.sql
    path = masked.data.path("evens")
    pq.write_table(pq.read_table(path), path)
    raw = json.loads((masked.data.root / "_labels" / "evens.json").read_text())
    assert not masked._masks_current("evens", raw)
    with pytest.raises(QueryError, match="rewritten outside provguard"):
        masked.query(sql, mask_policy)
    masked.query("CREATE OR REPLACE TABLE " + make[len("CREATE TABLE ") :], mask_policy)
    again = masked.query(sql, mask_policy)
    assert "__mask_" not in again.rewritten.sql
    assert _rows(again.table) == _rows(first.table)

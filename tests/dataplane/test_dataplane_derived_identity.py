"""A derived table's labels (and row labels) are trusted only while its Parquet file is the one
provguard wrote: the labels token is schema metadata, which a pyarrow rewrite keeps, so the
sidecar also records the file's size, mtime_ns, ctime_ns and inode (as for stored masks). A
hand-edited derived table is refused with a clear error, never read with its old labels."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.dataplane import LabelledStore
from provguard.errors import StoreError
from provguard.sqlgen import QueryError, QueryPolicy

from .conftest import AT
from .test_dataplane_postgres import _profiles

MAKE = "CREATE TABLE evens AS SELECT subject_id, handle FROM profiles WHERE subject_id % 2 = 0"
READ = "SELECT subject_id, handle FROM evens"


def _store(tmp_path: Path, policy: QueryPolicy) -> LabelledStore:
    store = LabelledStore(tmp_path / "data")
    store.data.write_table("profiles", _profiles(5))
    store.query(MAKE, policy)
    return store


def _sidecar(store: LabelledStore, name: str = "evens") -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(
        (store.data.root / "_labels" / f"{name}.json").read_text(encoding="utf-8")
    )
    return raw


def test_create_table_as_records_the_file(tmp_path: Path, mask_policy: QueryPolicy) -> None:
    store = _store(tmp_path, mask_policy)
    st = os.stat(store.data.path("evens"))
    assert _sidecar(store)["labels_file"] == {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "ino": st.st_ino,
    }
    assert store.query(READ, mask_policy).table.num_rows > 0


def test_hand_edited_derived_table_is_refused(tmp_path: Path, mask_policy: QueryPolicy) -> None:
    """The fresh user's edit: every label of the derived table set to ``user_input`` with
    pyarrow, metadata (and labels token) kept. Before, the query trusted those labels and
    returned the handles unmasked; now it is refused, naming why, and CREATE OR REPLACE makes
    the table readable again."""
    store = _store(tmp_path, mask_policy)
    before = store.query(READ, mask_policy)
    path = store.data.path("evens")
    t = pq.read_table(path)
    assert b"provguard.labels" in (t.schema.metadata or {})
    i = t.schema.get_field_index("handle__origins")
    clean = pa.array([2] * t.num_rows, pa.uint64())  # user_input: nothing masked
    pq.write_table(t.set_column(i, "handle__origins", clean), path)
    assert b"provguard.labels" in (pq.read_schema(path).metadata or {})
    with pytest.raises(QueryError, match="rewritten outside provguard") as info:
        store.query(READ, mask_policy)
    assert info.value.code == "PG160"
    # and nothing built on top of it launders it: no stored masks, no hashes over it
    with pytest.raises(StoreError, match="cannot be trusted"):
        store.store_masks("evens", mask_policy)
    with pytest.raises(QueryError, match="rewritten outside provguard"):
        store.query("SELECT count(*) AS n FROM evens", mask_policy)
    store.query("CREATE OR REPLACE TABLE " + MAKE[len("CREATE TABLE ") :], mask_policy)
    again = store.query(READ, mask_policy)
    assert again.table.sort_by("subject_id").equals(before.table.sort_by("subject_id"))


def test_same_bytes_and_restored_mtime_are_refused(
    tmp_path: Path, mask_policy: QueryPolicy
) -> None:
    """A byte-identical rewrite with the mtime set back still changes the ctime."""
    store = _store(tmp_path, mask_policy)
    path = store.data.path("evens")
    st = os.stat(path)
    data = path.read_bytes()
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(QueryError, match="rewritten outside provguard"):
        store.query(READ, mask_policy)


def test_row_labels_are_covered(tmp_path: Path, mask_policy: QueryPolicy) -> None:
    """The row label (``__row__origins``) lives in the same file: zeroing it by hand (so a
    later count would not carry the origins that decided the rows) is refused too."""
    store = _store(tmp_path, mask_policy)
    path = store.data.path("evens")
    t = pq.read_table(path)
    i = t.schema.get_field_index("__row__origins")
    pq.write_table(t.set_column(i, "__row__origins", pa.array([0] * t.num_rows, pa.uint64())), path)
    with pytest.raises(QueryError, match="row labels cannot be trusted"):
        store.query("SELECT count(*) AS n FROM evens", mask_policy)


def test_sidecar_without_identity_is_refused(tmp_path: Path, mask_policy: QueryPolicy) -> None:
    """A derived table made before identities were recorded (no ``labels_file``)."""
    store = _store(tmp_path, mask_policy)
    side = store.data.root / "_labels" / "evens.json"
    raw = _sidecar(store)
    del raw["labels_file"]
    side.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(QueryError, match="made before file identities were recorded"):
        store.query(READ, mask_policy)


def test_provguard_writes_keep_it_readable(tmp_path: Path, mask_policy: QueryPolicy) -> None:
    """provguard's own writes of a derived table record the new file: stored masks,
    declassification, dropping masks."""
    store = _store(tmp_path, mask_policy)
    store.store_masks("evens", mask_policy)
    store.query(READ, mask_policy)
    audit = SqliteAuditLog(tmp_path / "control.db")
    try:
        done = store.declassify(
            "evens",
            "handle",
            "wechat",
            actor="ops",
            reason="re-entered by the user",
            at=AT,
            audit=audit,
        )
    finally:
        audit.close()
    assert done.rows > 0
    st = os.stat(store.data.path("evens"))
    assert _sidecar(store)["labels_file"]["ino"] == st.st_ino
    store.query(READ, mask_policy)
    store.drop_masks("evens")
    assert store.query(READ, mask_policy).table.num_rows > 0


def test_declassify_does_not_bless_an_edited_table(
    tmp_path: Path, mask_policy: QueryPolicy
) -> None:
    """A declassification of a derived table already changed elsewhere writes it, but does
    not record its file as provguard's: it stays refused."""
    store = _store(tmp_path, mask_policy)
    path = store.data.path("evens")
    pq.write_table(pq.read_table(path), path)
    audit = SqliteAuditLog(tmp_path / "control.db")
    try:
        store.declassify(
            "evens", "handle", "wechat", actor="ops", reason="test", at=AT, audit=audit
        )
    finally:
        audit.close()
    with pytest.raises(QueryError, match="rewritten outside provguard"):
        store.query(READ, mask_policy)

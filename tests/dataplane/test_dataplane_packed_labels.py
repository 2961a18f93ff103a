"""Packed labels in a labelled store (``TableSpec.labels_packed``): ``normalise_labels`` writes
the normalised labels side by side into ``__packed__origins`` when every label fits its field,
the execution plan reads that one column and answers exactly as the self-contained SQL (before
and after a declassification, which rewrites the field with its label), and a table rewritten
elsewhere or labels that do not fit leave the labels unpacked."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.dataplane import LabelledStore
from provguard.sqlgen import QueryPolicy
from provguard.sqlgen.schema import PACKED_LABELS

from .conftest import AT
from .test_dataplane_postgres import _profiles, _rows

SQL = "SELECT subject_id, handle, avatar_key FROM profiles WHERE subject_id % 2 = 0"


def _fields(store: LabelledStore) -> None:
    """Every packed field equals its label column, row by row."""
    t = store.data.read_table("profiles")
    packed = t[PACKED_LABELS]
    for column, offset in store.schema.table("profiles").packed_fields().items():
        field = pc.bit_wise_and(pc.shift_right(packed, offset), 0xFFFF)
        assert field.to_pylist() == t[column].to_pylist(), column


def _pair(tmp_path: Path, seed: int = 9) -> tuple[LabelledStore, LabelledStore]:
    t = _profiles(seed)
    plain, packed = LabelledStore(tmp_path / "plain"), LabelledStore(tmp_path / "packed")
    plain.data.write_table("profiles", t)
    packed.data.write_table("profiles", t)
    return plain, packed


def test_packed_labels_answer_as_the_raw_labels(tmp_path: Path, mask_policy: QueryPolicy) -> None:
    plain, packed = _pair(tmp_path)
    spec = packed.normalise_labels("profiles")
    assert spec.labels_packed and set(spec.packed_fields()) == {"avatar_origins", "handle_origins"}
    _fields(packed)
    packed.store_masks("profiles", mask_policy)
    assert packed.schema.table("profiles").labels_packed  # masks keep the packed column
    _fields(packed)
    got = packed.query(SQL, mask_policy)
    assert got.rewritten.plan is not None and PACKED_LABELS in got.rewritten.plan.sql
    assert _rows(got.table) == _rows(plain.query(SQL, mask_policy).table)
    assert _rows(packed.query(SQL, None).table) == _rows(plain.query(SQL, None).table)
    # normalising again replaces the packed column rather than adding a second one
    packed.normalise_labels("profiles")
    assert pq.read_schema(packed.data.path("profiles")).names.count(PACKED_LABELS) == 1
    _fields(packed)


def test_declassify_rewrites_the_packed_field(tmp_path: Path, mask_policy: QueryPolicy) -> None:
    plain, packed = _pair(tmp_path)
    packed.normalise_labels("profiles")
    packed.store_masks("profiles", mask_policy)
    before = packed.data.read_table("profiles")[PACKED_LABELS].to_pylist()
    with SqliteAuditLog(tmp_path / "audit.db") as audit:
        for store in (plain, packed):
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
    assert packed.data.read_table("profiles")[PACKED_LABELS].to_pylist() != before
    assert packed.schema.table("profiles").labels_packed
    _fields(packed)
    # the handle's stored mask is stale now (its CASE reads the label in SQL); labels only
    # still read the packed column
    bare = packed.query(SQL, None)
    assert bare.rewritten.plan is not None and PACKED_LABELS in bare.rewritten.plan.sql
    assert _rows(bare.table) == _rows(plain.query(SQL, None).table)
    got = packed.query(SQL, mask_policy)
    assert _rows(got.table) == _rows(plain.query(SQL, mask_policy).table)


def test_rewritten_elsewhere_or_too_wide_is_not_packed(
    tmp_path: Path, mask_policy: QueryPolicy
) -> None:
    plain, packed = _pair(tmp_path)
    packed.normalise_labels("profiles")
    # a table rewritten by anything else: its packed column is not read (like stored masks)
    t = packed.data.read_table("profiles")
    pq.write_table(t.replace_schema_metadata(None), packed.data.path("profiles"))
    spec = packed.schema.table("profiles")
    assert not spec.labels_packed and not spec.labels_normalised
    got = packed.query(SQL, mask_policy)
    assert PACKED_LABELS not in (got.rewritten.plan.sql if got.rewritten.plan else "")
    assert _rows(got.table) == _rows(plain.query(SQL, mask_policy).table)
    # a label with a bit above the packed field's 16: normalised, not packed
    wide = LabelledStore(tmp_path / "wide")
    raw = _profiles(9)
    i = raw.schema.get_field_index("handle_origins")
    bumped = pc.bit_wise_or(pc.fill_null(raw["handle_origins"], 0), pa.scalar(1 << 20, pa.uint64()))
    wide.data.write_table("profiles", raw.set_column(i, "handle_origins", bumped))
    spec = wide.normalise_labels("profiles")
    assert spec.labels_normalised and not spec.labels_packed
    assert PACKED_LABELS not in pq.read_schema(wide.data.path("profiles")).names

"""``LabelledStore(root, ledger=AuditLabelsLedger(control_db))`` on the Python API: a derived
table is read only while its file and sidecar match the newest chained audit entry that wrote
it (findings I-3). The CLI side (both attacks, signatures) is in
tests/cli/test_cli_derived_attestation.py."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.dataplane import LabelledStore
from provguard.dataplane.store import AuditLabelsLedger, file_sha256
from provguard.errors import StoreError, UnattestedLabelsError
from provguard.sqlgen import QueryPolicy

from .conftest import AT
from .test_dataplane_postgres import _profiles

MAKE = "CREATE TABLE evens AS SELECT subject_id, handle FROM profiles WHERE subject_id % 2 = 0"
READ = "SELECT subject_id, handle FROM evens"


def _store(tmp_path: Path, policy: QueryPolicy) -> tuple[LabelledStore, SqliteAuditLog]:
    db = tmp_path / "control.db"
    log = SqliteAuditLog(db)
    store = LabelledStore(tmp_path / "data", ledger=AuditLabelsLedger(db))
    store.data.write_table("profiles", _profiles(5))
    store.query(MAKE, policy)
    return store, log


def test_a_table_is_read_once_its_write_is_recorded(
    tmp_path: Path, mask_policy: QueryPolicy
) -> None:
    store, log = _store(tmp_path, mask_policy)
    with pytest.raises(UnattestedLabelsError, match="no audit entry records its writing") as info:
        store.query(READ, mask_policy)
    assert info.value.code == "PG210" and info.value.table == "evens"
    assert info.value.differs == ("entry",)
    # what the write recorded is what is on disk
    assert store.written["evens"] == store.digests("evens")
    assert (
        store.written["evens"].file_sha256
        == hashlib.sha256(store.data.path("evens").read_bytes()).hexdigest()
    )
    assert file_sha256(store.data.path("evens")) == store.written["evens"].file_sha256
    payload = store.derived_labels_payload("evens", "profiles")
    assert payload == {"derived_labels": {"evens": store.written["evens"].as_payload()}}
    # an entry of another kind does not count
    log.append("note", payload)
    with pytest.raises(UnattestedLabelsError):
        store.query(READ, mask_policy)
    log.append("query", {"tables_created": ["evens"], **payload})
    assert store.query(READ, mask_policy).table.num_rows > 0
    # a newer entry recording other digests wins: the file no longer matches it
    other = {"derived_labels": {"evens": {"file_sha256": "0" * 64, "spec_sha256": "1" * 64}}}
    log.append("query", other)
    with pytest.raises(UnattestedLabelsError, match="file's SHA-256") as info:
        store.query(READ, mask_policy)
    assert info.value.differs == ("file_sha256", "spec_sha256")
    log.close()


def test_an_aborted_declassification_is_skipped(
    tmp_path: Path, mask_policy: QueryPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``declassify`` entry records the digests of the file about to be written; when the
    write fails (``declassify.aborted``) the ledger skips it and the table stays readable as
    the entry before it says. A successful one is then read with its new digests."""
    store, log = _store(tmp_path, mask_policy)
    log.append("query", store.derived_labels_payload("evens"))
    before = store.query(READ, mask_policy).table

    def refuse(*_args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)  # the table's write fails
    with pytest.raises(StoreError, match="declassification not written"):
        store.declassify("evens", "handle", "wechat", actor="ops", reason="test", at=AT, audit=log)
    monkeypatch.undo()
    kinds = [e.kind for e in log.entries()]
    assert kinds[-2:] == ["declassify", "declassify.aborted"]
    assert "derived_labels" in list(log.entries(kind="declassify"))[-1].payload
    assert store.query(READ, mask_policy).table.equals(before)
    done = store.declassify(
        "evens", "handle", "wechat", actor="ops", reason="re-entered", at=AT, audit=log
    )
    assert done.rows > 0
    after = store.query(READ, mask_policy).table
    assert after.num_rows == before.num_rows and not after.equals(before)
    log.close()

"""The rebuilt report requires what ``provguard audit verify`` requires (finding I-2): with the
folder's public key beside the log, a control-store row whose chained entry no signed
checkpoint covers cannot vouch for a figure, so forged transfer decisions appended without the
key, reusing real ids, plus an edited ``transfers`` table, withhold section 3."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.audit.test_audit_signed_rows import _forge  # the I-2 forgery, as `audit verify` meets it

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.audit.crosscheck import SIGNATURE_FIELD
from provguard.audit.folder import PUBLIC_KEY_FILE, export_checkpoint, folder_signing_key
from provguard.report.from_store import build_model_from_store

from .conftest import build_small_store

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def signed_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("PROVGUARD_AUDIT_KEY", raising=False)
    root = tmp_path / "out"
    build_small_store(root, ROOT / "policies")
    key, _ = folder_signing_key(root)
    with SqliteAuditLog(root / "control.db", create=False) as log:
        export_checkpoint(log.sign_checkpoint(key), root)
    return root


def test_signed_rows_report_their_figures(signed_folder: Path) -> None:
    model = build_model_from_store(signed_folder)
    assert model.chain_check is not None and model.chain_check.ok
    assert model.transfers is not None and model.transfers.total == 3


def test_forged_unsigned_entries_withhold_the_transfers(signed_folder: Path) -> None:
    ids = _forge(signed_folder)
    model = build_model_from_store(signed_folder)
    check = model.chain_check
    assert check is not None and not check.ok
    (transfers,) = [t for t in check.tables if t.table == "transfers"]
    assert transfers.discrepancies == len(ids)
    assert {d.field for d in check.discrepancies} == {SIGNATURE_FIELD}
    assert model.transfers is None  # withheld: no forged permit reaches the court's page
    # without the folder's key nothing more can be required: the table and the newest entries
    # agree, as `audit verify --no-beside` says ("signatures not required")
    (signed_folder / PUBLIC_KEY_FILE).rename(signed_folder / "elsewhere.pub")
    unkeyed = build_model_from_store(signed_folder)
    assert unkeyed.chain_check is not None and unkeyed.chain_check.ok

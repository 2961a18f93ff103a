"""A run signs the whole log at its end, so it refuses to start over entries someone appended
without the folder's key since the last signed checkpoint (PG331): otherwise its checkpoint
would vouch for them (finding I-2's forged transfer decisions, appended between two runs).
After review, signing them (``audit checkpoint export``) lets the next run go ahead."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.cli.audit import audit_app
from provguard.config import RunSettings
from provguard.errors import ForeignEntriesError
from provguard.job.run import run_main_job


def test_a_rerun_refuses_to_sign_foreign_entries(
    repo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROVGUARD_AUDIT_KEY", raising=False)
    lines = (repo_root / "data/graphs/snap-ego-facebook.txt").read_text().splitlines()
    graph = tmp_path / "ego-facebook-600.txt"
    graph.write_text("\n".join(lines[:600]) + "\n")
    out = tmp_path / "out"
    settings = RunSettings(out=out, graph=graph, policy=repo_root / "policies")
    first = run_main_job(settings)
    db = out / "control.db"
    with SqliteAuditLog(db, create=False) as log:
        forged = log.append("decision", {"effect": "permit", "note": "appended without the key"})
        head = log.checkpoint().count
    # after the run's entries and its job.report entry (signed)
    assert first.report_anchor is not None
    assert forged.seq == head == first.report_anchor.seq + 1
    with pytest.raises(ForeignEntriesError) as err:
        run_main_job(settings)
    assert err.value.code == "PG331"
    assert f"entry #{head} is not covered" in err.value.message
    with SqliteAuditLog(db, create=False) as log:
        assert log.checkpoint().count == head  # nothing appended, nothing signed over it
    # reviewed and signed by the key's holder: the next run goes ahead and verifies
    res = CliRunner().invoke(
        audit_app,
        [
            "checkpoint",
            "export",
            "--log",
            str(db),
            "--key",
            str(out / "audit-key.pem"),
            "--out",
            str(out / "checkpoint.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    again = run_main_job(settings)
    assert again.verify.ok and again.checkpoint is not None
    assert again.checkpoint.count > head

"""Replay of an older genuine checkpoint (session-4 gap): truncate the log back to an older
signed checkpoint and put that checkpoint.json back -- everything in the folder agrees, so
``audit verify`` passes. ``audit verify --anchor FILE`` with a checkpoint the auditor kept
fails with PG310 (log shorter than the anchor, or another entry at its index)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.audit.folder import export_checkpoint, folder_signing_key
from provguard.cli.audit import audit_app


def _grow(root: Path, n: int, tag: str = "a") -> None:
    """Append ``n`` entries, then sign and export a checkpoint as the job does."""
    key, _ = folder_signing_key(root)
    with SqliteAuditLog(root / "control.db") as log:
        log.append_many([("decision", {"i": i, "tag": tag}) for i in range(n)])
        export_checkpoint(log.sign_checkpoint(key), root)


def _verify(root: Path, *extra: str) -> tuple[int, str]:
    res = CliRunner().invoke(audit_app, ["verify", "--log", str(root / "control.db"), *extra])
    return res.exit_code, " ".join(res.output.split())


def _truncate(db: Path, keep: int) -> None:
    con = sqlite3.connect(db)
    with con:
        con.execute("DELETE FROM audit_log WHERE seq > ?", (keep,))
        con.execute("DELETE FROM audit_checkpoints WHERE count > ?", (keep,))
    con.close()


@pytest.fixture()
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("PROVGUARD_AUDIT_KEY", raising=False)
    root = tmp_path / "out"
    _grow(root, 5)
    shutil.copy(root / "checkpoint.json", tmp_path / "old.json")  # the attacker's copy
    _grow(root, 3)
    shutil.copy(root / "checkpoint.json", tmp_path / "anchor.json")  # the auditor's copy
    return root


def test_replay_of_an_older_checkpoint_passes_without_an_anchor(folder: Path) -> None:
    code, text = _verify(folder)
    assert code == 0 and "chain intact: 8 entries" in text
    _truncate(folder / "control.db", 5)
    shutil.copy(folder.parent / "old.json", folder / "checkpoint.json")
    code, text = _verify(folder)
    # the gap this option closes: every file in the folder agrees with the cut log
    assert code == 0, text
    assert "chain intact: 5 entries" in text and "every entry (#1–#5) is covered" in text


def test_the_anchor_catches_the_replay(folder: Path) -> None:
    anchor = folder.parent / "anchor.json"
    code, text = _verify(folder, "--anchor", str(anchor))
    assert code == 0, text
    assert f"anchor {anchor}: 8 entries" in text and "signature valid" in text
    _truncate(folder / "control.db", 5)
    shutil.copy(folder.parent / "old.json", folder / "checkpoint.json")
    code, text = _verify(folder, "--anchor", str(anchor))
    assert code == 1, text
    assert "PG310" in text and f"--anchor {anchor}, 8 entries" in text
    # the same without the public key beside the log: the comparison does not need it
    (folder / "audit.pub").unlink()
    code, text = _verify(folder, "--anchor", str(anchor))
    assert code == 1 and "PG310" in text and "signature not checked" in text


def test_the_anchor_catches_another_log_of_the_same_length(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log rebuilt with other entries (longer than the anchor, with checkpoints of its own
    under the same key) differs at the anchor's index: PG310."""
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(folder / "audit-key.pem", other / "audit-key.pem")
    _grow(other, 9, tag="b")  # same key, other entries
    code, text = _verify(other)
    assert code == 0, text  # self-consistent
    code, text = _verify(other, "--anchor", str(folder.parent / "anchor.json"))
    assert code == 1 and "PG310" in text


def test_a_log_that_grew_after_the_anchor_passes(folder: Path) -> None:
    _grow(folder, 4)
    code, text = _verify(folder, "--anchor", str(folder.parent / "anchor.json"))
    assert code == 0, text
    assert "chain intact: 12 entries" in text


def test_a_forged_anchor_and_bad_options(folder: Path) -> None:
    anchor = folder.parent / "anchor.json"
    doc = json.loads(anchor.read_text("utf-8"))
    doc["count"] = 7  # the signature no longer matches
    forged = folder.parent / "forged.json"
    forged.write_text(json.dumps(doc), encoding="utf-8")
    code, text = _verify(folder, "--anchor", str(forged))
    assert code == 1 and "PG320" in text
    code, text = _verify(
        folder, "--anchor", str(anchor), "--expect-count", "8", "--expect-head", "0"
    )
    assert code == 2 and "PG100" in text
    code, text = _verify(folder, "--anchor", str(folder.parent / "missing.json"))
    assert code == 2 and "PG200" in text

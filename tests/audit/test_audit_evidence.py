"""Checkpoints in the main job's output folder, truncation found by ``audit verify`` alone,
and the error format (``error [PGxxx] ...``) of every ``provguard audit`` command."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.audit.folder import (
    AUDIT_KEY_ENV,
    CHECKPOINT_FILE,
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    evidence_beside,
    folder_signing_key,
)
from provguard.audit.signing import (
    SignedCheckpoint,
    key_id,
    load_public_key,
    verify_signed_checkpoint,
    write_keypair,
)
from provguard.cli.audit import audit_app
from provguard.errors import AuditError
from provguard.job.run import write_audit_evidence

runner = CliRunner()
ERROR_LINE = re.compile(r"^error \[(PG\d{3})\] ", re.MULTILINE)
AT = datetime(2019, 6, 30, tzinfo=UTC)


class FixedClock:
    def now(self) -> datetime:
        return AT


def _entries(n: int) -> list[tuple[str, dict[str, object]]]:
    return [
        (
            "decision",
            {
                "stage": "display",
                "effect": "deny" if i % 3 else "permit",
                "rules": ["duoshan-no-platform-profile"],
                "request": {"app": "duoshan", "origins": ["wechat"]},
                "context": {"subject_id": i},
            },
        )
        for i in range(n)
    ]


@pytest.fixture
def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An output folder as ``provguard run`` leaves it: control.db with 110 entries and signed
    checkpoints every 25 entries, audit-key.pem, audit.pub and checkpoint.json."""
    monkeypatch.delenv(AUDIT_KEY_ENV, raising=False)
    out = tmp_path / "demo"
    key, public = folder_signing_key(out)
    log = SqliteAuditLog(out / "control.db", clock=FixedClock(), synchronous="NORMAL")
    signed, count, result = write_audit_evidence(log, out, _entries(110), key, every=25)
    log.close()
    assert (signed.count, count, result.ok, result.count) == (110, 5, True, 110)
    assert public == out / PUBLIC_KEY_FILE
    return out


def _verify(*args: str) -> tuple[int, str]:
    r = runner.invoke(audit_app, ["verify", *args])
    return r.exit_code, " ".join(r.output.split())


def test_folder_key_is_private_reused_and_exported(demo: Path) -> None:
    private = demo / PRIVATE_KEY_FILE
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    first, _ = folder_signing_key(demo)
    again, _ = folder_signing_key(demo)  # a second run signs with the same key
    kid = key_id(first.public_key())
    assert key_id(again.public_key()) == kid == key_id(load_public_key(demo / PUBLIC_KEY_FILE))
    exported = SignedCheckpoint.from_json((demo / CHECKPOINT_FILE).read_text())
    assert verify_signed_checkpoint(exported, load_public_key(demo / PUBLIC_KEY_FILE)).count == 110
    for name in (PUBLIC_KEY_FILE, CHECKPOINT_FILE):
        assert b"PRIVATE" not in (demo / name).read_bytes()
    stored = SqliteAuditLog(demo / "control.db", create=False).signed_checkpoints()
    assert [c.count for c in stored] == [25, 50, 75, 100, 110]
    assert evidence_beside(demo / "control.db").checkpoint == demo / CHECKPOINT_FILE


def test_env_key_is_used_and_never_copied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kid = write_keypair(tmp_path / "ops" / "k.pem", tmp_path / "ops" / "k.pub")
    monkeypatch.setenv(AUDIT_KEY_ENV, str(tmp_path / "ops" / "k.pem"))
    out = tmp_path / "out"
    key, public = folder_signing_key(out)
    assert key_id(key.public_key()) == kid == key_id(load_public_key(public))
    assert not (out / PRIVATE_KEY_FILE).exists()
    monkeypatch.setenv(AUDIT_KEY_ENV, str(tmp_path / "missing.pem"))
    with pytest.raises(AuditError, match="cannot read private key") as info:
        folder_signing_key(out)
    assert info.value.code == "PG300"


def test_intact_demo_verifies_with_the_key_beside_the_log(demo: Path) -> None:
    code, out = _verify("--log", str(demo / "control.db"))
    assert code == 0, out
    assert "found beside the log" in out
    assert "signed checkpoints stored in the log: 5" in out
    assert "newest: 110 entries" in out and "chain intact: 110 entries" in out
    r = runner.invoke(
        audit_app,
        [
            "checkpoint",
            "verify",
            "--public-key",
            str(demo / PUBLIC_KEY_FILE),
            "--checkpoint",
            str(demo / CHECKPOINT_FILE),
            "--log",
            str(demo / "control.db"),
        ],
    )
    assert r.exit_code == 0 and "chain intact: 110 entries" in r.output


def _truncate(db: Path, keep: int, *, drop_checkpoints_above: int | None = None) -> None:
    con = sqlite3.connect(db)
    con.execute("DELETE FROM audit_log WHERE seq > ?", (keep,))
    if drop_checkpoints_above is not None:
        con.execute("DELETE FROM audit_checkpoints WHERE count > ?", (drop_checkpoints_above,))
    con.commit()
    con.close()


def test_truncation_after_a_checkpoint_is_found_without_options(demo: Path) -> None:
    db = demo / "control.db"
    _truncate(db, 80)
    code, out = _verify("--log", str(db))
    assert code == 1, out
    assert "error [PG310] chain broken at entry #81" in out
    assert "the log was truncated" in out and "entries #81–#110 are missing" in out


def test_exported_checkpoint_still_finds_what_a_rewrite_of_the_file_hides(demo: Path) -> None:
    # whoever can write control.db can drop the stored checkpoints along with the entries...
    db = demo / "control.db"
    _truncate(db, 80, drop_checkpoints_above=75)
    code, out = _verify("--log", str(db), "--no-beside", "--public-key", str(demo / "audit.pub"))
    assert code == 0, out  # ...and the checkpoints left in the file cannot tell
    assert "newest: 75 entries" in out and "chain intact: 80 entries" in out
    # the exported checkpoint (kept elsewhere in earnest; here beside the log) still can
    code, out = _verify("--log", str(db))
    assert code == 1 and "entries #81–#110 are missing" in out
    assert f"exported checkpoint {demo / CHECKPOINT_FILE}: 110 entries" in out


def test_a_forged_stored_checkpoint_fails_its_signature(demo: Path) -> None:
    db = demo / "control.db"
    con = sqlite3.connect(db)
    (doc,) = con.execute("SELECT document FROM audit_checkpoints WHERE count = 50").fetchone()
    forged = json.loads(doc) | {"count": 49}
    con.execute("UPDATE audit_checkpoints SET document = ? WHERE count = 50", (json.dumps(forged),))
    con.commit()
    con.close()
    code, out = _verify("--log", str(db))
    assert code == 1
    assert "error [PG320] bad checkpoint: the stored checkpoint of 49 entries" in out


def test_every_audit_error_carries_its_code(demo: Path, tmp_path: Path) -> None:
    db = str(demo / "control.db")
    pub = str(demo / PUBLIC_KEY_FILE)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    os.chmod(junk, 0o600)
    cases: list[tuple[list[str], int, str]] = [
        (["verify", "--log", str(tmp_path / "none.db")], 2, "PG200"),
        (["verify", "--log", db, "--expect-count", "3"], 2, "PG100"),
        (["verify", "--log", db, "--no-beside", "--checkpoint", str(demo / "x.json")], 2, "PG100"),
        (["verify", "--log", db, "--public-key", str(junk)], 2, "PG300"),
        (["verify", "--log", db, "--checkpoint", str(tmp_path / "none.json")], 2, "PG200"),
        (["verify", "--log", db, "--expect-count", "110", "--expect-head", "0" * 64], 1, "PG310"),
        (["show", "--log", str(tmp_path / "none.db")], 2, "PG200"),
        (["keygen", "--private-key", str(junk), "--public-key", pub], 2, "PG300"),
        (
            ["checkpoint", "export", "--log", db, "--key", str(junk), "--out", "cp.json"],
            2,
            "PG300",
        ),
        (
            [
                "checkpoint",
                "export",
                "--log",
                db,
                "--key",
                str(demo / PRIVATE_KEY_FILE),
                "--out",
                str(junk / "cp.json"),  # under a file: cannot be created
            ],
            2,
            "PG200",
        ),
        (
            ["checkpoint", "verify", "--public-key", pub, "--checkpoint", str(junk), "--log", db],
            1,
            "PG320",
        ),
    ]
    for args, exit_code, code in cases:
        r = runner.invoke(audit_app, args)
        assert r.exit_code == exit_code, (args, r.output)
        found = ERROR_LINE.findall(r.output)
        assert found == [code], (args, r.output)

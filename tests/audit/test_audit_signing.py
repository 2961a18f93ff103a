"""Ed25519-signed checkpoints: export, third-party verification, truncation, tampering."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.audit.signing import (
    CheckpointSignatureError,
    SignedCheckpoint,
    load_private_key,
    load_public_key,
    write_keypair,
)
from provguard.cli.audit import audit_app
from provguard.clock import FixedClock

runner = CliRunner()
AT = datetime(2019, 3, 20, 8, 30, tzinfo=UTC)


def _log(path: Path, n: int = 30) -> SqliteAuditLog:
    log = SqliteAuditLog(path, clock=FixedClock(AT))
    log.append_many([("decision", {"i": i, "effect": "deny"}) for i in range(n)])
    return log


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    priv, pub = tmp_path / "k.pem", tmp_path / "k.pub"
    write_keypair(priv, pub)
    return priv, pub


def test_sign_verify_roundtrip_and_truncation(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    log = _log(tmp_path / "a.db")
    signed = log.sign_checkpoint(load_private_key(keys[0]), at=AT)
    assert (signed.count, len(signed.signature)) == (30, 64)
    doc = SignedCheckpoint.from_json(signed.to_json())
    assert doc == signed
    public = load_public_key(keys[1])
    assert log.verify_signed(doc, public).ok
    log.append("decision", {"i": 30})  # later entries are legitimate
    assert log.verify_signed(doc, public).ok
    con = sqlite3.connect(tmp_path / "a.db")
    con.execute("DELETE FROM audit_log WHERE seq > 25")
    con.commit()
    con.close()
    result = log.verify_signed(doc, public)
    assert not result.ok and result.first_bad_seq == 26
    assert "truncated" in (result.reason or "")
    assert log.verify().ok  # without the checkpoint a clean truncation is invisible


def test_rewritten_chain_is_caught(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    log = _log(tmp_path / "a.db", 10)
    signed = log.sign_checkpoint(load_private_key(keys[0]), at=AT)
    log.close()
    (tmp_path / "a.db").unlink()
    forged = SqliteAuditLog(tmp_path / "a.db", clock=FixedClock(AT))
    forged.append_many([("decision", {"i": i, "effect": "permit"}) for i in range(10)])
    assert forged.verify().ok  # internally consistent...
    result = forged.verify_signed(signed, load_public_key(keys[1]))
    assert not result.ok and result.first_bad_seq == 10  # ...but not the signed chain


@pytest.mark.parametrize(
    "field,value",
    [("count", 31), ("head_hash", "a" * 64), ("signed_at", "2020-01-01T00:00:00.000000Z")],
)
def test_edited_checkpoint_fails_signature(
    tmp_path: Path, keys: tuple[Path, Path], field: str, value: object
) -> None:
    log = _log(tmp_path / "a.db")
    doc = log.sign_checkpoint(load_private_key(keys[0]), at=AT).to_dict()
    doc[field] = value
    with pytest.raises(CheckpointSignatureError, match="does not verify"):
        log.verify_signed(SignedCheckpoint.from_dict(doc), load_public_key(keys[1]))


def test_other_key_is_named(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    log = _log(tmp_path / "a.db")
    signed = log.sign_checkpoint(load_private_key(keys[0]), at=AT)
    write_keypair(tmp_path / "o.pem", tmp_path / "o.pub")
    with pytest.raises(CheckpointSignatureError, match="signed by key"):
        log.verify_signed(signed, load_public_key(tmp_path / "o.pub"))


def test_malformed_documents(tmp_path: Path) -> None:
    for text in ("[]", "{", json.dumps({"schema": "x"})):
        with pytest.raises(CheckpointSignatureError):
            SignedCheckpoint.from_json(text)


def test_private_key_never_leaves_its_file(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    assert keys[0].stat().st_mode & 0o777 == 0o600
    log = _log(tmp_path / "a.db")
    out = tmp_path / "cp.json"
    r = runner.invoke(
        audit_app,
        ["checkpoint", "export", "--log", str(log.path), "--key", str(keys[0]), "--out", str(out)],
    )
    assert r.exit_code == 0, r.output
    secret = keys[0].read_bytes()
    body = b"".join(secret.splitlines()[1:-1])  # the base64 key material
    for path in (out, tmp_path / "a.db", tmp_path / "a.db-wal"):
        if path.exists():
            assert body not in path.read_bytes().replace(b"\n", b"")
    assert b"PRIVATE" not in out.read_bytes()


def test_cli_third_party_flow(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    log = _log(tmp_path / "a.db")
    out = tmp_path / "cp.json"
    args = ["--log", str(log.path)]
    r = runner.invoke(
        audit_app, ["checkpoint", "export", *args, "--key", str(keys[0]), "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    verify = ["checkpoint", "verify", "--public-key", str(keys[1]), "--checkpoint", str(out)]
    r = runner.invoke(audit_app, [*verify, *args])
    assert r.exit_code == 0, r.output
    assert "signature valid" in r.output and "chain intact: 30 entries" in r.output
    con = sqlite3.connect(log.path)
    con.execute("DELETE FROM audit_log WHERE seq >= 20")
    con.commit()
    con.close()
    r = runner.invoke(audit_app, [*verify, *args])
    assert r.exit_code == 1
    assert "chain broken at entry #20" in r.output and "truncated" in r.output
    r = runner.invoke(audit_app, ["verify", *args, "--public-key", str(keys[1])])
    assert r.exit_code == 1 and "entry #20" in r.output
    doc = json.loads(out.read_text())
    doc["count"] = 19
    out.write_text(json.dumps(doc))
    r = runner.invoke(audit_app, [*verify, *args])
    assert r.exit_code == 1 and "bad checkpoint" in r.output
    r = runner.invoke(audit_app, [*verify[:2], str(tmp_path / "missing.pub"), *verify[3:], *args])
    assert r.exit_code == 2

"""Report section 6 checks the newest signed checkpoint with ``audit.pub`` beside the log (as
``provguard audit verify`` does) and words the coverage line by what was checked (finding M1
of the fresh user's demo: "Covered by a signed checkpoint: every entry" next to "signature not
checked here"). Real small stores, real Ed25519 keys, real rendering."""

from __future__ import annotations

import dataclasses
import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.audit.coverage import assess
from provguard.audit.signing import (
    SignedCheckpoint,
    generate_private_key,
    key_id,
    load_public_key,
    public_key_pem,
)
from provguard.cli.report import report_cmd
from provguard.errors import AuditError
from provguard.report.from_store import build_model_from_store
from provguard.report.render import render_html

runner = CliRunner()
AT = datetime(2019, 7, 1, 8, 0, tzinfo=UTC)


def _dd(html: str, anchor: str) -> str:
    part = html.split(f'id="{anchor}">')[1].split("</dd>")[0]
    return " ".join(re.sub(r"<[^>]+>", " ", part).split())


def _cli(root: Path, *extra: str) -> tuple[int, str]:
    app = typer.Typer()
    app.command()(report_cmd)
    r = runner.invoke(app, ["--store", str(root), *extra])
    return r.exit_code, r.output + (r.stderr if r.stderr_bytes else "")


@pytest.fixture
def signed_store(small_store: tuple[Path, dict[str, object]]) -> tuple[Path, SignedCheckpoint]:
    """The small store with a checkpoint of all its entries signed and ``audit.pub`` beside."""
    root, _ = small_store
    key = generate_private_key()
    with SqliteAuditLog(root / "control.db", create=False) as log:
        signed = log.sign_checkpoint(key, at=AT)
    (root / "audit.pub").write_text(public_key_pem(key.public_key()), encoding="ascii")
    return root, signed


def test_audit_pub_beside_the_log_verifies_the_checkpoint(
    signed_store: tuple[Path, SignedCheckpoint],
) -> None:
    root, signed = signed_store
    model = build_model_from_store(root)
    assert model.audit is not None and model.audit.checkpoint is not None
    c = model.audit.checkpoint
    assert (c.signature_ok, c.key_file, c.head_in_log) == (True, "audit.pub", True)
    assert c.public_key_id == c.key_id == signed.key_id
    expected = (
        f"every entry (#1–#{signed.count}) is covered by a checkpoint signed by key "
        f"{signed.key_id}, signature verified with audit.pub"
    )
    html = render_html(model)
    assert _dd(html, "audit-coverage").startswith(expected + ".")
    assert "signature verified with audit.pub" in _dd(html, "audit-checkpoint")
    assert "not checked" not in html and "no public key was given" not in html
    # the same verdict as 'provguard audit verify' with the same key
    with SqliteAuditLog(root / "control.db", create=False) as log:
        verdict = assess(log, public_key=load_public_key(root / "audit.pub"))
    assert verdict.fully_covered and verdict.covered == signed.count
    code, out = _cli(root)
    assert code == 0, out
    assert f"coverage: {expected}" in out


def test_without_audit_pub_the_signature_is_not_checked(
    signed_store: tuple[Path, SignedCheckpoint],
) -> None:
    root, signed = signed_store
    (root / "audit.pub").unlink()
    model = build_model_from_store(root)
    assert model.audit is not None and model.audit.checkpoint is not None
    assert model.audit.checkpoint.signature_ok is None
    assert model.audit.checkpoint.key_file is None
    html = render_html(model)
    assert _dd(html, "audit-coverage").startswith(
        f"every entry (#1–#{signed.count}) is covered by a checkpoint whose signature was not "
        "checked (no public key beside the log)."
    )
    assert _dd(html, "audit-checkpoint").endswith(
        "(signature not checked: no public key beside the log)"
    )
    assert "signature verified" not in html
    code, out = _cli(root)
    assert code == 0, out


def test_an_explicit_key_is_named(signed_store: tuple[Path, SignedCheckpoint]) -> None:
    root, _ = signed_store
    key_file = root.parent / "operator.pub"
    (root / "audit.pub").rename(key_file)
    code, out = _cli(root, "--public-key", str(key_file))
    assert code == 0, out
    assert f"signature verified with {key_file}" in " ".join(out.split())


def test_audit_pub_of_another_key_checks_nothing(
    signed_store: tuple[Path, SignedCheckpoint],
) -> None:
    root, signed = signed_store
    other = generate_private_key().public_key()
    (root / "audit.pub").write_text(public_key_pem(other), encoding="ascii")
    model = build_model_from_store(root)
    assert model.audit is not None and model.audit.checkpoint is not None
    c = model.audit.checkpoint
    assert (c.signature_ok, c.key_file, c.public_key_id) == (None, "audit.pub", key_id(other))
    text = _dd(render_html(model), "audit-coverage")
    assert text.startswith(
        f"every entry (#1–#{signed.count}) is covered by a checkpoint whose signature was not "
        f"checked (audit.pub holds key {key_id(other)}, but the checkpoint names key "
        f"{signed.key_id})."
    )


def test_a_forged_signature_covers_nothing_and_fails_the_cli(
    signed_store: tuple[Path, SignedCheckpoint],
) -> None:
    root, signed = signed_store
    forged = dataclasses.replace(signed, signature=bytes(64))
    with SqliteAuditLog(root / "control.db", create=False) as log:
        log.store_checkpoint(forged)  # same count, stored later: the newest
    model = build_model_from_store(root)
    assert model.audit is not None and model.audit.checkpoint is not None
    assert model.audit.checkpoint.signature_ok is False
    html = render_html(model)
    assert _dd(html, "audit-coverage").startswith(
        f"no entry is covered: the newest stored checkpoint is a checkpoint claiming key "
        f"{signed.key_id} whose signature does NOT verify with audit.pub."
    )
    assert "signature invalid (checked with audit.pub)" in html
    code, out = _cli(root)
    assert code == 1, out


def test_a_log_truncated_after_signing_is_not_called_covered(
    signed_store: tuple[Path, SignedCheckpoint],
) -> None:
    root, signed = signed_store
    con = sqlite3.connect(root / "control.db")
    with con:
        con.execute("DELETE FROM audit_log WHERE seq > ?", (signed.count - 2,))
    con.close()
    model = build_model_from_store(root)
    assert model.audit is not None and model.audit.verify_ok  # the rest of the chain is intact
    assert model.audit.entries == signed.count - 2
    assert model.audit.checkpoint is not None and model.audit.checkpoint.head_in_log is False
    assert _dd(render_html(model), "audit-coverage").startswith(
        f"no entry is covered: a checkpoint signed by key {signed.key_id}, signature verified "
        f"with audit.pub counts {signed.count} entries but the log holds only "
        f"{signed.count - 2} (entries #{signed.count - 1}–#{signed.count} are missing: the log "
        "was truncated after signing)."
    )
    code, out = _cli(root)
    assert code == 1, out


def test_entries_after_the_checkpoint_are_named(
    signed_store: tuple[Path, SignedCheckpoint],
) -> None:
    root, signed = signed_store
    with SqliteAuditLog(root / "control.db", create=False) as log:
        log.append("note", {"text": "after the checkpoint"}, at=AT)
        log.append("note", {"text": "and one more"}, at=AT)
    model = build_model_from_store(root)
    n = signed.count
    assert _dd(render_html(model), "audit-coverage").startswith(
        f"entries #1–#{n} are covered by a checkpoint signed by key {signed.key_id}, signature "
        f"verified with audit.pub; entries after #{n} (#{n + 1}–#{n + 2}) are not covered by "
        "any signed checkpoint."
    )


def test_an_unreadable_audit_pub_is_a_clear_error(
    signed_store: tuple[Path, SignedCheckpoint],
) -> None:
    root, _ = signed_store
    (root / "audit.pub").write_text("not a key\n", encoding="ascii")
    with pytest.raises(AuditError, match=r"audit\.pub is not a PEM public key") as err:
        build_model_from_store(root)
    assert err.value.code == "PG300"
    code, out = _cli(root)
    assert code == 2 and "PG300" in out, out
    assert not (root / "report.html").exists()  # nothing half-written

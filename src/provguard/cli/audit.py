"""``provguard audit ...``: verify and inspect a tamper-evident audit log.

Mounted by :mod:`provguard.cli.main` as the ``audit`` command group. Exit codes: 0 the chain is
intact / the listing succeeded, 1 the chain is broken or a checkpoint's signature is wrong, 2 the
log or a key cannot be opened or the arguments are wrong.

``audit keygen`` makes an Ed25519 key pair; ``audit checkpoint export`` signs the log's current
head and writes the checkpoint as JSON; ``audit checkpoint verify`` lets a third party check that
file and the log with the public key alone (:mod:`provguard.audit.signing`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.audit.chain import Checkpoint, VerifyResult
from provguard.audit.signing import (
    CheckpointSignatureError,
    SignedCheckpoint,
    key_id,
    load_private_key,
    load_public_key,
    verify_signed_checkpoint,
    write_keypair,
)
from provguard.errors import AuditError, StoreError

audit_app = typer.Typer(
    name="audit",
    help="Verify and inspect the hash-chained audit log.",
    no_args_is_help=True,
    add_completion=False,
)

checkpoint_app = typer.Typer(
    name="checkpoint",
    help="Export and verify Ed25519-signed checkpoints of the audit chain.",
    no_args_is_help=True,
    add_completion=False,
)
audit_app.add_typer(checkpoint_app, name="checkpoint")

LogOption = Annotated[
    Path, typer.Option("--log", help="The audit log (SQLite file).", show_default=False)
]


def _console() -> Console:
    # soft_wrap: never break a 64-char hash across lines; highlight off: plain, stable output
    return Console(soft_wrap=True, highlight=False)


def _open(log: Path, console: Console) -> SqliteAuditLog:
    try:
        return SqliteAuditLog(log, create=False)
    except StoreError as exc:
        console.print(f"[red]error:[/red] {escape(exc.message)}")
        raise typer.Exit(2) from exc


@audit_app.command("verify")
def verify(
    log: LogOption,
    expect_count: Annotated[
        int | None,
        typer.Option(help="Checkpoint: the number of entries recorded earlier.", min=0),
    ] = None,
    expect_head: Annotated[
        str | None,
        typer.Option(help="Checkpoint: the head hash recorded together with --expect-count."),
    ] = None,
    public_key: Annotated[
        Path | None,
        typer.Option(
            "--public-key",
            help="Also check the newest checkpoint stored in the log that this key signed.",
        ),
    ] = None,
) -> None:
    """Recompute the hash chain; exit 0 if intact, 1 if broken (naming the first bad entry).

    With --expect-count and --expect-head (a checkpoint kept outside the log) truncation of the
    tail and a rewrite of the whole chain are detected too.
    """
    console = _console()
    if (expect_count is None) != (expect_head is None):
        console.print("[red]error:[/red] --expect-count and --expect-head go together")
        raise typer.Exit(2)
    checkpoint = (
        Checkpoint(expect_count, expect_head.lower())
        if expect_count is not None and expect_head is not None
        else None
    )
    key = _public_key(public_key, console) if public_key is not None else None
    audit_log = _open(log, console)
    try:
        if key is not None and checkpoint is None:
            kid = key_id(key)
            stored = [c for c in audit_log.signed_checkpoints() if c.key_id == kid]
            if stored:
                checkpoint = verify_signed_checkpoint(stored[-1], key)
                console.print(
                    f"signed checkpoint: {checkpoint.count} entries, head "
                    f"{checkpoint.head_hash} (key {kid}, signature valid)"
                )
            else:
                console.print(f"no checkpoint signed by key {kid} is stored in the log")
        result = audit_log.verify(checkpoint)
    except CheckpointSignatureError as exc:
        console.print(f"[red]bad checkpoint:[/red] {escape(exc.message)}")
        raise typer.Exit(1) from exc
    except (StoreError, AuditError) as exc:
        console.print(f"[red]error:[/red] {escape(exc.message)}")
        raise typer.Exit(2) from exc
    finally:
        audit_log.close()
    _print_result(result, console)


def _print_result(result: VerifyResult, console: Console) -> None:
    if result.ok:
        console.print(
            f"[green]chain intact:[/green] {result.count} entries, head {result.head_hash}"
        )
        return
    console.print(
        f"[red]chain broken at entry #{result.first_bad_seq}:[/red] {escape(result.reason or '')}"
    )
    raise typer.Exit(1)


def _public_key(path: Path, console: Console) -> Ed25519PublicKey:
    try:
        return load_public_key(path)
    except AuditError as exc:
        console.print(f"[red]error:[/red] {escape(exc.message)}")
        raise typer.Exit(2) from exc


@audit_app.command("keygen")
def keygen(
    private_key: Annotated[
        Path, typer.Option("--private-key", help="Where to write the private key (mode 0600).")
    ],
    public_key: Annotated[
        Path, typer.Option("--public-key", help="Where to write the public key (PEM).")
    ],
    force: Annotated[bool, typer.Option(help="Overwrite existing key files.")] = False,
) -> None:
    """Generate an Ed25519 key pair for signing checkpoints; prints the key id."""
    console = _console()
    try:
        kid = write_keypair(private_key, public_key, overwrite=force)
    except (AuditError, OSError) as exc:
        message = exc.message if isinstance(exc, AuditError) else str(exc)
        console.print(f"[red]error:[/red] {escape(message)}")
        raise typer.Exit(2) from exc
    console.print(f"key {kid}: private {private_key} (keep secret), public {public_key}")


@checkpoint_app.command("export")
def checkpoint_export(
    log: LogOption,
    key: Annotated[Path, typer.Option("--key", help="The Ed25519 private key (PEM).")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the checkpoint JSON.")],
    log_id: Annotated[
        str | None, typer.Option(help="Name of the log in the checkpoint (default: file name).")
    ] = None,
) -> None:
    """Sign the log's current head (count + hash), keep it in the log and write it as JSON.

    The file holds no secret: hand it, with the public key, to whoever must verify the log later.
    """
    console = _console()
    try:
        private = load_private_key(key)
    except AuditError as exc:
        console.print(f"[red]error:[/red] {escape(exc.message)}")
        raise typer.Exit(2) from exc
    audit_log = _open(log, console)
    try:
        signed = audit_log.sign_checkpoint(private, log_id=log_id)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(signed.to_json(), encoding="utf-8")
    except (StoreError, OSError) as exc:
        message = exc.message if isinstance(exc, StoreError) else str(exc)
        console.print(f"[red]error:[/red] {escape(message)}")
        raise typer.Exit(2) from exc
    finally:
        audit_log.close()
    console.print(
        f"checkpoint: {signed.count} entries, head {signed.head_hash}, key {signed.key_id} -> {out}"
    )


@checkpoint_app.command("verify")
def checkpoint_verify(
    public_key: Annotated[
        Path, typer.Option("--public-key", help="The signer's Ed25519 public key (PEM).")
    ],
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="The checkpoint JSON file.")],
    log: LogOption,
) -> None:
    """Check a checkpoint's signature with the public key alone, then the log against it.

    Exit 0: signature valid and the log still holds the checkpointed chain (later entries are
    allowed); 1: bad signature, truncated or rewritten log (naming the first bad entry);
    2: a file cannot be read.
    """
    console = _console()
    key = _public_key(public_key, console)
    try:
        signed = SignedCheckpoint.from_json(checkpoint.read_text(encoding="utf-8"))
    except OSError as exc:
        console.print(f"[red]error:[/red] cannot read {checkpoint}: {exc.strerror}")
        raise typer.Exit(2) from exc
    except CheckpointSignatureError as exc:
        console.print(f"[red]bad checkpoint:[/red] {escape(exc.message)}")
        raise typer.Exit(1) from exc
    try:
        trusted = verify_signed_checkpoint(signed, key)
    except CheckpointSignatureError as exc:
        console.print(f"[red]bad checkpoint:[/red] {escape(exc.message)}")
        raise typer.Exit(1) from exc
    console.print(
        f"signature valid: key {signed.key_id} signed {trusted.count} entries, head "
        f"{trusted.head_hash} at {signed.stored_at_text()}"
    )
    audit_log = _open(log, console)
    try:
        result = audit_log.verify(trusted)
    except StoreError as exc:
        console.print(f"[red]error:[/red] {escape(exc.message)}")
        raise typer.Exit(2) from exc
    finally:
        audit_log.close()
    _print_result(result, console)


@audit_app.command("show")
def show(
    log: LogOption,
    kind: Annotated[str | None, typer.Option(help="Only entries of this kind.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many entries.", min=1)] = 20,
    start: Annotated[int, typer.Option(help="Start at this seq (1-based).", min=1)] = 1,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per line instead of a table.")
    ] = False,
) -> None:
    """List entries in seq order (seq, time, kind, payload, hash prefix)."""
    console = _console()
    audit_log = _open(log, console)
    try:
        entries = list(audit_log.entries(kind=kind, start=start, limit=limit))
    except StoreError as exc:
        console.print(f"[red]error:[/red] {escape(exc.message)}")
        raise typer.Exit(2) from exc
    finally:
        audit_log.close()
    if as_json:
        for e in entries:
            record = {
                "seq": e.seq,
                "at": e.stored_at(),
                "kind": e.kind,
                "payload": e.payload,
                "prev_hash": e.prev_hash,
                "hash": e.hash,
            }
            typer.echo(json.dumps(record, ensure_ascii=False, sort_keys=True))
        return
    table = Table(title=f"audit log {log} ({len(entries)} shown)", show_lines=False)
    table.add_column("seq", justify="right", no_wrap=True)
    table.add_column("at (UTC)", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("payload", overflow="fold")
    table.add_column("hash", no_wrap=True)
    for e in entries:
        table.add_row(
            str(e.seq), e.stored_at(), escape(e.kind), escape(e.stored_payload()), e.hash[:12]
        )
    console.print(table)

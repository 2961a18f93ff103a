"""``provguard audit ...``: verify and inspect a tamper-evident audit log.

Mounted by :mod:`provguard.cli.main` as the ``audit`` command group. Exit codes: 0 the chain is
intact / the listing succeeded, 1 the chain is broken, 2 the log cannot be opened or the
arguments are wrong.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.audit.chain import Checkpoint
from provguard.errors import StoreError

audit_app = typer.Typer(
    name="audit",
    help="Verify and inspect the hash-chained audit log.",
    no_args_is_help=True,
    add_completion=False,
)

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
    audit_log = _open(log, console)
    try:
        result = audit_log.verify(checkpoint)
    except StoreError as exc:
        console.print(f"[red]error:[/red] {escape(exc.message)}")
        raise typer.Exit(2) from exc
    finally:
        audit_log.close()
    if result.ok:
        console.print(
            f"[green]chain intact:[/green] {result.count} entries, head {result.head_hash}"
        )
        return
    console.print(
        f"[red]chain broken at entry #{result.first_bad_seq}:[/red] {escape(result.reason or '')}"
    )
    raise typer.Exit(1)


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

"""``provguard audit ...``: verify and inspect a tamper-evident audit log.

Mounted by :mod:`provguard.cli.main` as the ``audit`` command group. Exit codes: 0 the chain is
intact / the listing succeeded, 1 the chain is broken or a checkpoint's signature is wrong, 2 the
log or a key cannot be opened or the arguments are wrong. Errors go to stderr as
``error [PGxxx] message`` (:mod:`provguard.errors` codes), like every other provguard command:
PG310 broken chain, PG320 bad checkpoint, PG321 an exported checkpoint under another key than
the one given, PG330 (``--require-signed``) entries no signed checkpoint covers, PG100 bad
options, PG200 unreadable / unwritable file, PG300 bad key file.

``audit verify --log out/demo/control.db`` compares the log with every checkpoint stored in it
(signatures unchecked without a key), and uses ``audit.pub`` and ``checkpoint.json`` found beside
the log (what ``provguard run`` leaves there, :mod:`provguard.audit.folder`), so a truncated log
is found without ``--expect-count``; its last line says which entries a signed checkpoint covers
(:mod:`provguard.audit.coverage`, docs/audit.md).

``audit keygen`` makes an Ed25519 key pair; ``audit checkpoint export`` signs the log's current
head and writes the checkpoint as JSON; ``audit checkpoint verify`` lets a third party check that
file and the log with the public key alone (:mod:`provguard.audit.signing`).
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.adapters.control_sqlite import check_registry, check_store
from provguard.audit.chain import (
    DEFAULT_TIME_TOLERANCE,
    AuditEntry,
    Checkpoint,
    TimeOrderResult,
    VerifyResult,
    check_time_order,
)
from provguard.audit.coverage import (
    Assessment,
    CheckpointKeyMismatchError,
    UncoveredEntriesError,
    assess,
)
from provguard.audit.crosscheck import (
    CrossCheckResult,
    StoreChainMismatchError,
    TableCheck,
    VerifiedRange,
)
from provguard.audit.folder import FolderEvidence, evidence_beside
from provguard.audit.signing import (
    CheckpointSignatureError,
    SignedCheckpoint,
    key_id,
    load_private_key,
    load_public_key,
    verify_signed_checkpoint,
    write_keypair,
)
from provguard.cli.common import err_console
from provguard.errors import (
    AuditChainError,
    AuditError,
    AuditTimeOrderError,
    InputError,
    ProvguardError,
    StoreError,
)
from provguard.report.anchor import (
    REPORT_ENTRY_KIND,
    file_statement,
    find_report_entry,
    folder_file_checks,
)
from provguard.report.audit_text import AUDIT_OFF_KIND, audit_off_sentence, audit_off_view
from provguard.report.model import AuditOffView

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


def _fail(error: ProvguardError, exit_code: int) -> NoReturn:
    """Print ``error [PGxxx] message`` on stderr (as every provguard command does) and exit:
    1 = the evidence does not hold (broken chain, bad checkpoint), 2 = bad input or I/O."""
    _print_error(error)
    raise typer.Exit(exit_code)


def _os_error(exc: OSError, what: str) -> StoreError:
    return StoreError(f"cannot {what}: {exc.strerror or exc}")


def _open(log: Path) -> SqliteAuditLog:
    try:
        return SqliteAuditLog(log, create=False)
    except StoreError as exc:
        _fail(exc, 2)


def _public_key(path: Path) -> Ed25519PublicKey:
    try:
        return load_public_key(path)
    except AuditError as exc:
        _fail(exc, 2)


def _read_checkpoint(path: Path) -> SignedCheckpoint:
    try:
        return SignedCheckpoint.from_json(path.read_text(encoding="utf-8"))
    except OSError as exc:
        _fail(_os_error(exc, f"read {path}"), 2)
    except CheckpointSignatureError as exc:
        _fail(CheckpointSignatureError(f"{path}: {exc.message}"), 1)


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
            help="Check the checkpoints this key signed (stored in the log, and --checkpoint). "
            "Default: audit.pub beside the log, if there is one.",
        ),
    ] = None,
    checkpoint_file: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            help="An exported signed checkpoint (JSON) to check too. "
            "Default: checkpoint.json beside the log, if there is one.",
        ),
    ] = None,
    beside: Annotated[
        bool,
        typer.Option(
            "--beside/--no-beside",
            help="Use audit.pub and checkpoint.json found in the log's folder.",
        ),
    ] = True,
    require_signed: Annotated[
        bool,
        typer.Option(
            "--require-signed",
            help="Exit 1 (PG330) unless a checkpoint whose signature verified covers every entry.",
        ),
    ] = False,
    time_tolerance: Annotated[
        float,
        typer.Option(
            "--time-tolerance",
            help="Seconds an entry may be stamped before the entry preceding it (writers "
            "stamp at submission; clocks step) before it is reported (PG311, exit 1).",
            min=0.0,
        ),
    ] = DEFAULT_TIME_TOLERANCE.total_seconds(),
    grant_db: Annotated[
        str | None,
        typer.Option(
            "--grant-db",
            help="The grant registry (SQLite file or URL) to cross-check with the chain's "
            "grant.* events. Default: grants.db beside the log, if there is one.",
        ),
    ] = None,
    anchor: Annotated[
        Path | None,
        typer.Option(
            "--anchor",
            help="A signed checkpoint (JSON) the auditor kept from an earlier look: the log must "
            "still hold its entries (PG310 if it is shorter, or its entry at the anchor's count "
            "has another hash). Pins what was seen, so an older checkpoint.json put back with a "
            "log cut to it does not pass.",
        ),
    ] = None,
) -> None:
    """Recompute the hash chain and compare it with every checkpoint; exit 0 if intact.

    Always compared: the checkpoints stored in the log itself (even with no public key: one
    that counts more entries than the log holds, or whose head differs, fails with PG310) and
    checkpoint.json beside the log. With the public key (--public-key, else audit.pub beside
    the log) their Ed25519 signatures are checked too. The last line says which entries a
    signed checkpoint covers ("entries after #N are not covered by any signed checkpoint").

    --anchor FILE: a checkpoint the auditor kept (e.g. a copy of checkpoint.json from an
    earlier look). The log and its folder cannot vouch against their own replacement by an
    older genuine state; the anchor, kept elsewhere, does (docs/audit.md, "Pinning what you
    saw"). Its signature is checked when the signer's public key is known.

    Exit 0: chain intact and consistent with every checkpoint. Exit 1: PG310 broken chain,
    truncated or rewritten log, or a log that no longer holds the --anchor (naming the
    checkpoint that shows it); PG320 a checkpoint that
    is malformed or whose signature fails; PG321 the exported checkpoint was signed by another
    key than the one given; PG330 with --require-signed, entries no signed checkpoint covers.
    Exit 2: bad options (PG100), unreadable file (PG200), bad key file (PG300).
    """
    console = _console()
    if (expect_count is None) != (expect_head is None):
        _fail(InputError("--expect-count and --expect-head go together"), 2)
    if anchor is not None and expect_count is not None:
        _fail(InputError("give --anchor or --expect-count/--expect-head, not both"), 2)
    found = evidence_beside(log) if beside else FolderEvidence(None, None)
    key_path = public_key if public_key is not None else found.public_key
    exported_path = checkpoint_file if checkpoint_file is not None else found.checkpoint
    if checkpoint_file is not None and key_path is None:
        _fail(InputError("--checkpoint needs the signer's --public-key"), 2)
    key = _public_key(key_path) if key_path is not None else None
    exported = _read_checkpoint(exported_path) if exported_path is not None else None
    if key_path is not None and public_key is None:
        console.print(
            f"public key: {key_path} (found beside the log; it vouches for the log only if "
            "this copy can be trusted -- see docs/audit.md)"
        )
    elif key_path is None:
        console.print(
            "public key: none given or found beside the log -- no signature is checked; "
            "the log is still compared with every checkpoint it stores"
        )
    pinned = _read_checkpoint(anchor) if anchor is not None else None
    if pinned is not None and anchor is not None:
        _print_anchor(pinned, anchor, key, console)
    audit_log = _open(log)
    timing: TimeOrderResult | None = None
    audit_off: list[AuditOffView] = []
    reports: list[AuditEntry] = []
    try:
        expected = (
            Checkpoint(expect_count, expect_head.lower())
            if expect_count is not None and expect_head is not None
            else pinned.checkpoint
            if pinned is not None
            else None
        )
        found_cp = assess(
            audit_log,
            public_key=key,
            exported=exported,
            exported_path=exported_path,
            expected=expected,
            expected_label=(
                f"--anchor {anchor}, {pinned.count} entries"
                if pinned is not None and anchor is not None
                else None
            ),
        )
        timing = check_time_order(audit_log.timestamps(), timedelta(seconds=time_tolerance))
        # fresh user 12, M2: the periods the HTTP service answered decisions unrecorded
        audit_off = [audit_off_view(e) for e in audit_log.entries(kind=AUDIT_OFF_KIND)]
        # fresh user 12, H3: the report files the newest job.report entry anchors
        reports = list(audit_log.entries(kind=REPORT_ENTRY_KIND)) if beside else []
    except CheckpointSignatureError as exc:
        _fail(exc, 1)
    except (StoreError, AuditError) as exc:
        _fail(exc, 2)
    finally:
        audit_log.close()
    _print_checkpoints(found_cp, exported, exported_path, console)
    _print_result(found_cp.result, console, fail=False)
    if found_cp.result.ok:
        console.print(f"coverage: {found_cp.coverage_line()}")
    for v in audit_off:
        console.print(escape(f"warning: {audit_off_sentence(v)}"), highlight=False, soft_wrap=True)
    errors: list[ProvguardError] = []
    r = found_cp.result
    if not r.ok:
        errors.append(
            AuditChainError(
                f"chain broken at entry #{r.first_bad_seq}: {r.reason or ''}", r.first_bad_seq
            )
        )
    assert timing is not None
    if timing.ok:
        console.print(timing.message())
    else:
        errors.append(AuditTimeOrderError(timing.message(), timing.regressions[0].seq))
    if found_cp.key_mismatch is not None:
        errors.append(found_cp.key_mismatch)
    if require_signed and r.ok and not found_cp.fully_covered:
        errors.append(
            UncoveredEntriesError(
                f"--require-signed: {found_cp.coverage_line()}"
                if found_cp.covered
                else "--require-signed: no signed checkpoint covers this log"
            )
        )
    # the tables the report counts from must say what the chain says (docs/audit.md); with
    # the signer's public key, their entries must also be covered by a signed checkpoint
    # (findings I-2: forged entries appended with real ids, and the table edited to match)
    signed = found_cp.covered if key is not None else None
    last = r.count if r.ok else max((r.first_bad_seq or 1) - 1, 0)
    verified = VerifiedRange(1, last, None if signed is None else min(signed, last))
    registry: str | Path | None = grant_db
    if registry is None and beside and (log.parent / "grants.db").is_file():
        registry = log.parent / "grants.db"
    try:
        checked = check_store(log, verified=verified)
        if registry is not None:
            extra = check_registry(registry, log, verified=verified)
            checked = CrossCheckResult((*checked.tables, *extra.tables))
    except StoreError as exc:
        _fail(exc, 2)
    for t in checked.tables:
        if t.present:
            console.print(
                f"cross-check {t.table}: {t.rows} rows, {t.matched} match the chain,"
                f" {len(t.discrepancies)} discrepancies; {_signature_note(t, verified)}"
            )
    if not checked.ok:
        errors.append(StoreChainMismatchError(checked.message(), checked.discrepancies))
    files = _check_report_files(log.parent, reports, verified, console) if beside else ()
    differ = [d for t in files for d in t.discrepancies]
    if differ:
        errors.append(
            StoreChainMismatchError(
                f"the report files beside the log are not the ones the audit chain anchors "
                f"(job.report entry #{differ[0].seq}): "
                + "; ".join(
                    f"{d.table} {d.field} {d.table_value!r}, chain {d.chain_value!r}"
                    for d in differ
                ),
                tuple(differ),
            )
        )
    if errors:
        for error in errors[:-1]:
            _print_error(error)
        _fail(errors[-1], 1)


def _check_report_files(
    folder: Path, reports: list[AuditEntry], verified: VerifiedRange, console: Console
) -> tuple[TableCheck, ...]:
    """Compare the report files in ``folder`` (report.html, evidence.json, the scan and cards
    Parquet files) with the newest ``job.report`` entry of ``reports``
    (:func:`provguard.report.anchor.folder_file_checks`) and print one line per file; a
    differing file is a discrepancy (PG340, exit 1) like a table's."""
    found = find_report_entry(reports, None, verified)
    checks = folder_file_checks(folder, found)
    for t in checks:
        if t.ok:
            state = f"matches job.report entry #{found.seq}"
        else:
            d = t.discrepancies[0]
            state = escape(
                file_statement(t.table, d.table_value, d.chain_value, d.seq, d.field)
                .split(" -- ")[1]
                .replace("it was changed after the run", "it was changed after it was anchored")
            )
        console.print(f"report file {t.table}: {state}", highlight=False, soft_wrap=True)
    return checks


def _signature_note(t: TableCheck, verified: VerifiedRange) -> str:
    """Whether the table's rows rest on entries a signed checkpoint covers."""
    if verified.signed is None:
        return "signatures not required (no public key given or found beside the log)"
    unsigned = t.unsigned
    if not unsigned:
        return (
            "every chained entry compared is covered by a signed checkpoint "
            f"(up to #{verified.signed})"
        )
    shown = ", ".join(unsigned[:3]) + (
        f", and {len(unsigned) - 3} more" if len(unsigned) > 3 else ""
    )
    return (
        f"{len(unsigned)} row(s) rest only on entries no signed checkpoint covers "
        f"(signed up to #{verified.signed}): {shown}"
    )


def _print_anchor(
    pinned: SignedCheckpoint, path: Path, key: Ed25519PublicKey | None, console: Console
) -> None:
    """Say what the anchor is and whether its signature was checked; a signature that fails
    under the signer's key is PG320 (exit 1)."""
    head = f"anchor {path}: {pinned.count} entries, head {pinned.head_hash}"
    if key is not None and pinned.key_id == key_id(key):
        try:
            verify_signed_checkpoint(pinned, key)
        except CheckpointSignatureError as exc:
            _fail(CheckpointSignatureError(f"--anchor {path}: {exc.message}"), 1)
        console.print(f"{head}, signature valid (key {pinned.key_id})")
    elif key is not None:
        console.print(
            f"{head}, signed by key {pinned.key_id}, not the public key used ({key_id(key)}): "
            "its signature is not checked; the log is still compared with it"
        )
    else:
        console.print(f"{head}, signature not checked (no public key); compared with the log")


def _print_checkpoints(
    found: Assessment,
    exported: SignedCheckpoint | None,
    exported_path: Path | None,
    console: Console,
) -> None:
    """The lines that say which checkpoints the log was compared with, and how."""
    stored = [c for c in found.checkpoints if c.source == "stored"]
    kid = found.key_id
    mine = [c for c in stored if c.signature_verified]
    others = [c for c in stored if not c.signature_verified]
    if kid is not None:
        if mine:
            newest = mine[-1].checkpoint
            console.print(
                f"signed checkpoints stored in the log: {len(mine)} by key {kid}, signatures "
                f"valid; newest: {newest.count} entries, head {newest.head_hash}"
            )
        else:
            console.print(f"no checkpoint signed by key {kid} is stored in the log")
    if others:
        keys = ", ".join(sorted({c.signed_by or "?" for c in others}))
        newest = others[-1].checkpoint
        why = (
            f"signed by key {keys}, not by the key given ({kid})"
            if kid is not None
            else f"signed by key {keys}; no public key, so signatures not checked"
        )
        console.print(
            f"checkpoints stored in the log compared unsigned: {len(others)} ({why}); "
            f"newest: {newest.count} entries, head {newest.head_hash}"
        )
    elif kid is None:
        console.print("checkpoints stored in the log: none")
    if exported is None:
        console.print("exported checkpoint: none given or found beside the log")
    elif found.key_mismatch is None:
        verified = any(c.source == "exported" and c.signature_verified for c in found.checkpoints)
        state = (
            "signature valid"
            if verified
            else f"signed by key {exported.key_id}: signature not checked (no public key)"
        )
        console.print(
            f"exported checkpoint {exported_path}: {exported.count} entries, head "
            f"{exported.head_hash}, {state}"
        )


def _print_error(error: ProvguardError) -> None:
    text = str(error)
    if isinstance(error, CheckpointSignatureError) and not isinstance(
        error, CheckpointKeyMismatchError
    ):
        text = f"[{error.code}] bad checkpoint: {error.message}"
    err_console.print(f"[bold red]error[/] {escape(text)}", highlight=False, soft_wrap=True)


def _print_result(result: VerifyResult, console: Console, *, fail: bool = True) -> None:
    if result.ok:
        console.print(
            f"[green]chain intact:[/green] {result.count} entries, head {result.head_hash}"
        )
        return
    if not fail:
        return
    _fail(
        AuditChainError(
            f"chain broken at entry #{result.first_bad_seq}: {result.reason or ''}",
            result.first_bad_seq,
        ),
        1,
    )


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
    except AuditError as exc:
        _fail(exc, 2)
    except OSError as exc:
        _fail(_os_error(exc, "write the key files"), 2)
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
        _fail(exc, 2)
    audit_log = _open(log)
    try:
        signed = audit_log.sign_checkpoint(private, log_id=log_id)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(signed.to_json(), encoding="utf-8")
    except StoreError as exc:
        _fail(exc, 2)
    except OSError as exc:
        _fail(_os_error(exc, f"write {out}"), 2)
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
    allowed); 1: bad signature (PG320), a checkpoint signed by another key (PG321), truncated
    or rewritten log (PG310, naming the first bad entry); 2: a file cannot be read.
    """
    console = _console()
    key = _public_key(public_key)
    signed = _read_checkpoint(checkpoint)
    if signed.key_id != key_id(key):
        _fail(
            CheckpointKeyMismatchError(
                f"{checkpoint} was signed by key {signed.key_id}, not by the key you gave "
                f"({key_id(key)}): give the public key that signed it"
            ),
            1,
        )
    try:
        trusted = verify_signed_checkpoint(signed, key)
    except CheckpointSignatureError as exc:
        _fail(exc, 1)
    console.print(
        f"signature valid: key {signed.key_id} signed {trusted.count} entries, head "
        f"{trusted.head_hash} at {signed.stored_at_text()}"
    )
    audit_log = _open(log)
    try:
        result = audit_log.verify(trusted)
    except StoreError as exc:
        _fail(exc, 2)
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
    audit_log = _open(log)
    try:
        entries = list(audit_log.entries(kind=kind, start=start, limit=limit))
    except StoreError as exc:
        _fail(exc, 2)
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

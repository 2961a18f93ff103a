"""``provguard report --store DIR``: regenerate ``report.html`` + ``evidence.json`` from an
output folder's stores (:mod:`provguard.report.from_store`).

The newest signed checkpoint's Ed25519 signature is checked with ``--public-key``, else with
``audit.pub`` beside the log when it is there (as ``provguard audit verify`` does); the
``coverage:`` line and report section 6 say which key file verified it, or that none was found.

Before the report is filled, the control store's ``instrument_events``, ``transfers`` and
``campaigns`` tables are cross-checked against the chain (:mod:`provguard.audit.crosscheck`); a
section whose table disagrees is withheld (a PG340 statement replaces its figures) and a
``cross-check:`` line names the discrepancies.

Exit codes: 0 written and the audit chain verifies; 1 written, but the chain does not verify, or
the newest checkpoint's signature is invalid, or the log no longer holds the head it signed,
or a control-store table disagrees with the chain (PG340; the report says what is wrong: a
script must not file it as clean evidence); 2 the folder or a key cannot be read.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from provguard.audit.signing import load_public_key
from provguard.cli.common import console, err_console, user_errors
from provguard.report.anchor import (
    REPORT_ENTRY_KIND,
    ReportEntry,
    find_report_entry,
    rebuilt_entry_payload,
    replaced_files,
    set_aside,
)
from provguard.report.audit_text import audit_off_sentence, coverage_sentence
from provguard.report.from_store import build_model_from_store
from provguard.report.model import ChainCheckView, ReportModel
from provguard.report.render import report_digest, write_evidence, write_report


def report_cmd(
    store: Annotated[
        Path, typer.Option("--store", help="The output folder of 'provguard run' (control.db).")
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="Folder to write report.html and evidence.json into (default: --store)."),
    ] = None,
    as_of: Annotated[
        str | None,
        typer.Option(help="Evaluate instruments at this date (YYYY-MM-DD; default: inferred)."),
    ] = None,
    public_key: Annotated[
        Path | None,
        typer.Option(
            "--public-key",
            help="Check the newest signed checkpoint with this key (default: audit.pub beside "
            "the log, if there is one).",
        ),
    ] = None,
    grant_db: Annotated[
        str | None,
        typer.Option(
            help="Grant registry outside the folder (SQLite file or URL; default: the "
            "folder's grants.db): sign-ins, token exchanges, revocations."
        ),
    ] = None,
) -> None:
    """Rebuild the compliance report and its JSON evidence from the stores of an output folder."""
    with user_errors():
        from provguard.errors import InputError

        try:
            day = date.fromisoformat(as_of) if as_of else None
        except ValueError as exc:
            raise InputError(f"--as-of must be YYYY-MM-DD, got {as_of!r}") from exc
        key = load_public_key(public_key) if public_key is not None else None
        model = build_model_from_store(
            store,
            as_of=day,
            public_key=key,
            grant_db=grant_db,
            public_key_file=str(public_key) if public_key is not None else None,
        )
        target = out or store
        here = target.resolve() == store.resolve()
        found = _anchored_entry(store, model) if here else ReportEntry(None)
        # fresh user 12, H3: a report.html / evidence.json that is not the anchored one is
        # named and kept aside, never silently overwritten
        replaced = replaced_files(store, found)
        for name, (now, want) in replaced.items():
            kept = set_aside(store / name, found.seq)
            err_console.print(
                f"warning: {name} differed from the anchored one (job.report entry "
                f"#{found.seq} records SHA-256 {want or 'nothing'}, the file had {now}); "
                f"kept as {kept}",
                highlight=False,
                soft_wrap=True,
            )
        html = write_report(model, target / "report.html")
        evidence = write_evidence(model, target / "evidence.json")
        if here:
            _anchor_rebuilt(store, model, found, sorted(replaced))
    audit = model.audit
    chain = (
        "no audit log"
        if audit is None
        else (
            f"chain intact ({audit.entries:,} entries)"
            if audit.verify_ok
            else f"chain BROKEN at entry #{audit.first_bad_seq}"
        )
    )
    console.print(f"report: {html}", highlight=False, soft_wrap=True)
    console.print(
        f"evidence: {evidence} (report_sha256 {report_digest(model)})",
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        f"decisions: {sum(r.count for r in model.decision_counts):,}; {chain}", highlight=False
    )
    if audit is not None:
        console.print(f"coverage: {coverage_sentence(audit)}", highlight=False, soft_wrap=True)
    for off in model.service_audit_off:
        # decisions answered with the audit off: their number is unknown (fresh user 12, M2)
        console.print(
            escape(f"warning: {audit_off_sentence(off)}"), highlight=False, soft_wrap=True
        )
    if model.sign_ins is not None:
        s = model.sign_ins
        console.print(
            f"sign-ins: {s.completed:,}; token exchanges denied {s.exchanges_denied:,}, "
            f"permitted {s.exchanges_permitted:,} (grandfathered {s.exchanges_grandfathered:,})",
            highlight=False,
        )
    check = model.chain_check
    if check is not None:
        console.print(
            escape(f"cross-check: {crosscheck_line(check)}"), highlight=False, soft_wrap=True
        )
    cp = audit.checkpoint if audit is not None else None
    if (audit is not None and not audit.verify_ok) or (check is not None and not check.ok):
        raise typer.Exit(code=1)
    if cp is not None and (cp.signature_ok is False or cp.head_in_log is False):
        raise typer.Exit(code=1)


def _anchored_entry(store: Path, model: ReportModel) -> ReportEntry:
    """The newest ``job.report`` entry of ``store/control.db`` with a run range
    (:func:`provguard.report.anchor.find_report_entry`), checked against the entries the
    model's chain verification vouches for (signed ones when a key checked the checkpoint)."""
    from provguard.adapters.audit_sqlite import SqliteAuditLog
    from provguard.report.from_store import verified_range

    audit = model.audit
    log_path = store / "control.db"
    if audit is None or not log_path.is_file():
        return ReportEntry(None)
    with SqliteAuditLog(log_path, create=False) as log:
        candidates = list(log.entries(kind=REPORT_ENTRY_KIND))
    return find_report_entry(candidates, None, verified_range(audit, require_signed=True))


def _anchor_rebuilt(
    store: Path, model: ReportModel, found: ReportEntry, replaced: list[str]
) -> None:
    """Append a ``job.report`` entry for the report files just rewritten in ``store``
    (:func:`provguard.report.anchor.rebuilt_entry_payload`) and sign a checkpoint over it
    with the folder's key (:func:`provguard.audit.folder.cover_own_entry`), so that
    ``provguard audit verify`` finds the rebuilt files anchored; when the chain does not
    verify, no entry of a run vouches, or the key is not available, nothing is appended and
    stderr says why (``audit verify`` then reports the files as differing)."""
    from provguard.adapters.audit_sqlite import SqliteAuditLog
    from provguard.audit.folder import cover_own_entry, signing_key_beside

    if found.entry is None:
        return
    audit = model.audit
    why: str | None = None
    if audit is None or not audit.verify_ok:
        why = "the audit chain does not verify"
    elif found.problem is not None:
        why = f"the chain does not vouch for job.report entry #{found.seq} ({found.problem})"
    else:
        key, source = signing_key_beside(store.resolve())
        if key is None:
            why = source
    if why is not None:
        err_console.print(
            f"note: the rebuilt report is not anchored in the audit chain: {why}; "
            f"`provguard audit verify` compares the files with job.report entry #{found.seq}",
            highlight=False,
            soft_wrap=True,
        )
        return
    payload = rebuilt_entry_payload(
        store,
        found.entry,
        report_sha256=report_digest(model),
        replaced=replaced,
    )
    with SqliteAuditLog(store / "control.db", create=False) as log:
        (entry,) = log.append_many([(REPORT_ENTRY_KIND, payload)])
        said = cover_own_entry(log, store.resolve(), entry).message()
    console.print(
        f"report anchored: job.report entry #{entry.seq} (report.html, evidence.json; the "
        f"run's scan and cards digests carried from entry #{found.seq})",
        highlight=False,
        soft_wrap=True,
    )
    err_console.print(said, highlight=False, soft_wrap=True)


def crosscheck_line(check: ChainCheckView) -> str:
    """One console line for the cross-check: the tables that agree, or ``error [PG340]`` with
    the withheld sections and the first discrepancy."""
    if check.ok:
        names = ", ".join(f"{t.table} ({t.rows:,} rows)" for t in check.tables if t.present)
        return f"control-store tables agree with the audit chain: {names}"
    parts = [f"{t.table} {t.discrepancies:,}" for t in check.tables if t.discrepancies]
    first = check.discrepancies[0] if check.discrepancies else None
    example = (
        f"; first: {first.table}[{first.key}].{first.field} table "
        f"{first.table_value!r}, chain {first.chain_value!r}"
        if first is not None
        else ""
    )
    n = check.total_discrepancies
    return (
        f"error [{check.code}] {n:,} discrepanc{'y' if n == 1 else 'ies'} between the control "
        f"store and the audit chain ({', '.join(parts)}); those sections are withheld"
        f"{example}"
    )

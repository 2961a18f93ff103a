"""``provguard report --store DIR``: regenerate ``report.html`` + ``evidence.json`` from an
output folder's stores (:mod:`provguard.report.from_store`).

Exit codes: 0 written and the audit chain verifies; 1 written, but the chain does not verify
(the report says where it breaks: a script must not file it as clean evidence); 2 the folder or
a key cannot be read.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated

import typer

from provguard.audit.signing import load_public_key
from provguard.cli.common import console, user_errors
from provguard.report.from_store import build_model_from_store
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
        typer.Option("--public-key", help="Check the newest signed checkpoint with this key."),
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
        model = build_model_from_store(store, as_of=day, public_key=key, grant_db=grant_db)
        target = out or store
        html = write_report(model, target / "report.html")
        evidence = write_evidence(model, target / "evidence.json")
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
    if audit is not None and audit.verify_ok:
        cp = audit.checkpoint
        if cp is None:
            coverage = "no signed checkpoint is stored in the log: none covers it"
        elif cp.count >= audit.entries:
            coverage = (
                f"the newest signed checkpoint (key {cp.key_id}) covers every entry "
                f"(#1–#{audit.entries})"
            )
        else:
            coverage = (
                f"the newest signed checkpoint (key {cp.key_id}) covers #1–#{cp.count}; "
                f"entries after #{cp.count} are not covered by any signed checkpoint"
            )
        console.print(f"coverage: {coverage}", highlight=False, soft_wrap=True)
    if model.sign_ins is not None:
        s = model.sign_ins
        console.print(
            f"sign-ins: {s.completed:,}; token exchanges denied {s.exchanges_denied:,}, "
            f"permitted {s.exchanges_permitted:,} (grandfathered {s.exchanges_grandfathered:,})",
            highlight=False,
        )
    if audit is not None and not audit.verify_ok:
        raise typer.Exit(code=1)

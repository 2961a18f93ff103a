"""``provguard data load``: an app's profile export into the labelled ``profiles`` table.

The export format, the labels and the handling of bad rows are those of
:mod:`provguard.dataplane.export`. The load is one ``data.load`` entry in the audit log of the
control store beside the data (files with their SHA-256, rows read / loaded / left out with
their lines, origin counts), signed when the signing key is beside the store as a query's entry
is; the table is written atomically (a crash leaves the previous file), after the audit log
was opened (an unwritable control store writes nothing), and its SHA-256 is in the entry. A data
folder bound to another control store is refused (PG101) before anything is read; a new one is
bound to the control store the load was recorded in.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated

import typer

from provguard.cli.common import console, handles_errors
from provguard.cli.data import ControlOpt, StoreOpt, data_app
from provguard.cli.query import _cover_query_entry, open_query_audit
from provguard.dataplane import LabelledStore
from provguard.dataplane.export import ExportLoad, OnError, RowProblem, load_export
from provguard.dataplane.store import bind_data_store, bound_control_store, check_binding
from provguard.errors import InputError
from provguard.provenance import default_registry
from provguard.sqlgen.schema import job_schema

TABLE = "profiles"
#: bad rows printed on the terminal; all of them go to --rejects and the audit entry's lines
_SHOWN = 20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_rejects(path: Path, problems: tuple[RowProblem, ...]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for p in problems:
            fh.write(json.dumps(p.as_record(), ensure_ascii=False, default=str) + "\n")
    tmp.replace(path)


@data_app.command("load")
@handles_errors
def load_cmd(
    profiles: Annotated[
        Path, typer.Option(help="Profiles export: CSV (with header), JSON Lines or Parquet.")
    ],
    grants: Annotated[
        Path, typer.Option(help="Login grants export (grant_id, provider): same formats.")
    ],
    store: StoreOpt = Path("out/demo/data"),
    on_error: Annotated[
        str,
        typer.Option(
            "--on-error",
            help="reject: load nothing if any row is bad (default); skip: load the good rows.",
        ),
    ] = "reject",
    rejects: Annotated[
        Path | None,
        typer.Option(help="Write every bad row (file, line, field, reason, raw row) as JSONL."),
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace an existing profiles table.")
    ] = False,
    control_store: ControlOpt = None,
) -> None:
    """Load an app's profile export into the labelled profiles table.

    Each handle and picture is labelled from the grant it arrived through (user_input, the
    grant's provider, or unknown). Bad rows are reported as file:line with the field and the
    reason; exit 2 when any is found under --on-error reject (nothing written)."""
    if on_error not in ("reject", "skip"):
        raise InputError(f"--on-error must be reject or skip, not '{on_error}'")
    mode: OnError = "reject" if on_error == "reject" else "skip"
    control = control_store or store.parent / "control.db"
    # a data folder bound to another control store is refused before anything is read or
    # written: the load must reach the genuine audit log (PG101, fresh user 9's G15)
    if store.is_dir():
        check_binding(store, control)
    ls = LabelledStore(store, base=job_schema())
    target = ls.data.path(TABLE)
    if target.exists() and not replace:
        raise InputError(
            f"{target} exists; --replace loads the export over it (its stored masks and hashes"
            " stop applying: store them again)"
        )
    try:
        loaded = load_export(profiles, grants, default_registry(), on_error=mode)
    except InputError as exc:
        problems = getattr(exc, "problems", ())
        if rejects is not None and problems:
            _write_rejects(rejects, problems)
        raise
    if rejects is not None:
        _write_rejects(rejects, loaded.problems)
    # the audit log is opened (and must be writable) before the table is written (G17)
    with open_query_audit(control, create=not control.exists()) as log:
        if bound_control_store(store) is None:
            bind_data_store(store, control)
        ls.data.write_table(TABLE, loaded.table)
        payload = _payload(store, profiles, grants, mode, loaded)
        payload["written"] = {"path": str(target.resolve()), "sha256": _sha256(target)}
        own = log.append("data.load", payload)
        _cover_query_entry(log, control, own)
    _say(loaded, rejects)


def _payload(
    store: Path, profiles: Path, grants: Path, mode: OnError, loaded: ExportLoad
) -> dict[str, object]:
    """The ``data.load`` entry: the files read with their SHA-256, the counts, the rows left
    out (file and line, never their values) and the origins loaded."""
    return {
        "table": TABLE,
        "store": str(store.resolve()),
        "files": {
            "profiles": {"path": str(profiles.resolve()), "sha256": _sha256(profiles)},
            "grants": {"path": str(grants.resolve()), "sha256": _sha256(grants)},
        },
        "on_error": mode,
        "rows_read": loaded.rows_read,
        "grants_read": loaded.grants_read,
        "rows_loaded": loaded.table.num_rows,
        "left_out": [{"file": p.file, "where": p.where} for p in loaded.problems],
        "origins": loaded.origins,
    }


def _say(loaded: ExportLoad, rejects: Path | None) -> None:
    n = loaded.table.num_rows
    console.print(
        f"{TABLE}: loaded {n:,} of {loaded.rows_read:,} rows"
        f" ({len(loaded.problems)} bad row(s) left out, grants read: {loaded.grants_read:,})",
        highlight=False,
    )
    for column, counts in loaded.origins.items():
        parts = ", ".join(f"{name} {c:,}" for name, c in counts.items())
        console.print(f"  {column} origins: {parts}", highlight=False)
    for p in loaded.problems[:_SHOWN]:
        typer.echo(f"left out: {p}", err=True)
    if len(loaded.problems) > _SHOWN:
        more = f"; all in {rejects}" if rejects else "; --rejects FILE writes them all"
        typer.echo(f"... and {len(loaded.problems) - _SHOWN} more{more}", err=True)

"""``provguard data``: load-time work on the labelled data plane that makes queries cheaper.

Stored keyed hashes, stored masks and normalised labels are computed once over a table and read
by the query rewrite only when they are exactly what it would compute (docs/dataplane.md,
"Stored masks"; the key's and the verdict's fingerprints). Each command is recorded in the audit
log of the control store beside the data (``data.*`` entries: what was stored, for which table,
under which fingerprints; never a key), signed like a query's own entry when the signing key is
beside the control store. A command that rewrites a derived table records the new file's
SHA-256 and spec digest in its entry (``derived_labels``), and refuses a derived table whose
file or labels no longer match the newest chained entry that wrote them (PG210, findings I-3).
The data folder must be bound to the control store used (PG101 otherwise, findings I-4).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from provguard.cli.common import DEFAULT_POLICY_DIR, console, handles_errors
from provguard.cli.policy import AnyAppOpt, AtOpt, PolicyOpt, _parse_time, load_policy_with_events
from provguard.cli.policy import _check_apps as check_apps
from provguard.cli.query import (
    _cover_query_entry,
    bind_if_unbound,
    cli_query_policy,
    open_query_audit,
)
from provguard.dataplane import LabelledStore
from provguard.dataplane.store import AuditLabelsLedger, check_binding
from provguard.errors import InputError
from provguard.sqlgen.keyed import key_id
from provguard.sqlgen.schema import job_schema

data_app = typer.Typer(help="Stored hashes, stored masks and normalised labels of the data plane.")

StoreOpt = Annotated[
    Path, typer.Option(help="Folder of labelled Parquet tables (the job's out/data).")
]
TableOpt = Annotated[str, typer.Option(help="Labelled table (default: profiles).")]
ColumnsOpt = Annotated[
    list[str] | None,
    typer.Option("--column", help="Column to cover (repeatable; default: every protected one)."),
]
ControlOpt = Annotated[
    Path | None,
    typer.Option(
        "--control-store",
        help="Control store whose events apply and whose audit log records the command "
        "(default: the control.db beside the data store).",
    ),
]


def _open(store: Path, control_store: Path | None) -> tuple[LabelledStore, Path]:
    """The data store at ``store``, read through its control store's audit log (a derived
    table is rewritten only while its file and labels match the newest chained entry that
    wrote them: PG210 otherwise), and that control store (default: ``control.db`` beside the
    data). A data folder bound to another control store is refused (PG101) before anything is
    read or written; an unbound one is bound to it only once the command succeeded and its
    entry is written (:func:`_record`): a failing command binds nothing."""
    if not store.is_dir():
        raise InputError(f"no data store at {store} (run `provguard run` first)")
    control = control_store or store.parent / "control.db"
    check_binding(store, control)
    ls = LabelledStore(store, base=job_schema(), ledger=AuditLabelsLedger(control))
    return ls, control


def _record(
    control_store: Path, kind: str, payload: dict[str, object], ls: LabelledStore, table: str
) -> None:
    """Append the command's own ``kind`` entry (with the digests of ``table`` when the
    command rewrote it as a derived table: ``derived_labels``) and sign it when the signing key
    is beside the control store (:func:`provguard.cli.query._cover_query_entry`). Then, and
    only then, an unbound data folder is bound to ``control_store``."""
    fresh = not control_store.exists()
    with open_query_audit(control_store, create=fresh) as log:
        own = log.append(kind, {**payload, **ls.derived_labels_payload(table)})
        _cover_query_entry(log, control_store, own)
    bind_if_unbound(ls.data.root, control_store)


@data_app.command("store-masks")
@handles_errors
def store_masks_cmd(
    app: Annotated[str, typer.Option(help="Client app the masks are for (douyin, ...).")],
    purpose: Annotated[str, typer.Option(help="Purpose, e.g. social.friend_recommendation.")],
    store: StoreOpt = Path("out/demo/data"),
    table: TableOpt = "profiles",
    column: ColumnsOpt = None,
    action: Annotated[str, typer.Option(help="Declared action (also checked as use).")] = "use",
    at: AtOpt = None,
    policy: PolicyOpt = DEFAULT_POLICY_DIR,
    hash_key_env: Annotated[
        str, typer.Option("--hash-key-env", help="Variable holding the 'hash' mask's key.")
    ] = "PROVGUARD_HASH_KEY",
    any_app: AnyAppOpt = False,
    control_store: ControlOpt = None,
) -> None:
    """Store a table's masked values under one (app, purpose, action, time) of the policy.

    Later queries whose verdict has the same fingerprint read them instead
    of masking per row; any other verdict (another purpose, an instrument event, a changed rule
    or key) masks per row as before. Prints column -> fingerprint."""
    ls, control = _open(store, control_store)
    policy_set = load_policy_with_events(policy, control if control.exists() else None)
    check_apps(policy_set, app, None, any_app)
    when = _parse_time(at)
    key = os.environ.get(hash_key_env) or None
    qp = cli_query_policy(policy_set, ls, app, purpose, when, action, hash_key_env)
    fingerprints = ls.store_masks(table, qp, columns=column)
    _record(
        control,
        "data.store_masks",
        {
            "table": table,
            "app": app,
            "purpose": purpose,
            "actions": list(qp.actions),
            "at": when.isoformat(),
            "fingerprints": fingerprints,
            "hash_key_id": key_id(key.encode()) if key else None,
        },
        ls,
        table,
    )
    if not fingerprints:
        console.print(f"{table}: the policy masks no column here; nothing stored")
    for col, fp in sorted(fingerprints.items()):
        console.print(f"{table}.{col}: stored mask {fp[:12]}", highlight=False)


@data_app.command("drop-masks")
@handles_errors
def drop_masks_cmd(
    store: StoreOpt = Path("out/demo/data"),
    table: TableOpt = "profiles",
    fingerprint: Annotated[
        list[str] | None,
        typer.Option("--fingerprint", help="Fingerprint to drop (repeatable; default: all)."),
    ] = None,
    control_store: ControlOpt = None,
) -> None:
    """Remove stored masks of a table (the listed fingerprints, or all).

    Queries fall back to masking per row before the companions disappear."""
    ls, control = _open(store, control_store)
    before = {c: dict(s.stored_masks) for c, s in ls.schema.table(table).columns.items()}
    spec = ls.drop_masks(table, fingerprints=fingerprint)
    left = {c: dict(s.stored_masks) for c, s in spec.columns.items() if s.stored_masks}
    dropped = sorted(fp for c, masks in before.items() for fp in masks if fp not in left.get(c, {}))
    _record(control, "data.drop_masks", {"table": table, "fingerprints": dropped}, ls, table)
    console.print(f"{table}: dropped {len(dropped)} stored mask(s)", highlight=False)


@data_app.command("normalise-labels")
@handles_errors
def normalise_labels_cmd(
    store: StoreOpt = Path("out/demo/data"),
    table: TableOpt = "profiles",
    control_store: ControlOpt = None,
) -> None:
    """Store a table's per-row labels with 0/NULL as ``unknown`` (the same meaning).

    Queries then read them as they are. Drops the table's stored masks: store them again after."""
    ls, control = _open(store, control_store)
    ls.normalise_labels(table)
    _record(control, "data.normalise_labels", {"table": table}, ls, table)
    console.print(f"{table}: labels normalised (stored masks dropped)", highlight=False)


@data_app.command("store-hashes")
@handles_errors
def store_hashes_cmd(
    store: StoreOpt = Path("out/demo/data"),
    table: TableOpt = "profiles",
    column: ColumnsOpt = None,
    hash_key_env: Annotated[
        str, typer.Option("--hash-key-env", help="Variable holding the 'hash' mask's key.")
    ] = "PROVGUARD_HASH_KEY",
    control_store: ControlOpt = None,
) -> None:
    """Store the keyed hash (HMAC-SHA256) of a table's protected columns.

    The key is read from ``--hash-key-env``; queries under the same key read the stored hash
    instead of computing it."""
    key = os.environ.get(hash_key_env)
    if not key:
        raise InputError(f"${hash_key_env} is not set: no key to hash with")
    ls, control = _open(store, control_store)
    spec = ls.store_hashes(table, key, columns=column)
    hashed = sorted(c for c, s in spec.columns.items() if s.hash_column)
    _record(
        control,
        "data.store_hashes",
        {"table": table, "columns": hashed, "hash_key_id": spec.hash_key_id},
        ls,
        table,
    )
    console.print(
        f"{table}: keyed hashes stored for {', '.join(hashed)} (key fingerprint"
        f" {spec.hash_key_id})",
        highlight=False,
    )

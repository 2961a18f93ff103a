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

Base tables (session 8): a command that rewrites a base table (``profiles``) first checks it
against the newest entry recording it (:class:`provguard.dataplane.attest.StoreAttestation`,
PG210: a forged file must not be rewritten and recorded as provguard's), and its entry records
the new file's SHA-256 and labels-spec digest (``base_tables``). ``provguard data register``
records a ``--schema`` table (its file's SHA-256, its declaration's digest, who and why) in a
chained, signed ``data.register`` entry: ``provguard query --schema`` reads a declared table
only as registered.
"""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import Annotated

import typer

from provguard.cli.common import DEFAULT_POLICY_DIR, console, handles_errors
from provguard.cli.policy import AnyAppOpt, AtOpt, PolicyOpt, _parse_time, load_policy_with_events
from provguard.cli.policy import _check_apps as check_apps
from provguard.cli.query import (
    JOB_WRITTEN_TABLES,
    _cover_query_entry,
    bind_if_unbound,
    cli_query_policy,
    extend_schema,
    open_query_audit,
)
from provguard.dataplane import LabelledStore
from provguard.dataplane.attest import (
    REGISTER_KIND,
    StoreAttestation,
    base_tables_payload,
    check_table_file,
    registration_payload,
)
from provguard.dataplane.store import AuditLabelsLedger, check_binding
from provguard.errors import InputError
from provguard.sqlgen import SchemaRegistry
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


def _open(
    store: Path, control_store: Path | None, table: str | None = None
) -> tuple[LabelledStore, Path]:
    """The data store at ``store``, read through its control store's audit log (a derived
    table is rewritten only while its file and labels match the newest chained entry that
    wrote them: PG210 otherwise), and that control store (default: ``control.db`` beside the
    data). A data folder bound to another control store is refused (PG101) before anything is
    read or written; an unbound one is bound to it only once the command succeeded and its
    entry is written (:func:`_record`): a failing command binds nothing.

    ``table``: the base table the command rewrites, checked first against the newest entry
    recording it (PG210, :class:`~provguard.dataplane.attest.StoreAttestation`); a derived
    table is checked by the store itself."""
    if not store.is_dir():
        raise InputError(f"no data store at {store} (run `provguard run` first)")
    control = control_store or store.parent / "control.db"
    check_binding(store, control)
    if table is not None:
        attestation = StoreAttestation(store, control, base_tables=JOB_WRITTEN_TABLES)
        try:
            attestation.check([table])
        finally:
            attestation.close()
    ls = LabelledStore(store, base=job_schema(), ledger=AuditLabelsLedger(control))
    return ls, control


def _record(
    control_store: Path, kind: str, payload: dict[str, object], ls: LabelledStore, table: str
) -> None:
    """Append the command's own ``kind`` entry (with the digests of ``table`` when the
    command rewrote it as a derived table: ``derived_labels``; as a base table:
    ``base_tables``, the file and labels as they are now) and sign it when the signing key
    is beside the control store (:func:`provguard.cli.query._cover_query_entry`). Then, and
    only then, an unbound data folder is bound to ``control_store``."""
    fresh = not control_store.exists()
    base = base_tables_payload(ls.data.root, [table]) if table in JOB_WRITTEN_TABLES else {}
    with open_query_audit(control_store, create=fresh) as log:
        own = log.append(kind, {**payload, **ls.derived_labels_payload(table), **base})
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
    ls, control = _open(store, control_store, table)
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
    ls, control = _open(store, control_store, table)
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
    ls, control = _open(store, control_store, table)
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
    ls, control = _open(store, control_store, table)
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


def _whoami() -> str:
    """The operating-system user running the command (``uid:<n>`` when it has no name)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return f"uid:{os.getuid()}"


@data_app.command("register")
@handles_errors
def register_cmd(
    schema: Annotated[
        Path, typer.Option(help="Schema file (YAML/JSON) declaring the table, as given to query.")
    ],
    table: Annotated[str, typer.Option(help="Declared table to register (a file of the store).")],
    store: StoreOpt = Path("out/demo/data"),
    by: Annotated[
        str | None, typer.Option("--by", help="Who registers it (default: the OS user).")
    ] = None,
    why: Annotated[str | None, typer.Option("--why", help="Why it may be read this way.")] = None,
    control_store: ControlOpt = None,
) -> None:
    """Register a --schema table: record its file's SHA-256 and its declaration.

    The record is a chained ``data.register`` entry (signed when the signing key is beside the
    control store) with who registered it and why. ``provguard query --schema FILE`` reads a
    declared table only while its file and declaration match its newest registration (PG210
    otherwise). The file must be the data folder's own: a symbolic or hard link, or a path
    outside the folder, is refused (PG160); so is a declaration ``provguard query`` would
    refuse (a job table, a provguard-managed field, labels its file carries but it ignores)."""
    ls, control = _open(store, control_store)
    extra = SchemaRegistry.load(schema)
    if table not in extra.tables:
        known = ", ".join(sorted(extra.tables)) or "none"
        raise InputError(f"{schema} does not declare table '{table}' (it declares: {known})")
    if check_table_file(store, table) is None:
        raise InputError(f"no table '{table}' in {store} ({table}.parquet) to register")
    spec = extra.tables[table]
    # the same checks a query with this file runs: what it would refuse is not registered
    extend_schema(job_schema(), SchemaRegistry(tables={table: spec}), schema, store)
    payload = registration_payload(store, table, spec, schema, by=by or _whoami(), why=why)
    _record(control, REGISTER_KIND, payload, ls, table)
    digests = payload["registered_tables"][table]
    console.print(
        f"{table}: registered (file {digests['file_sha256'][:16]}..., declaration"
        f" {digests['spec_sha256'][:16]}..., by {payload['by']})",
        highlight=False,
    )

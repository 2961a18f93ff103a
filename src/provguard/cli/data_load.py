"""``provguard data load``: an app's profile export into the labelled ``profiles`` table.

The export format, the labels and the handling of bad rows are those of
:mod:`provguard.dataplane.export`. The load is one ``data.load`` entry in the audit log of the
control store beside the data (files with their SHA-256, rows read / loaded / left out with
their lines, origin counts), signed when the signing key is beside the store as a query's entry
is; the table is written atomically (a crash leaves the previous file), after the audit log
was opened (an unwritable control store writes nothing), and its SHA-256 is in the entry. A data
folder bound to another control store is refused (PG101) before anything is read; a new one is
bound to the control store the load was recorded in.

The entry also records, under ``policy``, the policy the store is loaded under (``--policy``,
with or without ``--store-masks``): the payload of a job's ``job.policy`` entry
(:func:`provguard.job.run.policy_entry`: digest, each bundle file's SHA-256, rule scopes,
instruments). :func:`provguard.audit.enforced.enforced_policy` reads it like a job's, so
``provguard query`` and ``provguard serve`` on the store refuse a ``--policy`` lacking or
editing one of those files (PG103); the newest record wins, so a ``--replace`` under another
bundle changes what governs the store, recorded and signed like the load.

Then, unless ``--no-store-masks``, the loaded table gets the fast layout
(:func:`provguard.dataplane.served.store_served_masks`, what ``provguard run`` calls too): its
labels normalised, and the masks of every (app, purpose) pair ``--policy`` serves at ``--at``
(default now) stored, each step its own audit entry (``data.normalise_labels``, one
``data.store_masks`` per pair, the payloads of the ``provguard data`` commands). The policy and
the hash key are checked before anything is written; without a key, columns whose mask hashes
are left out and reported, never an error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from provguard.audit.enforced import LOAD_KIND, LOAD_POLICY_KEY
from provguard.cli.common import DEFAULT_POLICY_DIR, console, handles_errors
from provguard.cli.data import ControlOpt, StoreOpt, data_app
from provguard.cli.policy import AtOpt, PolicyOpt, _parse_time, load_policy_with_events
from provguard.cli.query import _cover_query_entry, open_query_audit
from provguard.dataplane import LabelledStore
from provguard.dataplane.attest import base_tables_payload
from provguard.dataplane.export import ExportLoad, OnError, RowProblem, load_export
from provguard.dataplane.served import store_served_masks
from provguard.dataplane.store import (
    bind_data_store,
    bound_control_store,
    check_binding,
    file_sha256,
)
from provguard.errors import InputError
from provguard.policy import PolicySet
from provguard.provenance import default_registry
from provguard.sqlgen.keyed import resolve_hash_key
from provguard.sqlgen.schema import job_schema

TABLE = "profiles"
#: bad rows printed on the terminal; all of them go to --rejects and the audit entry's lines
_SHOWN = 20


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
    allow_empty: Annotated[
        bool,
        typer.Option("--allow-empty", help="Write the table even when no row is left to load."),
    ] = False,
    control_store: ControlOpt = None,
    store_masks: Annotated[
        bool,
        typer.Option(
            "--store-masks/--no-store-masks",
            help="After loading, normalise the labels and store the masks of every (app,"
            " purpose) pair --policy serves (default); --no-store-masks keeps raw labels and"
            " no masks.",
        ),
    ] = True,
    policy: PolicyOpt = DEFAULT_POLICY_DIR,
    at: AtOpt = None,
    hash_key_env: Annotated[
        str, typer.Option("--hash-key-env", help="Variable holding the 'hash' mask's key.")
    ] = "PROVGUARD_HASH_KEY",
    change_policy: Annotated[
        str | None,
        typer.Option(
            "--change-policy",
            help="Why the store is loaded under a policy that lacks or edits a bundle file the"
            " store's job or last load enforced (recorded in the load's audit entry). Without"
            " it such a load is refused (PG103).",
        ),
    ] = None,
) -> None:
    """Load an app's profile export into the labelled profiles table.

    Each handle and picture is labelled from the grant it arrived through (user_input, the
    grant's provider, or unknown). Bad rows are reported as file:line with the field and the
    reason; exit 2 when any is found under --on-error reject (nothing written). The load's
    audit entry records --policy (its files' digests, as a job's job.policy entry does): from
    then on `provguard query` and `provguard serve` on the store refuse a policy lacking or
    editing one of those files (PG103); a later --replace under another policy changes that.
    Then the labels are normalised and the masks of every (app, purpose) pair the policy
    serves are stored (each an audit entry, as `data normalise-labels` / `data store-masks`
    record theirs)."""
    if on_error not in ("reject", "skip"):
        raise InputError(f"--on-error must be reject or skip, not '{on_error}'")
    mode: OnError = "reject" if on_error == "reject" else "skip"
    control = control_store or store.parent / "control.db"
    # a data folder bound to another control store is refused before anything is read or
    # written: the load must reach the genuine audit log (PG101, fresh user 9's G15)
    if store.is_dir():
        check_binding(store, control)
    # the policy and the key before anything is written: a bad bundle or a short key fails here.
    # The policy is loaded with or without --store-masks: the load records it, and it governs
    # the store's queries and service from then on (PG103 for another; fresh user 12's H1)
    key: bytes | None = None
    when = _parse_time(at)
    if not policy.exists():
        raise InputError(
            f"no policy at {policy}: the load records the policy that governs the store's"
            " queries (and stores the masks it serves); name the bundles with --policy"
            " (--no-store-masks skips the masks, never the policy)"
        )
    policy_set: PolicySet = load_policy_with_events(policy, control if control.exists() else None)
    if store_masks:
        key = resolve_hash_key(os.environ.get(hash_key_env) or None, source=f"${hash_key_env}")
    from provguard.job.run import policy_entry

    # what the job's job.policy entry records, computed before the write (a bundle file that
    # cannot be read fails here, with nothing written)
    _, policy_record = policy_entry(policy_set, policy)
    # a load onto a governed store must not drop its order quietly: a policy lacking or editing
    # one of the enforced bundle files needs a stated reason, recorded in the entry
    if control.is_file() and change_policy is None:
        from provguard.cli.query import require_enforced_policy
        from provguard.errors import PolicyMismatchError

        try:
            require_enforced_policy(control, policy_set)
        except PolicyMismatchError as exc:
            raise PolicyMismatchError(
                f"{exc.message}. A load replaces the enforced policy only with --change-policy"
                " REASON (recorded in its audit entry)",
                enforced=exc.enforced,
                given=exc.given,
            ) from None
    if change_policy is not None and not change_policy.strip():
        raise InputError("--change-policy needs a reason")
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
    # an export with no row left (a header-only file, every row skipped) would silently empty
    # the table, or replace a full one with nothing (fresh user 10, L4)
    if loaded.table.num_rows == 0 and not allow_empty:
        raise InputError(
            f"no row to load from {profiles} ({loaded.rows_read:,} read,"
            f" {len(loaded.problems)} left out); nothing written. Pass --allow-empty to write"
            " an empty table" + (f" over {target}" if target.exists() else "")
        )
    # the audit log is opened (and must be writable) before the table is written (G17)
    with open_query_audit(control, create=not control.exists()) as log:
        if bound_control_store(store) is None:
            bind_data_store(store, control)
        ls.data.write_table(TABLE, loaded.table)
        payload = _payload(store, profiles, grants, mode, loaded)
        payload["written"] = {"path": str(target.resolve()), "sha256": file_sha256(target)}
        # the table as written, what later reads check it against (session 8)
        payload.update(base_tables_payload(store, [TABLE]))
        # the policy the store is loaded under: queries and `serve` must hold its bundle files
        # (provguard.audit.enforced; the newest record wins)
        payload[LOAD_POLICY_KEY] = policy_record
        if change_policy is not None:
            payload["policy_change_reason"] = change_policy
        own = log.append(LOAD_KIND, payload)
        _cover_query_entry(log, control, own)
    _say(loaded, rejects)
    console.print(
        f"policy enforced: recorded in audit entry #{own.seq} (digest"
        f" {str(policy_record['policy_digest'])[:12]}…, {policy}); queries and the service on"
        " this store must use its bundle files",
        highlight=False,
    )
    if store_masks:
        finished = store_served_masks(ls, policy_set, when, table=TABLE, hash_key=key)
        steps = list(finished.audit_entries)
        # the last step records the table as it is left (the newest entry recording it wins)
        kind, last = steps[-1]
        steps[-1] = (kind, {**last, **base_tables_payload(store, [TABLE])})
        _record_steps(control, steps)
        console.print(f"stored masks: {finished.summary()}", highlight=False)


def _record_steps(control: Path, entries: Sequence[tuple[str, dict[str, object]]]) -> None:
    """Append ``entries`` to ``control``'s audit log, each signed in turn as the `provguard
    data` command's own entry would be (:func:`provguard.audit.folder.cover_own_entry`); the
    signing outcome is said once on stderr, for the last."""
    from provguard.audit.folder import cover_own_entry
    from provguard.errors import ProvguardError

    said = ""
    with open_query_audit(control) as log:
        for kind, payload in entries:
            own = log.append(kind, payload)
            try:
                said = cover_own_entry(log, control.resolve().parent, own).message()
            except (ProvguardError, OSError) as exc:
                said = f"warning: the data entries are recorded but not signed: {exc}"
    if said:
        typer.echo(said, err=True)


def _payload(
    store: Path, profiles: Path, grants: Path, mode: OnError, loaded: ExportLoad
) -> dict[str, object]:
    """The ``data.load`` entry: the files read with their SHA-256, the counts, the rows left
    out (file and line, never their values) and the origins loaded."""
    return {
        "table": TABLE,
        "store": str(store.resolve()),
        "files": {
            "profiles": {"path": str(profiles.resolve()), "sha256": file_sha256(profiles)},
            "grants": {"path": str(grants.resolve()), "sha256": file_sha256(grants)},
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

"""``provguard grants``: inspect the grant registry, prove a purge, run due purges, record and
withdraw separate consents (PIPL Art. 23 / 15).

The commands that change the registry's evidence (``consent``, ``withdraw``, ``purge-due``)
chain the events they write into the audit log of the control store beside ``--db`` (or the
one ``--store`` names) and sign them when the folder's key is at hand
(:func:`provguard.grants.relay.relay_outbox`), so ``provguard audit verify`` and
``provguard report --store`` find the new rows in the chain (fresh user 12, M5). Without a
control store they say so on stderr: the events wait in the registry's outbox until
``provguard grants relay`` chains them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Annotated, get_args

import typer

from provguard.adapters.grant_store import SqlGrantStore
from provguard.cli.common import console, handles_errors, parse_instant
from provguard.errors import StoreError
from provguard.grants.crypto import TokenCipher
from provguard.grants.errors import GrantInputError
from provguard.grants.model import GrantStatus
from provguard.grants.relay import control_store_for, owned_control_store, relay_outbox
from provguard.grants.revocation import RevocationCascade
from provguard.taxonomy import DATA_CATEGORIES, PURPOSES, Taxonomy

grants_app = typer.Typer(help="The OAuth grant registry: status, purge proofs, due purges.")

DB = typer.Option(..., "--db", help="SQLAlchemy URL or SQLite file of the grant registry")
KEY = typer.Option(
    None, "--key-file", help="token key file (default: $PROVGUARD_TOKEN_KEY must be set)"
)
STORE = typer.Option(
    None,
    "--store",
    help="output folder (or its control.db) whose audit log chains the registry's events "
    "(default: control.db in the folder of --db, when there is one); consent, withdraw "
    "and purge-due accept only the folder holding --db (PG101 otherwise)",
)


def _store(db: str, key_file: Path | None) -> SqlGrantStore:
    return SqlGrantStore(db, TokenCipher.from_env_or_file(key_file))


def _chain(registry: SqlGrantStore, db: str, control: Path | None) -> None:
    """Chain the registry's pending events into ``control`` (signed when the key is at hand),
    or say on stderr that they stay unchained."""
    if control is None:
        pending = registry.outbox()
        typer.echo(
            f"warning: no control store (control.db) beside {db} and no --store: "
            f"{len(pending)} registry event(s) stay unchained in its outbox; `provguard audit "
            "verify` and `provguard report --store` on a folder holding this registry report "
            "each changed row as a PG340 discrepancy until `provguard grants relay --db DB "
            "--store FOLDER` chains them",
            err=True,
        )
        return
    try:
        result = relay_outbox(registry, control)
    except StoreError as exc:
        raise StoreError(
            f"the registry change is recorded, but its event(s) could not be chained into "
            f"{control} and stay in the registry's outbox ({exc.message}); chain them with "
            f"`provguard grants relay --db {db} --store {control.parent}`"
        ) from exc
    for line in result.messages():
        typer.echo(line, err=True)


@grants_app.command("status")
@handles_errors
def status_cmd(db: str = DB, key_file: Path | None = KEY) -> None:
    """Rows per table, and revocation jobs by state."""
    store = _store(db, key_file)
    for table, n in sorted(store.counts().items()):
        console.print(f"{table:22} {n:>8}")
    for job in store.jobs():
        console.print(
            f"job {job['job_id']} grant {job['grant_id']} {job['state']:12} "
            f"purge by {job['purge_by'].isoformat()}"
        )


_Status = Enum("_Status", {s: s for s in get_args(GrantStatus)}, type=str)  # type: ignore[misc]


@grants_app.command("list")
@handles_errors
def list_cmd(
    db: str = DB,
    key_file: Path | None = KEY,
    status: Annotated[_Status | None, typer.Option(help="only grants in this status")] = None,
    app: Annotated[str | None, typer.Option(help="only grants held by this client app")] = None,
) -> None:
    """The grants: id, provider, client app, status, scopes, granted at (never a token)."""
    wanted = status.value if status is not None else None
    rows = [g for g in _store(db, key_file).grants(wanted) if app is None or g.app_id == app]
    for g in rows:
        console.print(
            f"{g.grant_id} {g.provider:8} {g.app_id:10} {g.status:9} "
            f"scopes={g.scopes or '-'} granted={g.granted_at.isoformat()}"
        )
    console.print(f"{len(rows)} grant(s)")


@grants_app.command("remaining")
@handles_errors
def remaining_cmd(grant_id: str, db: str = DB, key_file: Path | None = KEY) -> None:
    """Prove a purge: rows still holding or pointing at GRANT_ID's data (exit 1 if any)."""
    left = _store(db, key_file).remaining(grant_id)
    for what, n in left.items():
        console.print(f"{what:12} {n}")
    if any(left.values()):
        raise typer.Exit(code=1)


@grants_app.command("purge-due")
@handles_errors
def purge_due_cmd(db: str = DB, key_file: Path | None = KEY, store: Path | None = STORE) -> None:
    """Resume interrupted cascades and purge every job whose deadline has come.

    The purge events are chained into the control store's audit log (see the module
    docstring)."""
    control = owned_control_store(db, store)
    registry = _store(db, key_file)
    done = RevocationCascade(registry).resume()
    console.print(f"jobs purged or resumed: {len(done)}")
    _chain(registry, db, control)


@grants_app.command("relay")
@handles_errors
def relay_cmd(db: str = DB, key_file: Path | None = KEY, store: Path | None = STORE) -> None:
    """Chain the registry's pending events into the control store's audit log.

    The pending events are the registry's outbox (e.g. a consent recorded without a control
    store); each is appended once, signed when the folder's key is at hand. Errors: PG200 when
    no control store is found."""
    control = control_store_for(db, store)
    if control is None:
        raise StoreError(
            f"no control store (control.db) beside {db}: name the output folder with --store"
        )
    registry = _store(db, key_file)
    result = relay_outbox(registry, control)
    for line in result.messages():
        console.print(line)


PURPOSE_OPT = typer.Option([], "--purpose", help="purpose key (repeatable)")
METHOD_OPT = typer.Option(None, "--method", help="processing method named")
CATEGORY_OPT = typer.Option([], "--category", help="data-category key (repeatable)")
EVIDENCE_OPT = typer.Option(..., "--evidence", help="where the consent was collected")
AT_OPT = typer.Option(
    None,
    "--at",
    help="YYYY-MM-DD (midnight UTC) or a date-time with its UTC offset (default now)",
)


def _keys(values: list[str], taxonomy: Taxonomy, what: str) -> list[str]:
    unknown = [v for v in values if v not in taxonomy]
    if unknown:
        raise GrantInputError(f"unknown {what} key(s): {', '.join(unknown)}")
    return values


#: a consent time up to this far ahead of the local clock is taken as clock skew
_CLOCK_SKEW = timedelta(minutes=5)


@grants_app.command("consent")
@handles_errors
def consent_cmd(
    grant_id: str,
    recipient: str,
    purpose: list[str] = PURPOSE_OPT,
    method: str | None = METHOD_OPT,
    category: list[str] = CATEGORY_OPT,
    evidence: str = EVIDENCE_OPT,
    at: str | None = AT_OPT,
    db: str = DB,
    key_file: Path | None = KEY,
    store: Path | None = STORE,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace the recipient's active consent.")
    ] = False,
) -> None:
    """Record the subject's separate consent (PIPL Art. 23) to give GRANT_ID's data to RECIPIENT.

    Purposes, method and categories are all required: Art. 23 asks the handler to tell the
    individual each of them. The consent's event is chained into the control store's audit log
    (signed when the folder's key is at hand). Errors: PG150 (a consent that cannot be
    recorded), PG200 (``--store`` names no control store)."""
    missing = [
        name
        for name, given in (("--purpose", purpose), ("--method", method), ("--category", category))
        if not given
    ]
    if missing:
        raise GrantInputError(
            f"a separate consent (PIPL Art. 23) must name purposes, method and categories; "
            f"missing {', '.join(missing)}"
        )
    control = owned_control_store(db, store)
    registry = _store(db, key_file)
    grant = registry.grant(grant_id)
    if grant is None:
        raise GrantInputError(f"no grant '{grant_id}' in the registry")
    if grant.status != "active":
        # a revoked (quarantined) or purged grant has no data left to provide: a consent on it
        # would later make the purge proof ("nothing remains") fail for a record of no use
        raise GrantInputError(
            f"grant {grant_id} is {grant.status}: a consent to provide its data can only be"
            " recorded while the grant is active"
        )
    active = [c for c in registry.consent_records(grant_id, recipient) if c.withdrawn_at is None]
    if active and not replace:
        raise GrantInputError(
            f"grant {grant_id} already has an active consent for {recipient} "
            f"({active[0].consent_id}); pass --replace to replace it (the audit log keeps both)"
        )
    if recipient == grant.app_id:
        raise GrantInputError(
            f"recipient '{recipient}' is the grant's own app: a separate consent (PIPL Art. 23)"
            " is for providing the data to another handler"
        )
    if registry.controller_of(recipient) is None:
        raise GrantInputError(
            f"recipient '{recipient}' is not a client app registered in this grant registry"
            " (a consent names the app that will receive the data)"
        )
    now = datetime.now(UTC)
    # stored in UTC: the SQL stores keep no offset (23:30+14:00 read back as 23:30 UTC)
    given = (parse_instant(at) if at else now).astimezone(UTC)
    if given > now + _CLOCK_SKEW:
        raise GrantInputError(
            f"--at {given.isoformat()} is in the future: a consent is recorded once given"
        )
    if given < grant.granted_at:
        raise GrantInputError(
            f"--at {given.isoformat()} is before grant {grant_id} was given"
            f" ({grant.granted_at.isoformat()}): there was nothing to consent to yet"
        )
    cid = registry.record_separate_consent(
        grant_id,
        recipient,
        given,
        evidence,
        purposes=_keys(purpose, PURPOSES, "purpose"),
        method=method,
        categories=_keys(category, DATA_CATEGORIES, "data-category"),
    )
    console.print(f"consent {cid} recorded for {recipient}")
    _chain(registry, db, control)


@grants_app.command("withdraw")
@handles_errors
def withdraw_cmd(
    grant_id: str,
    recipient: str,
    at: str | None = AT_OPT,
    db: str = DB,
    key_file: Path | None = KEY,
    store: Path | None = STORE,
) -> None:
    """Record the withdrawal (PIPL Art. 15) of the separate consent for RECIPIENT.

    Exit 1 when no active consent was on record. The withdrawal's event is chained into the
    control store's audit log (signed when the folder's key is at hand). Errors: PG200
    (``--store`` names no control store)."""
    when = (parse_instant(at) if at else datetime.now(UTC)).astimezone(UTC)
    control = owned_control_store(db, store)
    registry = _store(db, key_file)
    if not registry.withdraw_separate_consent(grant_id, recipient, when):
        console.print(f"no active consent of grant {grant_id} for {recipient}")
        raise typer.Exit(code=1)
    console.print(f"consent of grant {grant_id} for {recipient} withdrawn")
    _chain(registry, db, control)


@grants_app.command("consents")
@handles_errors
def consents_cmd(grant_id: str, db: str = DB, key_file: Path | None = KEY) -> None:
    """The grant's separate consents: recipient, purposes, method, categories, times."""
    for c in _store(db, key_file).consent_records(grant_id):
        state = "withdrawn " + c.withdrawn_at.isoformat() if c.withdrawn_at else "active"
        console.print(
            f"{c.recipient:16} purposes={','.join(sorted(c.purposes)) or '-'} "
            f"method={c.method or '-'} categories={','.join(sorted(c.categories)) or '-'} "
            f"given={c.given_at.isoformat() if c.given_at else '-'} {state}"
        )

"""``provguard grants``: inspect the grant registry, prove a purge, run due purges."""

from __future__ import annotations

from pathlib import Path

import typer

from provguard.adapters.grant_store import SqlGrantStore
from provguard.cli.common import console, handles_errors
from provguard.grants.crypto import TokenCipher
from provguard.grants.revocation import RevocationCascade

grants_app = typer.Typer(help="The OAuth grant registry: status, purge proofs, due purges.")

DB = typer.Option(..., "--db", help="SQLAlchemy URL or SQLite file of the grant registry")
KEY = typer.Option(
    None, "--key-file", help="token key file (default: $PROVGUARD_TOKEN_KEY must be set)"
)


def _store(db: str, key_file: Path | None) -> SqlGrantStore:
    return SqlGrantStore(db, TokenCipher.from_env_or_file(key_file))


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
def purge_due_cmd(db: str = DB, key_file: Path | None = KEY) -> None:
    """Resume interrupted cascades and purge every job whose deadline has come."""
    done = RevocationCascade(_store(db, key_file)).resume()
    console.print(f"jobs purged or resumed: {len(done)}")

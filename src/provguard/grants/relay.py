"""Relay the grant registry's pending outbox events into an output folder's audit chain.

The grant store writes every evidence change (a separate consent, its withdrawal, a purge, ...)
together with an outbox event (``grant_outbox``, state ``new``; transactional outbox). The
grant service and the main job flush those events into an audit log; a command that changes
the registry outside them (``provguard grants consent`` / ``withdraw`` / ``purge-due``) must do
the same, or ``provguard audit verify`` and ``provguard report --store`` find a registry row
the chain does not know (PG340; findings of fresh user 12, M5).

:func:`control_store_for` finds the control store (``control.db``) of the folder a registry
belongs to; :func:`relay_outbox` appends the registry's pending events to that store's chain
with :func:`provguard.grants.service.flush_outbox` (exactly once; a hand-inserted outbox row is
chained as ``grant.outbox_rejected``, never as the registry's event) and signs each appended
entry on its own with :func:`provguard.audit.folder.cover_own_entry` when the folder's signing
key is at hand (Ed25519, RFC 8032; never over entries someone else wrote unsigned).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from provguard.audit.chain import AuditEntry
from provguard.audit.folder import Coverage, cover_own_entry
from provguard.errors import ControlStoreMismatchError, StoreError
from provguard.grants.service import flush_outbox

if TYPE_CHECKING:
    from provguard.adapters.audit_sqlite import SqliteAuditLog
    from provguard.adapters.grant_store import SqlGrantStore

__all__ = [
    "CONTROL_STORE_FILE",
    "RelayResult",
    "control_store_for",
    "owned_control_store",
    "relay_outbox",
]

CONTROL_STORE_FILE = "control.db"
"""The control store's file name in an output folder (``provguard run --out``)."""


def _sqlite_file(db: str) -> Path | None:
    """The file of a grant registry given as a SQLite path or ``sqlite:///`` URL; ``None`` for
    another database URL (PostgreSQL, ...) or an in-memory SQLite database."""
    if "://" not in db:
        return Path(db)
    scheme, _, rest = db.partition("://")
    if not scheme.startswith("sqlite") or not rest.startswith("/") or rest in ("/", "/:memory:"):
        return None
    return Path(rest[1:])


def control_store_for(db: str, store: Path | None = None) -> Path | None:
    """The control store whose audit chain records the events of the registry ``db``.

    ``store`` given: an output folder (its ``control.db``) or a ``control.db`` file; it must
    exist (:class:`~provguard.errors.StoreError` PG200 otherwise, raised before anything is
    written). ``store`` omitted: ``control.db`` in the folder of ``db`` when ``db`` is a SQLite
    file (path or ``sqlite:///`` URL) and that file exists; else ``None`` (the caller must say
    that the events stay unchained)."""
    if store is not None:
        path = store / CONTROL_STORE_FILE if store.is_dir() else store
        if not path.is_file():
            raise StoreError(
                f"no control store at {path}: the registry's events must be chained into an "
                "output folder's audit log (--store names the folder of `provguard run --out`)"
            )
        return path
    local = _sqlite_file(db)
    if local is None:
        return None
    beside = local.parent / CONTROL_STORE_FILE
    if not beside.is_file() or (local.exists() and beside.resolve() == local.resolve()):
        return None
    return beside


def owned_control_store(db: str, store: Path | None = None) -> Path | None:
    """:func:`control_store_for`, refusing a ``store`` that is not the registry's own folder.

    A command that changes the registry (``grants consent`` / ``withdraw`` / ``purge-due``)
    chains its event into the control store it is given; a foreign one would hold evidence of a
    registry it does not have while the registry's own folder fails ``audit verify`` (PG340;
    fresh user 13, M3). So ``store`` is accepted only when its ``control.db`` lies in the same
    folder as the SQLite file of ``db`` (resolved paths compared). Raises
    :class:`~provguard.errors.ControlStoreMismatchError` (PG101) otherwise, and for a registry
    that is not a SQLite file (its folder cannot be compared), and
    :class:`~provguard.errors.StoreError` (PG200) as :func:`control_store_for` -- all before
    anything is written."""
    control = control_store_for(db, store)
    if store is None or control is None:
        return control
    local = _sqlite_file(db)
    if local is None:
        raise ControlStoreMismatchError(
            f"--store {store}: the registry {db} is not a SQLite file, so it has no folder "
            "whose control store could be checked as its own; omit --store (the events stay "
            "in the registry's outbox until `provguard grants relay` chains them)",
            bound=db,
            given=str(control),
        )
    own = local.resolve().parent
    if control.resolve().parent != own:
        raise ControlStoreMismatchError(
            f"--store {store}: {control.resolve()} is not the control store of the registry "
            f"{local.resolve()}: its events are chained only into the control.db of the "
            f"registry's own folder {own} (--store that folder, or omit --store). Nothing was "
            "written",
            bound=str(own / CONTROL_STORE_FILE),
            given=str(control.resolve()),
        )
    return control


class _SigningSink:
    """An audit sink over ``log`` that signs every entry it appends on its own
    (:func:`cover_own_entry`) and remembers the entries and what the signing did."""

    def __init__(self, log: SqliteAuditLog, folder: Path) -> None:
        self.log = log
        self.folder = folder
        self.appended: list[AuditEntry] = []
        self.coverage: list[Coverage] = []

    def append(self, kind: str, payload: Mapping[str, object]) -> AuditEntry:
        entry = self.log.append(kind, payload)
        self.appended.append(entry)
        try:
            self.coverage.append(cover_own_entry(self.log, self.folder, entry))
        except OSError as exc:  # the entry is chained; only the export of its checkpoint failed
            self.coverage.append(
                Coverage(None, reason=f"entry #{entry.seq} is recorded but not signed: {exc}")
            )
        return entry

    def count(self) -> int:
        return self.log.count()

    def entries(
        self, *, kind: str | None = None, start: int = 1, limit: int | None = None
    ) -> Iterator[AuditEntry]:
        return self.log.entries(kind=kind, start=start, limit=limit)


@dataclass(frozen=True)
class RelayResult:
    """What :func:`relay_outbox` did: ``entries`` appended to the chain of ``control_store``
    (in order), and one :class:`Coverage` per entry (signed, or why not)."""

    control_store: Path
    entries: tuple[AuditEntry, ...]
    coverage: tuple[Coverage, ...]

    @property
    def signed(self) -> int:
        """How many of the appended entries a signed checkpoint now covers."""
        return sum(1 for c in self.coverage if c.signed is not None)

    def messages(self) -> list[str]:
        """Lines for the console: the entries chained, then each distinct signing note."""
        if not self.entries:
            return [f"audit: no pending registry event to chain into {self.control_store}"]
        seqs = ", ".join(f"#{e.seq} {e.kind}" for e in self.entries)
        out = [f"audit: chained into {self.control_store}: {seqs}"]
        unsigned = [c for c in self.coverage if c.signed is None]
        if not unsigned:
            out.append(self.coverage[-1].message())
        else:
            out.extend(dict.fromkeys(c.message() for c in unsigned))
        return out


def relay_outbox(store: SqlGrantStore, control_store: Path) -> RelayResult:
    """Append ``store``'s pending outbox events (state ``new``, or ``sending`` past its lease)
    to the audit chain of ``control_store`` (a ``control.db`` file), each exactly once
    (:func:`~provguard.grants.service.flush_outbox`), signing each appended entry when the
    folder's key is at hand (``$PROVGUARD_AUDIT_KEY``, else ``audit-key.pem`` beside the store,
    matching ``audit.pub``; :func:`~provguard.audit.folder.cover_own_entry`).

    Returns a :class:`RelayResult`. Raises :class:`~provguard.errors.StoreError` (PG200) when
    ``control_store`` is not an audit log or cannot be written (the events then stay ``new`` in
    the outbox: nothing is lost, a later relay chains them)."""
    from provguard.adapters.audit_sqlite import SqliteAuditLog

    log = SqliteAuditLog(control_store, create=False)
    try:
        sink = _SigningSink(log, control_store.resolve().parent)
        flush_outbox(store, sink)
        return RelayResult(control_store, tuple(sink.appended), tuple(sink.coverage))
    finally:
        log.close()

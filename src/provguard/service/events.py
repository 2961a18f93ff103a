"""The control store's instrument events, applied to the service's policy and re-read on change.

``provguard serve --store DIR`` decides with the policy folder *and* the instrument events
recorded in ``DIR/control.db`` (``provguard instrument event final_judgment ...``), exactly as
``provguard decide --store`` and ``provguard query`` do: the events come from the store's public
read function :meth:`provguard.adapters.control_sqlite.SqlControlStore.events`, which returns
them only when each row matches its hash-chained ``instrument_event`` audit entry (and raises
PG340 / PG310 otherwise). The service does not re-implement that check.

Change detection costs one ``PRAGMA data_version`` per decision on a dedicated read-only SQLite
connection (an integer that changes whenever another connection commits to the file; SQLite
documentation, "PRAGMA data_version"). Only when it changed is the tiny ``instrument_events``
table read; only when its rows changed are the events loaded and verified again (the audit
writer commits to the same file all the time, so ``data_version`` moves often, the rows seldom).
The cost per request is measured by ``bench/bench_service_events.py`` (docs/benchmarks.md).

While the store's events do not verify, :attr:`StoreEvents.error` holds the store's error and
the service refuses to decide (HTTP 503 with that code) -- it applies neither the unverified
events nor silently none of them, as ``decide --store`` refuses too. A failing store is
re-checked at most once per :data:`RETRY_SECONDS` (its verification is not cheap).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from provguard.errors import ProvguardError, StoreError
from provguard.policy.model import PolicySet

__all__ = ["RETRY_SECONDS", "StoreEvents"]

RETRY_SECONDS = 1.0
"""How often (seconds) a store whose events failed verification is checked again."""

_ROWS_SQL = "SELECT instrument_id, event, on_date FROM instrument_events ORDER BY 1, 2"


class StoreEvents:
    """The policy ``base`` with the instrument events of the control store ``db`` applied.

    ``db``: path of a SQLite control store (``control.db``); ``base``: the policy folder's set
    (its own recorded events, if any, are replaced by the store's). :attr:`policy` is the set in
    force; :attr:`generation` grows by one each time it is replaced; :attr:`error` is the
    store's error while its events do not verify (then :attr:`policy` is the last good set, and
    callers must not decide with it: :meth:`check` raises the error).

    The constructor loads the events once and raises the store's error
    (:class:`~provguard.audit.crosscheck.StoreChainMismatchError` PG340,
    :class:`~provguard.errors.AuditChainError` PG310, :class:`StoreError` PG200): a service
    does not start on a store whose events do not verify. Thread-safe.
    """

    def __init__(self, db: Path, base: PolicySet) -> None:
        from provguard.adapters.control_sqlite import SqlControlStore

        self.db = Path(db)
        self.base = base
        self._store = SqlControlStore(self.db)
        try:
            self._watch = sqlite3.connect(
                f"{self.db.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the control store {self.db}: {exc}") from exc
        self._lock = threading.Lock()
        self._version: int | None = None
        self._rows: tuple[tuple[Any, ...], ...] | None = None
        self._failed_at = 0.0
        self.policy = base
        self.generation = 0
        self.error: ProvguardError | None = None
        self.events: dict[str, str] = {}
        self.refresh()
        if self.error is not None:
            raise self.error

    def _data_version(self) -> int:
        row = self._watch.execute("PRAGMA data_version").fetchone()
        return int(row[0])

    def refresh(self) -> bool:
        """Re-read the store if it changed since the last call; True when :attr:`policy` or
        :attr:`error` changed. Never raises: a failure is kept in :attr:`error`."""
        with self._lock:
            try:
                version = self._data_version()
                if version == self._version and (
                    self.error is None or time.monotonic() - self._failed_at < RETRY_SECONDS
                ):
                    return False
                self._version = version
                rows = tuple(tuple(r) for r in self._watch.execute(_ROWS_SQL).fetchall())
            except sqlite3.Error as exc:
                return self._fail(StoreError(f"cannot read instrument events: {exc}"))
            if rows == self._rows and self.error is None:
                return False
            try:
                events = self._store.events()
            except ProvguardError as exc:
                return self._fail(exc)
            self.policy = self.base.with_events(events)
            self.events = {f"{i}/{e}": d.isoformat() for (i, e), d in sorted(events.items())}
            self._rows = rows
            self.error = None
            self.generation += 1
            return True

    def _fail(self, exc: ProvguardError) -> bool:
        changed = self.error is None or self.error.message != exc.message
        self.error = exc
        self._rows = None
        self._failed_at = time.monotonic()
        if changed:
            self.generation += 1
        return changed

    def check(self) -> PolicySet:
        """:meth:`refresh`, then the policy in force; raises :attr:`error` while the store's
        events do not verify."""
        self.refresh()
        if self.error is not None:
            raise self.error
        return self.policy

    def close(self) -> None:
        """Close the watching connection and the store's engine."""
        self._watch.close()
        self._store.engine.dispose()

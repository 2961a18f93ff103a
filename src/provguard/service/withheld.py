"""The store cross-check, per service process: what the HTTP service may state as fact.

``provguard report --store`` and the dashboard withhold a section whose control-store table
disagrees with the hash-chained audit log (:mod:`provguard.audit.crosscheck`, error PG340).
The service's JSON endpoints that read those tables -- the campaign endpoints
(``campaigns``: targets per state, subjects, progress) and the grant views' ``received``
relation (``transfers`` for the sandbox, ``transfer_attempts`` for the grant registry) --
apply the same check through :class:`ChainGuard` and answer **503** ``PG340``
(:class:`WithheldError`, with the first discrepancies in ``error.discrepancies``) instead of
the table's figures while it disagrees (fresh user 12, M1 / M3).

The check is the report's own (:meth:`provguard.report.from_store.StoreReader.chain_check`
on the reader the dashboard uses, after its incremental tally and chain verification), so
the service and the report never differ. It is **cached per process**: the result is reused
while the cache key is unchanged -- the identity of ``control.db`` and of its ``-wal`` file
(device, inode, size, modification time in ns), the same for a SQLite grant registry, and
the audit log's head seq. Any commit to either database (an ``UPDATE`` by another process, an
appended audit entry) changes the key, so the next request re-checks; a request on an
unchanged store costs a few ``stat`` calls and one indexed ``SELECT`` of the head. A grant
registry that is not a SQLite file (PostgreSQL) has no file identity: its check is then
reused for at most ``recheck_seconds``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from provguard.audit.crosscheck import CrossCheckResult, Discrepancy, StoreChainMismatchError
from provguard.report.from_store import StoreReader, verified_range

__all__ = ["ChainGuard", "GuardStats", "WithheldError", "discrepancy_details"]

SHOWN = 5
"""How many discrepancies a :class:`WithheldError` body lists (all are counted)."""


class WithheldError(StoreChainMismatchError):
    """PG340, HTTP 503: the answer would be built from ``tables`` that disagree with the
    audit chain, so it is withheld. ``discrepancies`` holds every discrepancy of those
    tables; ``tables`` the failed tables' names."""

    http_status = 503

    def __init__(
        self, message: str, discrepancies: Sequence[Discrepancy], tables: Sequence[str]
    ) -> None:
        self.tables = tuple(tables)
        super().__init__(message, discrepancies)


def discrepancy_details(found: Sequence[Discrepancy], limit: int = SHOWN) -> list[dict[str, Any]]:
    """The first ``limit`` discrepancies as JSON objects (``table``, ``key``, ``field``,
    ``table_value``, ``chain_value``, ``seq``)."""
    return [
        {
            "table": d.table,
            "key": d.key,
            "field": d.field,
            "table_value": d.table_value,
            "chain_value": d.chain_value,
            "seq": d.seq,
        }
        for d in found[:limit]
    ]


@dataclass(frozen=True)
class GuardStats:
    """``checks``: cross-checks computed; ``hits``: requests answered from the cache;
    ``last_check_seconds``: wall time of the newest computed check."""

    checks: int
    hits: int
    last_check_seconds: float


def _file_id(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _sqlite_file(url: str | None) -> Path | None:
    if url is None:
        return None
    u = make_url(url)
    if not u.drivername.startswith("sqlite") or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


class ChainGuard:
    """The cached cross-check of ``reader``'s store (see the module docstring).

    ``reader``: the service's :class:`StoreReader` (shared with the dashboard);
    ``lock``: the lock that serialises use of ``reader``; ``recheck_seconds``: how long a
    check of a non-SQLite grant registry is reused."""

    def __init__(
        self, reader: StoreReader, lock: threading.Lock, *, recheck_seconds: float = 5.0
    ) -> None:
        self._reader = reader
        self._lock = lock
        self._db = reader.root / "control.db"
        self._registry = _sqlite_file(reader.grants.registry_url)
        self._remote = reader.grants.registry_url is not None and self._registry is None
        self.recheck_seconds = recheck_seconds
        self._key: tuple[Any, ...] | None = None
        self._result: CrossCheckResult | None = None
        self._checks = 0
        self._hits = 0
        self._last = 0.0

    def _cache_key(self) -> tuple[Any, ...]:
        parts: list[Any] = [_file_id(self._db), _file_id(Path(f"{self._db}-wal"))]
        if self._registry is not None:
            parts += [_file_id(self._registry), _file_id(Path(f"{self._registry}-wal"))]
        if self._remote:
            parts.append(int(time.monotonic() // max(self.recheck_seconds, 1e-3)))
        parts.append(self._reader.log.checkpoint().count)
        return tuple(parts)

    def result(self) -> CrossCheckResult:
        """The cross-check of the store as it is now (cached while the key is unchanged).
        Raises :class:`~provguard.errors.StoreError` when a store cannot be read."""
        with self._lock:
            key = self._cache_key()
            if self._result is not None and key == self._key:
                self._hits += 1
                return self._result
            t0 = time.perf_counter()
            r = self._reader
            r.tally.refresh(r.log)
            audit = r.audit()
            verified = verified_range(
                audit, require_signed=True, key_known=r.public_key is not None
            )
            result = r.chain_check(verified)
            self._last = time.perf_counter() - t0
            self._checks += 1
            # the key read before the check: a commit during it changes the key, so the next
            # request checks again
            self._key, self._result = key, result
            return result

    def require(self, tables: Sequence[str], what: str, *, detail: bool = True) -> None:
        """Raise :class:`WithheldError` (PG340, 503) when any of ``tables`` disagrees with the
        chain; ``what`` names the withheld answer in the message (e.g. ``"campaign
        status"``). ``detail=False`` (an app key: the discrepancies may name other apps'
        rows) keeps the counts per table and leaves the discrepancies out of the message and
        of the error (``discrepancies`` empty)."""
        result = self.result()
        failed = [t for t in result.tables if t.table in tables and not t.ok]
        if not failed:
            return
        found = [d for t in failed for d in t.discrepancies]
        names = ", ".join(f"{t.table} {len(t.discrepancies):,}" for t in failed)
        noun = "discrepancy" if len(found) == 1 else "discrepancies"
        message = (
            f"Withheld: the {what} would be read from a table that disagrees with the "
            f"hash-chained audit log ({len(found):,} {noun}: {names}), so it is not evidence "
            "and is not served"
        )
        if detail:
            more = f"; and {len(found) - SHOWN:,} more" if len(found) > SHOWN else ""
            message += ". First: " + "; ".join(str(d) for d in found[:SHOWN]) + more
        raise WithheldError(message, found if detail else (), [t.table for t in failed])

    def failed(self, table: str) -> bool:
        """Whether ``table`` disagrees with the chain now."""
        t = self.result().table(table)
        return t is not None and not t.ok

    def stats(self) -> GuardStats:
        """Counters of this guard (for ``/healthz`` and the benchmark)."""
        return GuardStats(self._checks, self._hits, self._last)

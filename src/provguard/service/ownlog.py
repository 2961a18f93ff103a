"""The service's audit log, counting the entries this process appended (``/healthz``).

Several processes append to one ``control.db`` (``serve --workers N``, ``provguard run``,
``provguard query``), so the log's head says nothing about what *this* process wrote.
:class:`OwnEntriesAuditLog` is a :class:`~provguard.adapters.audit_sqlite.SqliteAuditLog` that
counts every entry appended through it -- the audit writer's batches (both its fast canonical
path and its dict path, ``audit.dropped`` records included), the ``service.audit_off`` marker,
grant events appended directly when the audit is off -- and remembers the highest seq it
wrote. Counting happens after the transaction committed: a failed append (nothing written)
counts nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.audit.chain import AuditEntry

__all__ = ["OwnEntriesAuditLog", "OwnWrites"]


@dataclass(frozen=True, slots=True)
class OwnWrites:
    """What this process appended: ``entries`` (count) and ``last_seq`` (the highest seq among
    them; 0 before the first)."""

    entries: int
    last_seq: int


class OwnEntriesAuditLog(SqliteAuditLog):
    """:class:`SqliteAuditLog` that counts the entries appended through this object
    (:meth:`own_writes`). Thread-safe: the writer thread and request threads may append."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._own_lock = threading.Lock()
        self._own_entries = 0
        self._own_last_seq = 0

    def _count(self, n: int, last_seq: int) -> None:
        if n <= 0:
            return
        with self._own_lock:
            self._own_entries += n
            self._own_last_seq = max(self._own_last_seq, last_seq)

    def own_writes(self) -> OwnWrites:
        """The entries appended through this log object so far (committed ones only)."""
        with self._own_lock:
            return OwnWrites(entries=self._own_entries, last_seq=self._own_last_seq)

    def _append(
        self, items: Iterable[tuple[str, Mapping[str, object], datetime | None]]
    ) -> list[AuditEntry]:
        written = super()._append(items)
        if written:
            self._count(len(written), written[-1].seq)
        return written

    def append_canonical(self, items: Iterable[tuple[str, str, str]]) -> tuple[int, str]:
        seen = [0]

        def counted() -> Iterator[tuple[str, str, str]]:
            for item in items:
                seen[0] += 1
                yield item

        last_seq, head = super().append_canonical(counted())
        self._count(seen[0], last_seq)
        return last_seq, head

"""A background writer for the audit log, with two delivery modes.

Callers on a hot path (the PDP, an HTTP handler) :meth:`AuditWriter.submit` an entry, which
stamps it with the clock and puts it on a bounded in-memory queue; one writer thread drains the
queue in batches and appends each batch to the :class:`~provguard.adapters.audit_sqlite.
SqliteAuditLog` in one transaction (group commit). Entries keep submission order.

Delivery modes (chosen per deployment):

* ``"block"`` -- **never drop**: when the queue is full, :meth:`submit` waits for room
  (back-pressure on the caller); with ``block_timeout`` set it raises
  :class:`~provguard.errors.AuditError` instead of waiting longer (nothing is queued then).
* ``"drop"`` -- **bounded buffer**: when the queue is full, :meth:`submit` returns ``None`` at
  once and counts the entry in :attr:`WriterStats.dropped`.

Acknowledgement: an entry is *acknowledged* once its batch has committed (``on_commit`` is called
and :meth:`wait` returns). A crash (even ``SIGKILL``) loses at most the entries not yet
acknowledged -- the queue in memory and the batch being written -- and never corrupts the chain,
because each batch is one SQLite transaction that recomputes seq and hashes from the stored head
(see :mod:`provguard.adapters.audit_sqlite`). A failed write is retried with back-off (1 ms
doubling to 1 s) while the writer runs; entries still unwritten at :meth:`close` are counted in
:attr:`WriterStats.failed`.

Periodic checkpoints: with ``signer`` (an Ed25519 private key) and ``checkpoint_every`` = N, the
writer signs and stores a checkpoint (:meth:`SqliteAuditLog.sign_checkpoint`) after every N
committed entries, and once more on :meth:`close`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from provguard.audit.chain import AuditEntry
from provguard.clock import Clock, SystemClock
from provguard.errors import AuditError, ProvguardError

__all__ = ["AuditSink", "AuditWriter", "DeliveryMode", "WriterStats"]

DeliveryMode = Literal["block", "drop"]

_Item = tuple[str, Mapping[str, object], datetime]


class AuditSink(Protocol):
    """What the writer needs of a log (:class:`provguard.adapters.audit_sqlite.SqliteAuditLog`)."""

    def append_batch(
        self, items: Iterable[tuple[str, Mapping[str, object], datetime | None]]
    ) -> list[AuditEntry]: ...

    def sign_checkpoint(self, private_key: Ed25519PrivateKey) -> Any: ...


@dataclass(frozen=True)
class WriterStats:
    """Counters of an :class:`AuditWriter` (entries, not batches, unless named so).

    ``accepted`` = queued; ``committed`` = acknowledged (in the log); ``dropped`` = refused in
    ``drop`` mode because the queue was full; ``failed`` = accepted but never written (store
    failure until close); ``pending`` = accepted - committed - failed; ``last_seq`` the log seq of
    the last committed entry (0 before the first); ``high_water`` the largest queue depth seen;
    ``checkpoints`` signed checkpoints taken; ``last_error`` the last store error text.
    """

    accepted: int
    committed: int
    dropped: int
    failed: int
    batches: int
    last_seq: int
    high_water: int
    checkpoints: int
    last_error: str | None

    @property
    def pending(self) -> int:
        return self.accepted - self.committed - self.failed


class AuditWriter:
    """Background, batching writer for ``log``; see the module docstring.

    ``capacity`` bounds the queue (entries, >= 1); ``batch_max`` bounds one transaction;
    ``clock`` stamps entries at submission; ``on_commit(last_seq, committed)`` is called from
    the writer thread after each commit. Use as a context manager, or call :meth:`start` /
    :meth:`close`. Raises ``ValueError`` for bad settings.
    """

    def __init__(
        self,
        log: AuditSink,
        *,
        mode: DeliveryMode = "block",
        capacity: int = 10_000,
        batch_max: int = 2_000,
        block_timeout: float | None = None,
        clock: Clock | None = None,
        signer: Ed25519PrivateKey | None = None,
        checkpoint_every: int = 0,
        on_commit: Callable[[int, int], None] | None = None,
    ) -> None:
        if mode not in ("block", "drop"):
            raise ValueError(f"delivery mode must be 'block' or 'drop', not {mode!r}")
        if capacity < 1 or batch_max < 1 or checkpoint_every < 0:
            raise ValueError("capacity and batch_max must be >= 1, checkpoint_every >= 0")
        if checkpoint_every and signer is None:
            raise ValueError("checkpoint_every needs a signer (an Ed25519 private key)")
        self.log = log
        self.mode: DeliveryMode = mode
        self.capacity = capacity
        self._batch_max = batch_max
        self._block_timeout = block_timeout
        self._clock: Clock = clock or SystemClock()
        self._signer = signer
        self._checkpoint_every = checkpoint_every
        self._on_commit = on_commit
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=capacity)
        self._submit_lock = threading.Lock()
        self._done = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._accepted = 0
        self._committed = 0
        self._dropped = 0
        self._failed = 0
        self._batches = 0
        self._last_seq = 0
        self._high_water = 0
        self._checkpoints = 0
        self._since_checkpoint = 0
        self._last_error: str | None = None

    # ----------------------------------------------------------------------------- lifecycle

    def start(self) -> AuditWriter:
        """Start the writer thread (idempotent); returns ``self``."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="provguard-audit-writer", daemon=True
            )
            self._thread.start()
        return self

    def close(self, timeout: float | None = 30.0) -> WriterStats:
        """Write everything queued, sign a final checkpoint (if configured), stop the thread.
        Returns the final :meth:`stats`. Submitting after close raises :class:`AuditError`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._signer is not None and self._since_checkpoint:
            self._take_checkpoint()
        return self.stats()

    def __enter__(self) -> AuditWriter:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------- submitting

    def submit(
        self, kind: str, payload: Mapping[str, object], at: datetime | None = None
    ) -> int | None:
        """Queue one entry stamped ``at`` (default: the clock, now). Returns its submission
        number (1-based, in order; pass it to :meth:`wait`) or ``None`` if dropped (``drop``
        mode, queue full). The writer keeps a reference to ``payload``: do not mutate it
        afterwards (masking works on a copy, so the caller's object is never changed).

        Raises :class:`AuditError` after :meth:`close`, or when ``block`` mode waited
        ``block_timeout`` seconds for room."""
        if self._stop.is_set():
            raise AuditError("the audit writer is closed")
        item = (kind, payload, at if at is not None else self._clock.now())
        with self._submit_lock:
            if self.mode == "drop":
                try:
                    self._queue.put_nowait(item)
                except queue.Full:
                    self._dropped += 1
                    return None
            else:
                try:
                    self._queue.put(item, timeout=self._block_timeout)
                except queue.Full:
                    raise AuditError(
                        f"audit queue full for {self._block_timeout} s (back-pressure): "
                        "the entry was not queued"
                    ) from None
            self._accepted += 1
            depth = self._queue.qsize()
            if depth > self._high_water:
                self._high_water = depth
            return self._accepted

    def wait(self, number: int, timeout: float | None = None) -> bool:
        """Wait until submission ``number`` is acknowledged (committed); False on timeout or if
        it failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._done:
            while self._committed + self._failed < number:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._done.wait(remaining)
            return self._committed >= number

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything accepted so far is acknowledged; False on timeout/failure."""
        return self.wait(self._accepted, timeout)

    def stats(self) -> WriterStats:
        """A snapshot of the counters."""
        with self._done:
            return WriterStats(
                accepted=self._accepted,
                committed=self._committed,
                dropped=self._dropped,
                failed=self._failed,
                batches=self._batches,
                last_seq=self._last_seq,
                high_water=self._high_water,
                checkpoints=self._checkpoints,
                last_error=self._last_error,
            )

    # ----------------------------------------------------------------------------- the thread

    def _next_batch(self) -> list[_Item]:
        try:
            first = self._queue.get(timeout=0.05)
        except queue.Empty:
            return []
        batch = [first]
        while len(batch) < self._batch_max:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                if self._stop.is_set() and self._queue.empty():
                    return
                continue
            self._write(batch)

    def _write(self, batch: list[_Item]) -> None:
        delay = 0.001
        while True:
            try:
                written = self.log.append_batch(batch)
            except ProvguardError as exc:
                with self._done:
                    self._last_error = exc.message
                if isinstance(exc, AuditError) or self._stop.is_set():
                    # a bad payload will never be written; a closing writer gives up
                    self._fail(batch)
                    return
                time.sleep(delay)
                delay = min(1.0, delay * 2)
                continue
            break
        with self._done:
            self._committed += len(written)
            self._batches += 1
            if written:
                self._last_seq = written[-1].seq
            self._since_checkpoint += len(written)
            self._done.notify_all()
            last_seq, committed = self._last_seq, self._committed
        if self._on_commit is not None:
            self._on_commit(last_seq, committed)
        if self._checkpoint_every and self._since_checkpoint >= self._checkpoint_every:
            self._take_checkpoint()

    def _fail(self, batch: list[_Item]) -> None:
        # one bad payload must not take the others with it: write them one by one
        for item in batch:
            try:
                entry = self.log.append_batch([item])[0]
            except ProvguardError as exc:
                with self._done:
                    self._failed += 1
                    self._last_error = exc.message
                    self._done.notify_all()
                continue
            with self._done:
                self._committed += 1
                self._last_seq = entry.seq
                self._since_checkpoint += 1
                self._done.notify_all()

    def _take_checkpoint(self) -> None:
        assert self._signer is not None
        try:
            self.log.sign_checkpoint(self._signer)
        except ProvguardError as exc:
            with self._done:
                self._last_error = exc.message
            return
        with self._done:
            self._checkpoints += 1
            self._since_checkpoint = 0

"""A background writer for the audit log, with two delivery modes.

Callers on a hot path (the PDP, an HTTP handler) hand an entry to :meth:`AuditWriter.submit`
(a ready payload) or :meth:`AuditWriter.submit_decision` (the immutable
:class:`~provguard.decide.Decision` itself). The caller's side is O(1), lock-free and
allocation-light: it stamps the entry with ``time.time_ns()`` (or the injected clock), takes a
number from an atomic counter, appends one tuple to a bounded :class:`collections.deque` and
returns the number (on an instance, ``submit_decision`` is a closure over the queue: no
attribute lookups). It never wakes the writer thread (a wake-up is a GIL hand-over on the
caller's time). One writer thread polls the queue every ``interval`` seconds (backing off to
``idle_interval`` while it stays empty; :meth:`wait`, :meth:`flush` and :meth:`close` wake it
at once), takes up to ``batch_max`` entries and appends them in one transaction (group commit);
entries keep submission order.

Two ways to write a batch. **Fast path** (a log with ``append_canonical``, e.g.
:class:`~provguard.adapters.audit_sqlite.SqliteAuditLog`): each entry's canonical JSON is
written straight from the Decision (:func:`~provguard.audit.records.decision_json`), its
timestamp from the integer clock reading (:func:`~provguard.audit.chain.format_at_ns`), and the
log hashes and inserts the entries one by one as they are produced (no
:class:`~provguard.audit.chain.AuditEntry`); every ``gil_slice`` entries the writer releases the
GIL once, so a deciding thread never waits a whole switch interval for it. With the log's
``masker`` set (the HTTP service), the writer builds the payload dict to ask the masker, and
only an entry that needs masking is encoded from its masked copy; the others still take
``decision_json``. **Dict path** (any other sink): the payload is built
(:func:`~provguard.audit.records.decision_payload`) and appended with ``append_batch``, which
masks. Both write byte-for-byte the same chain (``tests/audit/test_audit_fastpath.py``).

Delivery modes (chosen per deployment):

* ``"block"`` -- **never drop**: when the queue holds ``capacity`` entries, a submit waits for
  room (back-pressure on the caller); with ``block_timeout`` set it raises
  :class:`~provguard.errors.AuditError` instead of waiting longer (nothing is queued then).
* ``"drop"`` -- **bounded buffer**: when the queue is full, a submit returns ``None`` at once and
  counts the entry in :attr:`WriterStats.dropped`. The loss itself is evidence: after each
  batch in which drops happened, the writer appends one chained entry of kind
  :data:`DROPPED_KIND` (``"audit.dropped"``) with ``dropped`` (entries refused since the last
  such entry), ``dropped_total``, ``first_dropped_at`` / ``last_dropped_at`` (UTC, ISO 8601,
  microseconds), ``capacity`` and ``after_submission`` (the last submission number issued when
  the record was made). :attr:`WriterStats.drops_recorded` counts the drops so recorded; at
  :meth:`close` every drop is recorded.

Acknowledgement: an entry is *acknowledged* once its batch has committed (``on_commit`` is called
and :meth:`wait` returns True). A crash (even ``SIGKILL``) loses at most the entries not yet
acknowledged -- the queue in memory (at most ``capacity`` entries, or about ``interval`` seconds
of traffic) and the batch being written -- and never corrupts the chain, because each batch is
one SQLite transaction that recomputes seq and hashes from the stored head (see
:mod:`provguard.adapters.audit_sqlite`). A failed write is retried with back-off (1 ms doubling
to 1 s) while the writer runs; entries still unwritten at :meth:`close`, and entries whose
payload cannot be encoded, are counted in :attr:`WriterStats.failed` (and :meth:`wait` on them
returns False).

Periodic checkpoints: with ``signer`` (an Ed25519 private key, RFC 8032) and
``checkpoint_every`` = N, the writer signs and stores a checkpoint after every N committed
entries, and once more on :meth:`close` (with ``checkpoint_every = 0``: only at close, or when
:meth:`sign_own_entries` is called). **It signs only what it wrote**: the checkpoint ends at
the last entry *this writer* committed (never at a head another process appended to), and
only when every entry before it was either written by this writer or is already covered by a
stored checkpoint whose signature verifies with the signer's key or one of
``trusted_public_keys``. Otherwise nothing is signed: :meth:`sign_own_entries` raises
:class:`~provguard.errors.ForeignEntriesError` (PG331) naming the entries #a–#b someone else
wrote, and the periodic path records it in :attr:`WriterStats.last_error` and
:attr:`WriterStats.checkpoints_refused` (an unkeyed writer of the same file cannot get its
entries signed by the service; docs/audit.md, findings I-1).
"""

from __future__ import annotations

import itertools
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from provguard.audit.chain import (
    AuditEntry,
    Checkpoint,
    canonical_payload,
    format_at,
    format_at_ns,
)
from provguard.audit.masking import Masker
from provguard.audit.records import decision_json, decision_payload
from provguard.audit.signing import SignedCheckpoint, sign_checkpoint, verify_signed_checkpoint
from provguard.clock import Clock, SystemClock
from provguard.errors import AuditError, ForeignEntriesError, ProvguardError

if TYPE_CHECKING:
    from provguard.decide import Decision

__all__ = ["DROPPED_KIND", "AuditSink", "AuditWriter", "DeliveryMode", "WriterStats"]

DROPPED_KIND = "audit.dropped"
"""Kind of the chained entry that records how many entries a ``drop``-mode writer refused."""

DeliveryMode = Literal["block", "drop"]

# what the caller queues: (number, kind, payload or Decision, stage or None, context, at).
# ``stage is None`` marks a ready payload; otherwise the payload is built from the Decision
# in the writer thread. ``at`` is a datetime, or int nanoseconds since the epoch (UTC).
_Raw = tuple[int, str, Any, str | None, Mapping[str, Any] | None, datetime | int]
_Item = tuple[str, Mapping[str, object], datetime]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_time_ns = time.time_ns


def _by_number(raw: _Raw) -> int:
    return raw[0]


def _peek(counter: itertools.count[int]) -> int:
    """The next value of ``counter`` without taking it (its repr is ``count(N)``)."""
    return int(repr(counter)[6:-1])


def _stamp(at: datetime | int) -> datetime:
    return at if isinstance(at, datetime) else _EPOCH + timedelta(microseconds=at // 1000)


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
    failure until close, or a payload that cannot be encoded); ``pending`` = accepted -
    committed - failed; ``last_seq`` the log seq of the last committed entry (0 before the
    first); ``high_water`` the largest queue depth the writer thread saw when it took a batch;
    ``checkpoints`` signed checkpoints taken; ``last_error`` the last store error text;
    ``drops_recorded`` the drops already recorded in the log by ``audit.dropped`` entries.
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
    drops_recorded: int = 0
    checkpoints_refused: int = 0
    """Checkpoints not signed because entries someone else wrote were not covered (PG331)."""

    @property
    def pending(self) -> int:
        return self.accepted - self.committed - self.failed


@dataclass(frozen=True, slots=True)
class DecisionLane:
    """Handles for queueing ``"decision"`` entries inline (see :meth:`AuditWriter.decision_lane`):
    a caller with ``len(queue) < limit[0]`` appends
    ``(next(numbers), "decision", decision, stage, None, stamp())``, else calls
    ``slow(decision)`` (waits for room, counts a drop, or raises when the writer is closed)."""

    queue: deque[Any]
    numbers: Iterator[int]
    limit: list[int]
    stamp: Callable[[], Any]
    stage: str
    slow: Callable[[Decision], int | None]


class AuditWriter:
    """Background, batching writer for ``log``; see the module docstring.

    ``capacity`` bounds the queue (entries, >= 1); ``batch_max`` bounds one transaction;
    ``interval`` (seconds, > 0) is how often a busy writer takes a batch and ``idle_interval``
    (>= ``interval``) the longest it sleeps while the queue stays empty; ``clock`` stamps
    entries at submission (default: the system clock, read as ``time.time_ns()``);
    ``gil_slice`` (entries, >= 0) is how many entries the writer encodes before it releases the
    GIL once (``time.sleep(0)``), so that a deciding thread waits for the writer at most that
    long instead of a whole switch interval (5 ms); 0 = never;
    ``on_commit(last_seq, committed)`` is called from the writer thread after each commit. Use
    as a context manager, or call :meth:`start` / :meth:`close`. Raises ``ValueError`` for bad
    settings.
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
        interval: float = 0.005,
        idle_interval: float = 0.05,
        gil_slice: int = 256,
        trusted_public_keys: Iterable[Ed25519PublicKey] = (),
        on_checkpoint: Callable[[SignedCheckpoint], None] | None = None,
    ) -> None:
        if mode not in ("block", "drop"):
            raise ValueError(f"delivery mode must be 'block' or 'drop', not {mode!r}")
        if capacity < 1 or batch_max < 1 or checkpoint_every < 0:
            raise ValueError("capacity and batch_max must be >= 1, checkpoint_every >= 0")
        if not interval > 0 or not idle_interval >= interval:
            raise ValueError("interval must be > 0 and idle_interval >= interval (seconds)")
        if gil_slice < 0:
            raise ValueError("gil_slice must be >= 0 (entries)")
        if checkpoint_every and signer is None:
            raise ValueError("checkpoint_every needs a signer (an Ed25519 private key)")
        if signer is not None and not all(
            callable(getattr(log, name, None))
            for name in ("store_checkpoint", "signed_checkpoints", "entries")
        ):
            raise ValueError(
                "a signing writer needs a log with store_checkpoint, signed_checkpoints and "
                "entries (SqliteAuditLog): it signs only what it wrote"
            )
        self.log = log
        self.mode: DeliveryMode = mode
        self.capacity = capacity
        self._batch_max = batch_max
        self._block_timeout = block_timeout
        self._clock: Clock = clock or SystemClock()
        # the system clock is read as an int on the hot path and turned into a datetime later
        self._fast_clock = type(self._clock) is SystemClock
        # the fast path (canonical text straight from the Decision, no payload dict, rows
        # inserted as they are hashed): for a sink that offers append_canonical, masking nothing
        fast = getattr(log, "append_canonical", None)
        self._fast_append: Callable[[Iterable[tuple[str, str, str]]], tuple[int, str]] | None = (
            fast if callable(fast) else None
        )
        masker = getattr(log, "masker", None)
        self._masker: Masker | None = masker if isinstance(masker, Masker) else None
        self._signer = signer
        self._checkpoint_every = checkpoint_every
        self._trusted_keys: tuple[Ed25519PublicKey, ...] = (
            (signer.public_key(), *trusted_public_keys) if signer is not None else ()
        )
        self._on_checkpoint = on_checkpoint
        # what this writer wrote: merged (first, last) seq ranges above _trusted, and its
        # newest (seq, hash); entries #1.._trusted are its own or covered by a verified
        # checkpoint. Guarded by _own_lock.
        self._own_lock = threading.Lock()
        self._own: list[tuple[int, int]] = []
        self._own_head: tuple[int, str] | None = None
        self._trusted = 0
        self._last_signed: SignedCheckpoint | None = None
        self._refused = 0
        self._on_commit = on_commit
        self._interval = interval
        self._idle_interval = idle_interval
        self._gil_slice = gil_slice
        # callers: an atomic counter (itertools.count, one C call under the GIL) numbers the
        # entries and a deque append queues them; no lock, so two threads may append their
        # entries in the other order -- the writer re-sorts by number (see _take)
        self._queue: deque[_Raw] = deque()
        self._numbers = itertools.count(1)
        self._drops = itertools.count()
        # drop bookkeeping (the drop path only, never the hot path): guarded by _drop_lock
        self._drop_lock = threading.Lock()
        self._drop_first_ns: int | None = None
        self._drop_last_ns = 0
        self._drops_recorded = 0  # writer only
        self._room = threading.Condition(threading.Lock())  # block mode: waiting for room
        self._waiting = 0
        self._done = threading.Condition()  # counters below the line + acknowledgements
        self._wake = threading.Event()
        self._closed = False
        # the queue bound the hot path compares with: capacity, or -1 once closed (one check
        # covers both; the slow path then says which)
        self._limit = [capacity]
        self.submit_decision = self._fast_submit_decision()  # type: ignore[method-assign]
        self._thread: threading.Thread | None = None
        self._held: list[_Raw] = []  # writer only: entries behind a numbering gap
        # --- guarded by _done
        self._processed = 0  # submissions handled in order (committed or failed)
        self._committed = 0
        self._failed = 0
        self._failed_numbers: set[int] = set()
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
        self._closed = True
        self._limit[0] = -1
        self._wake.set()
        with self._room:
            self._room.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._thread is None or not self._thread.is_alive():
            # entries queued by a submit that raced with close, or by a never-started writer
            self._drain(final=True)
        if self._signer is not None and self._since_checkpoint:
            self._take_checkpoint()
        return self.stats()

    @property
    def signs(self) -> bool:
        """Whether this writer has a signer (signs checkpoints of its own entries)."""
        return self._signer is not None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (a closed writer accepts nothing more)."""
        return self._closed

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
        mode, queue full). The writer keeps a reference to ``payload`` and encodes it later:
        do not mutate it afterwards (masking works on a copy, so the caller's object is never
        changed). A payload that cannot be encoded is counted as failed, not raised here.

        Raises :class:`AuditError` after :meth:`close`, or when ``block`` mode waited
        ``block_timeout`` seconds for room."""
        if self._closed:
            raise AuditError("the audit writer is closed")
        q = self._queue
        if len(q) < self.capacity:
            number = next(self._numbers)
            q.append(
                (
                    number,
                    kind,
                    payload,
                    None,
                    None,
                    at if at is not None else _time_ns() if self._fast_clock else self._clock.now(),
                )
            )
            return number
        return self._put_slow(kind, payload, None, None, at)

    def submit_decision(
        self,
        decision: Decision,
        *,
        stage: str,
        context: Mapping[str, Any] | None = None,
        at: datetime | None = None,
    ) -> int | None:
        """Queue the audit entry of ``decision`` (kind ``"decision"``), whose payload
        (:func:`~provguard.audit.records.decision_payload` with ``stage`` and ``context``) is
        built in the writer thread. This is the hot-path call: O(1), lock-free (an atomic
        counter and a deque append under the GIL), no payload work on the caller's time.
        ``decision`` is immutable; ``context`` is kept by reference (do not mutate it
        afterwards). Returns and raises as :meth:`submit`."""
        if self._closed:
            raise AuditError("the audit writer is closed")
        q = self._queue
        if len(q) < self.capacity:
            number = next(self._numbers)
            q.append(
                (
                    number,
                    "decision",
                    decision,
                    stage,
                    context,
                    at if at is not None else _time_ns() if self._fast_clock else self._clock.now(),
                )
            )
            return number
        return self._put_slow("decision", decision, stage, context, at)

    def _fast_submit_decision(
        self,
    ) -> Callable[..., int | None]:
        """:meth:`submit_decision` as a closure over the queue, the counter and the bound (local
        reads instead of attribute lookups, no bound-method object per call): 0.57 vs 0.85 us
        per call at load 7 (``bench/bench_audit.py --diagnose``). Same behaviour: the method
        is the reference, and the tests call both."""
        queue, numbers, limit = self._queue, self._numbers, self._limit
        append, time_ns = self._queue.append, _time_ns
        clock = None if self._fast_clock else self._clock
        # a weak reference: the instance holds the closure, so a strong one would be a cycle
        # that keeps a dropped writer (and its queue) alive until the cyclic GC runs
        writer = weakref.ref(self)

        def submit_decision(
            decision: Decision,
            *,
            stage: str,
            context: Mapping[str, Any] | None = None,
            at: datetime | None = None,
        ) -> int | None:
            if len(queue) < limit[0]:
                number = next(numbers)
                append(
                    (
                        number,
                        "decision",
                        decision,
                        stage,
                        context,
                        at if at is not None else time_ns() if clock is None else clock.now(),
                    )
                )
                return number
            owner = writer()
            if owner is None:  # unreachable while the closure is bound to its writer
                raise AuditError("the audit writer is gone")
            return owner._put_slow("decision", decision, stage, context, at)

        submit_decision.__doc__ = AuditWriter.submit_decision.__doc__
        return submit_decision

    def decision_lane(self, stage: str) -> DecisionLane:
        """What a decision point needs to queue its decisions inline (no call per decision):
        the queue, the counter, the bound, the clock read and the slow path, for entries of
        kind ``"decision"`` and stage ``stage``. :class:`~provguard.decide.DecisionPoint` with
        ``audit=writer`` uses it: the same entries as :meth:`submit_decision` (no context), the
        same numbering, bound, back-pressure or drop counting."""

        def slow(decision: Decision) -> int | None:
            return self._put_slow("decision", decision, stage, None, None)

        return DecisionLane(
            queue=self._queue,
            numbers=self._numbers,
            limit=self._limit,
            stamp=_time_ns if self._fast_clock else self._clock.now,
            stage=stage,
            slow=slow,
        )

    def _put_slow(
        self,
        kind: str,
        obj: Any,
        stage: str | None,
        context: Mapping[str, Any] | None,
        at: datetime | None,
    ) -> int | None:
        """The queue was full (or the writer closed): drop (and count) or wait for room."""
        if self._closed:
            raise AuditError("the audit writer is closed")
        if self.mode == "drop":
            if len(self._queue) < self.capacity:  # the writer made room meanwhile
                return self._append(kind, obj, stage, context, at)
            now = _time_ns()
            with self._drop_lock:
                next(self._drops)
                if self._drop_first_ns is None:
                    self._drop_first_ns = now
                self._drop_last_ns = now
            return None
        timeout = self._block_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._room:
            self._waiting += 1
            try:
                while True:
                    if self._closed:
                        raise AuditError("the audit writer is closed")
                    if len(self._queue) < self.capacity:
                        return self._append(kind, obj, stage, context, at)
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise AuditError(
                            f"audit queue full for {timeout} s (back-pressure): "
                            "the entry was not queued"
                        )
                    self._wake.set()  # a full queue is worth a batch now
                    # short slices: the writer notifies without a lock the callers take
                    self._room.wait(0.01 if remaining is None else min(remaining, 0.01))
            finally:
                self._waiting -= 1

    def _append(
        self,
        kind: str,
        obj: Any,
        stage: str | None,
        context: Mapping[str, Any] | None,
        at: datetime | None,
    ) -> int:
        number = next(self._numbers)
        stamp = at if at is not None else _time_ns() if self._fast_clock else self._clock.now()
        self._queue.append((number, kind, obj, stage, context, stamp))
        return number

    def wait(self, number: int, timeout: float | None = None) -> bool:
        """Wait until submission ``number`` is acknowledged (committed); False on timeout or if
        it failed. Wakes the writer instead of letting it finish its polling interval."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._done:
            if self._processed < number:
                self._wake.set()
            while self._processed < number:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._done.wait(remaining)
            return number not in self._failed_numbers

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything accepted so far is acknowledged; False on timeout, or if an
        entry accepted so far failed."""
        if not self.wait(self._issued(), timeout):
            return False
        with self._done:
            return not self._failed_numbers

    def stats(self) -> WriterStats:
        """A snapshot of the counters."""
        accepted, dropped = self._issued(), _peek(self._drops)
        with self._done:
            return WriterStats(
                accepted=accepted,
                committed=self._committed,
                dropped=dropped,
                failed=self._failed,
                batches=self._batches,
                last_seq=self._last_seq,
                high_water=self._high_water,
                checkpoints=self._checkpoints,
                checkpoints_refused=self._refused,
                last_error=self._last_error,
                drops_recorded=self._drops_recorded,
            )

    # ----------------------------------------------------------------------------- the thread

    def _take(self) -> list[_Raw]:
        """Up to ``batch_max`` queued entries in number order, stopping at a gap (only the
        writer pops). A gap is an entry whose number was issued but whose append has not
        happened yet (another thread between the two steps); the entries after it are held
        back until it arrives."""
        q = self._queue
        depth = len(q)
        if depth > self._high_water:
            self._high_water = depth
        got = self._held
        if depth:
            popleft = q.popleft
            got.extend([popleft() for _ in range(min(depth, self._batch_max))])
            if self._waiting:
                with self._room:
                    self._room.notify_all()
        if not got:
            return []
        got.sort(key=_by_number)
        expected = self._processed + 1
        k = 0
        while k < len(got) and got[k][0] == expected + k:
            k += 1
        self._held = got[k:]
        return got[:k]

    def _run(self) -> None:
        sleep = self._interval
        while True:
            raw = self._take()
            if raw:
                sleep = self._interval
                self._write(raw)
                self._record_drops()
                if len(self._queue) >= self._batch_max:
                    continue  # a backlog: no pause
            elif self._closed:
                self._record_drops()
                return
            else:
                self._record_drops()
                sleep = min(self._idle_interval, sleep * 2)
            self._wake.wait(sleep)
            self._wake.clear()

    def _drain(self, *, final: bool = False) -> None:
        """Write what is queued. ``final`` (at close): numbers issued whose entries never
        arrived (a submit racing with close) are counted as failed, so stats add up."""
        while True:
            raw = self._take()
            if raw:
                self._write(raw)
                self._record_drops()
                continue
            self._record_drops()
            if not final:
                return
            upto = self._held[0][0] - 1 if self._held else self._issued()
            if upto <= self._processed:
                return
            with self._done:
                for number in range(self._processed + 1, upto + 1):
                    self._failed_numbers.add(number)
                self._failed += upto - self._processed
                self._processed = upto
                self._last_error = "entries submitted while the writer closed were not written"
                self._done.notify_all()

    def _record_drops(self) -> None:
        """Append one :data:`DROPPED_KIND` entry for the drops not yet recorded (writer thread,
        or the closing caller once the thread stopped). It is not a submission: it has no
        number and is not counted in ``committed``."""
        if _peek(self._drops) == self._drops_recorded:
            return
        with self._drop_lock:
            total = _peek(self._drops)
            first, last = self._drop_first_ns, self._drop_last_ns
            self._drop_first_ns = None
        n = total - self._drops_recorded
        if n <= 0 or first is None:
            return
        payload = {
            "dropped": n,
            "dropped_total": total,
            "first_dropped_at": _stamp(first).isoformat(),
            "last_dropped_at": _stamp(last).isoformat(),
            "capacity": self.capacity,
            "after_submission": self._issued(),
        }
        try:
            recorded = self.log.append_batch([(DROPPED_KIND, payload, None)])
        except ProvguardError as exc:
            with self._drop_lock:  # keep the window open: recorded with the next drop record
                if self._drop_first_ns is None or first < self._drop_first_ns:
                    self._drop_first_ns = first
            with self._done:
                self._last_error = exc.message
            return
        if recorded:
            self._wrote(recorded[0].seq, recorded[-1].seq, recorded[-1].hash)
        self._drops_recorded = total

    def _issued(self) -> int:
        return _peek(self._numbers) - 1

    def _materialise(self, raw: list[_Raw]) -> list[_Item | None]:
        """Payloads built from decisions; ``None`` for an entry whose payload cannot be built."""
        out: list[_Item | None] = []
        for _number, kind, obj, stage, context, at in raw:
            try:
                payload = (
                    obj if stage is None else decision_payload(obj, stage=stage, context=context)
                )
                out.append((kind, payload, _stamp(at)))
            except Exception as exc:  # a caller's object we cannot read: fail it alone
                with self._done:
                    self._last_error = f"cannot build the audit payload: {exc!r}"
                out.append(None)
        return out

    def _write(self, raw: list[_Raw]) -> None:
        if self._fast_append is None or not self._write_fast(raw):
            self._write_dicts(raw)

    def _texts(self, raw: list[_Raw]) -> Iterator[tuple[str, str, str]]:
        """The batch as ``(kind, at_text, canonical payload text)``, one at a time (the log
        hashes and inserts each as it comes: nothing per entry is kept for the whole batch).
        Raises what encoding raises (the dict path then fails that entry alone)."""
        slice_, left = self._gil_slice, self._gil_slice
        masker = self._masker
        for _number, kind, obj, stage, context, at in raw:
            if slice_:
                left -= 1
                if not left:  # let a waiting caller have the GIL now, not in 5 ms
                    time.sleep(0)
                    left = slice_
            at_text = format_at_ns(at) if isinstance(at, int) else format_at(at)
            if masker is None:
                text = (
                    canonical_payload(obj)
                    if stage is None
                    else decision_json(obj, stage=stage, context=context)
                )
            else:  # what SqliteAuditLog.append_batch stores: the masked copy, if any
                payload = (
                    obj if stage is None else decision_payload(obj, stage=stage, context=context)
                )
                if masker.needs_masking(payload):
                    text = canonical_payload(masker.mask(payload))
                elif stage is None:
                    text = canonical_payload(payload)
                else:
                    text = decision_json(obj, stage=stage, context=context)
            yield kind, at_text, text

    def _write_fast(self, raw: list[_Raw]) -> bool:
        """Append ``raw`` with ``append_canonical`` (retrying store failures like
        :meth:`_write_dicts`); False if an entry cannot be encoded or the sink refused the
        batch (nothing was written; the dict path takes over)."""
        assert self._fast_append is not None
        delay = 0.001
        while True:
            try:
                last_seq, _head = self._fast_append(self._texts(raw))
            except ProvguardError as exc:
                with self._done:
                    self._last_error = exc.message
                if isinstance(exc, AuditError) or self._closed:
                    return False
                time.sleep(delay)
                delay = min(1.0, delay * 2)
                continue
            except Exception:  # a caller's object we cannot encode: the dict path reports it
                return False
            break
        n = len(raw)
        self._wrote(last_seq - n + 1, last_seq, _head)
        with self._done:
            self._committed += n
            self._processed += n
            self._batches += 1
            self._last_seq = last_seq
            self._since_checkpoint += n
            self._done.notify_all()
            committed = self._committed
        self._after_commit(last_seq, committed)
        return True

    def _write_dicts(self, raw: list[_Raw]) -> None:
        items = self._materialise(raw)
        if None in items:
            self._fail(items)
            return
        batch = [i for i in items if i is not None]
        delay = 0.001
        while True:
            try:
                written = self.log.append_batch(batch)
            except ProvguardError as exc:
                with self._done:
                    self._last_error = exc.message
                if isinstance(exc, AuditError) or self._closed:
                    # a bad payload will never be written; a closing writer gives up
                    self._fail(items)
                    return
                time.sleep(delay)
                delay = min(1.0, delay * 2)
                continue
            break
        if written:
            self._wrote(written[0].seq, written[-1].seq, written[-1].hash)
        with self._done:
            self._committed += len(written)
            self._processed += len(batch)
            self._batches += 1
            if written:
                self._last_seq = written[-1].seq
            self._since_checkpoint += len(written)
            self._done.notify_all()
            last_seq, committed = self._last_seq, self._committed
        self._after_commit(last_seq, committed)

    def _after_commit(self, last_seq: int, committed: int) -> None:
        if self._on_commit is not None:
            self._on_commit(last_seq, committed)
        if self._checkpoint_every and self._since_checkpoint >= self._checkpoint_every:
            self._take_checkpoint()

    def _fail(self, items: list[_Item | None]) -> None:
        # one bad payload must not take the others with it: write them one by one
        for item in items:
            entry: AuditEntry | None = None
            if item is not None:
                try:
                    entry = self.log.append_batch([item])[0]
                except ProvguardError as exc:
                    with self._done:
                        self._last_error = exc.message
                else:
                    self._wrote(entry.seq, entry.seq, entry.hash)
            with self._done:
                self._processed += 1
                if entry is None:
                    self._failed += 1
                    self._failed_numbers.add(self._processed)
                else:
                    self._committed += 1
                    self._last_seq = entry.seq
                    self._since_checkpoint += 1
                self._done.notify_all()
                last_seq, committed = self._last_seq, self._committed
            if entry is not None:
                self._after_commit(last_seq, committed)

    def _take_checkpoint(self) -> None:
        """The periodic / closing checkpoint: :meth:`sign_own_entries`, a refusal counted and
        kept as ``last_error``."""
        try:
            signed = self.sign_own_entries()
        except ForeignEntriesError as exc:
            with self._done:
                self._last_error = exc.message
                self._refused += 1
                self._since_checkpoint = 0
            return
        except ProvguardError as exc:
            with self._done:
                self._last_error = exc.message
            return
        if signed is None:
            return
        with self._done:
            self._since_checkpoint = 0

    # ----------------------------------------------------------------------------- signing

    def _wrote(self, first: int, last: int, head_hash: str) -> None:
        """Note that this writer committed entries #first..#last (one transaction, so a
        contiguous range), the last one hashing to ``head_hash``."""
        if self._signer is None or last < first:
            return
        with self._own_lock:
            if self._own and self._own[-1][1] + 1 == first:
                self._own[-1] = (self._own[-1][0], last)
            else:
                self._own.append((first, last))
            if self._own_head is None or last > self._own_head[0]:
                self._own_head = (last, head_hash)

    def _first_gap(self, upto: int, covered: int) -> tuple[int, int] | None:
        """The first range of entries in ``(max(_trusted, covered), upto]`` this writer did
        not write, or ``None``. Call under ``_own_lock``."""
        t = max(self._trusted, covered)
        for a, b in self._own:
            if b <= t:
                continue
            if a > t + 1:
                return t + 1, min(a - 1, upto)
            t = b
            if t >= upto:
                return None
        return (t + 1, upto) if t < upto else None

    def _verified_cover(self, upto: int) -> int:
        """The highest count of a stored checkpoint whose Ed25519 signature verifies with the
        signer's key or a trusted key and whose head the log holds, capped at ``upto`` (0:
        none)."""
        log: Any = self.log
        try:
            stored: list[SignedCheckpoint] = list(log.signed_checkpoints())
        except (AuditError, ValueError):
            return 0
        for signed in sorted(stored, key=lambda c: c.count, reverse=True):
            if signed.count <= 0:
                continue
            if not any(_verifies(signed, k) for k in self._trusted_keys):
                continue
            held = next(iter(log.entries(start=signed.count, limit=1)), None)
            if held is not None and held.seq == signed.count and held.hash == signed.head_hash:
                return min(signed.count, upto)
        return 0

    def sign_own_entries(self) -> SignedCheckpoint | None:
        """Sign, store (and pass to ``on_checkpoint``) a checkpoint ending at the last entry
        this writer committed -- not at the log's head -- after :meth:`flush` if you want the
        queued ones in it. Returns it; the previous one if nothing was written since; ``None``
        if this writer has written nothing (or has no signer).

        Signs only when every entry before it is this writer's own or covered by a stored
        checkpoint that verifies with the signer's key or a trusted key (Ed25519, RFC 8032)
        and whose head the log holds. Raises :class:`~provguard.errors.ForeignEntriesError`
        (PG331) naming the first entries #a–#b written by someone else otherwise (nothing is
        signed: review them, then sign with ``provguard audit checkpoint export``), and
        :class:`~provguard.errors.StoreError` when the log cannot be read or written."""
        if self._signer is None:
            return None
        with self._own_lock:
            head = self._own_head
            if head is None:
                return None
            seq, digest = head
            if self._last_signed is not None and self._last_signed.count >= seq:
                return self._last_signed
            gap = self._first_gap(seq, 0)
            if gap is not None:
                gap = self._first_gap(seq, self._verified_cover(seq))
            if gap is not None:
                a, b = gap
                span = f"entry #{a} was" if a == b else f"entries #{a}–#{b} were"
                raise ForeignEntriesError(
                    f"audit {span} written by someone else and no signed checkpoint covers "
                    f"them, so this writer's entries up to #{seq} are NOT signed (a checkpoint "
                    "at its own entry would vouch for them too); after reviewing them sign the "
                    "log with `provguard audit checkpoint export` (docs/audit.md)",
                    a,
                    b,
                )
            log: Any = self.log
            name = getattr(log, "path", None)
            signed = sign_checkpoint(
                Checkpoint(seq, digest),
                self._signer,
                self._clock.now(),
                log_id=name.name if isinstance(name, Path) else "",
            )
            log.store_checkpoint(signed)
            self._trusted = seq
            self._own = [(a, b) for a, b in self._own if b > seq]
            self._last_signed = signed
        with self._done:
            self._checkpoints += 1
        if self._on_checkpoint is not None:
            try:
                self._on_checkpoint(signed)
            except (OSError, ProvguardError) as exc:
                with self._done:
                    self._last_error = f"the checkpoint was signed but not exported: {exc}"
        return signed


def _verifies(signed: SignedCheckpoint, key: Ed25519PublicKey) -> bool:
    try:
        verify_signed_checkpoint(signed, key)
    except AuditError:
        return False
    return True

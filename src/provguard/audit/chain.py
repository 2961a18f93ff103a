"""The hash chain behind the tamper-evident audit log (pure: no I/O).

Every audit entry commits to its predecessor, in the style of a Certificate-Transparency / git
hash chain (without a Merkle tree)::

    hash(n) = SHA-256( canonical({"at": at(n), "kind": kind(n), "payload": payload(n),
                                  "prev": hash(n-1), "seq": n}) )

with ``hash(0)`` = :data:`GENESIS_HASH` (64 zeros). Hashes are lowercase hex strings (64 chars).

Canonical encoding (:func:`canonical_json`): JSON (RFC 8259) with object keys sorted, no
insignificant whitespace (``","`` and ``":"`` separators), non-ASCII characters written as
themselves (``ensure_ascii=False``) and encoded as UTF-8, no NaN/Infinity. Datetimes become
ISO-8601 UTC strings with microseconds and a ``Z`` suffix (``2019-03-20T08:30:00.000000Z``),
dates become ``YYYY-MM-DD``, tuples become arrays. This is the same canonical form as the
JSON Canonicalization Scheme (RFC 8785) for the strings, integers and nested objects provguard
writes; floats use Python's shortest round-trip ``repr``, which matches RFC 8785 for ordinary
values but is not guaranteed identical for every float.

The chain is **unkeyed**: anyone who can write the store can rewrite the chain from some entry
onward and recompute every later hash. Such a rewrite, and truncation at the tail, are only
detectable against a :class:`Checkpoint` (count + head hash) kept somewhere else (printed in the
compliance report, sent to the court, ...). Everything else -- an edited, removed, inserted or
reordered entry -- is detected by :func:`verify_chain` alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from json.encoder import encode_basestring
from typing import Any

from provguard.errors import AuditChainError, AuditError

__all__ = [
    "DEFAULT_TIME_TOLERANCE",
    "GENESIS_HASH",
    "AuditEntry",
    "Checkpoint",
    "TimeOrderResult",
    "TimeRegression",
    "VerifyResult",
    "build_entry",
    "canonical_json",
    "canonical_payload",
    "check_time_order",
    "encode_payload",
    "entry_hash",
    "format_at",
    "format_at_ns",
    "link_hash",
    "make_entry",
    "normalise_payload",
    "parse_at",
    "verify_chain",
]

GENESIS_HASH = "0" * 64
"""The ``prev_hash`` of entry #1."""

_HEX64 = re.compile(r"[0-9a-f]{64}")
_FIXED_AT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
_WINDOW = 65536  # how far back an insertion can be recognised as such

JsonValue = Any
"""A value made only of dict (str keys), list, str, int, float, bool and None."""


# --------------------------------------------------------------------------------------------
# canonical encoding


def format_at(at: datetime) -> str:
    """``at`` as ISO-8601 UTC with microseconds and ``Z``: ``2019-03-20T08:30:00.000000Z``.

    Raises :class:`AuditError` if ``at`` is naive (no tzinfo): an audit time must be unambiguous.
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise AuditError(f"audit timestamps must be timezone-aware, got naive {at.isoformat()}")
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


_NAIVE_EPOCH = datetime(1970, 1, 1)
_second_text: tuple[int, str] = (-1, "")  # the last whole second formatted (a cache)


def format_at_ns(ns: int) -> str:
    """:func:`format_at` of the UTC time ``ns`` nanoseconds after the Unix epoch (as
    ``time.time_ns()`` gives it), truncated to microseconds; no ``datetime`` is built except
    once per distinct second (the audit writer's hot loop). Same text as
    ``format_at(datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000))``."""
    global _second_text
    second, micro = divmod(ns // 1000, 1_000_000)
    cached, text = _second_text
    if cached != second:
        text = (_NAIVE_EPOCH + timedelta(seconds=second)).isoformat(timespec="seconds")
        _second_text = (second, text)
    return f"{text}.{micro:06d}Z"


def parse_at(text: str) -> datetime:
    """Inverse of :func:`format_at`; raises :class:`AuditError` on anything else."""
    if not text.endswith("Z"):
        raise AuditError(f"not an ISO-8601 UTC timestamp ending in 'Z': {text!r}")
    try:
        parsed = datetime.fromisoformat(text[:-1])
    except ValueError as exc:
        raise AuditError(f"not an ISO-8601 UTC timestamp: {text!r}") from exc
    if parsed.tzinfo is not None:
        raise AuditError(f"timestamp has both an offset and 'Z': {text!r}")
    return parsed.replace(tzinfo=UTC)


def _normalise(value: object, path: str) -> JsonValue:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AuditError(f"payload value at {path} is not a finite number: {value!r}")
        return value
    if isinstance(value, datetime):
        return format_at(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Mapping):
        out: dict[str, JsonValue] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise AuditError(f"payload key at {path} is not a string: {key!r}")
            out[key] = _normalise(item, f"{path}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [_normalise(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise AuditError(
        f"payload value at {path} has type {type(value).__name__}, which is not JSON-encodable"
    )


def normalise_payload(payload: Mapping[str, object]) -> dict[str, JsonValue]:
    """``payload`` as plain JSON values (datetimes → ISO UTC strings, tuples → lists, ...).

    The result is what a reader gets back from the store. Raises :class:`AuditError` for
    non-string keys, non-finite floats and values of other types.
    """
    return encode_payload(payload)[1]


def _default(value: object) -> object:
    if isinstance(value, datetime):
        return format_at(value)
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(type(value).__name__)


# C-accelerated encoders (one instance, reused): the fast path of encode_payload
_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_default
)
_PLAIN = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
_quote = encode_basestring  # JSON string literal of a str (C; as ensure_ascii=False writes it)


def _dumps(value: JsonValue) -> str:
    return _PLAIN.encode(value)


def encode_payload(payload: Mapping[str, object]) -> tuple[str, dict[str, JsonValue]]:
    """``(canonical JSON text, normalised payload)`` of an entry payload.

    Fast path: the C JSON encoder, then a decode that must give back an equal dict (it does not
    when keys are not strings, or values were converted: datetimes, tuples); otherwise the strict
    Python normaliser converts, or gives the precise error. Raises :class:`AuditError`.
    """
    if isinstance(payload, Mapping):
        try:
            text = _ENCODER.encode(payload)
            normal = json.loads(text)
            if normal == payload:  # plain JSON with string keys: nothing was converted
                return text, normal
        except (TypeError, ValueError, AuditError):
            pass
    else:
        raise AuditError(f"an audit payload must be a mapping, got {type(payload).__name__}")
    strict = _normalise(payload, "payload")
    assert isinstance(strict, dict)
    return _dumps(strict), strict


def canonical_json(value: object) -> str:
    """The canonical JSON text of ``value`` (see the module docstring); a ``str``, not bytes."""
    return _dumps(_normalise(value, "value"))


def canonical_payload(payload: Mapping[str, object]) -> str:
    """The canonical JSON text of an entry payload (what the SQLite store keeps)."""
    return encode_payload(payload)[0]


def _hash_parts(prev_hash: str, seq: int, at_text: str, kind: str, payload_text: str) -> str:
    # The canonical encoding of {"at", "kind", "payload", "prev", "seq"} assembled from the
    # already-canonical parts: keys in sorted order, payload spliced in as stored. This is
    # byte-for-byte canonical_json({...}) (tested), but lets a verifier hash the stored bytes.
    doc = (
        '{"at":'
        + _quote(at_text)
        + ',"kind":'
        + _quote(kind)
        + ',"payload":'
        + payload_text
        + ',"prev":'
        + _quote(prev_hash)
        + ',"seq":'
        + str(int(seq))
        + "}"
    )
    return hashlib.sha256(doc.encode("utf-8")).hexdigest()


def link_hash(prev_hash: str, seq: int, at_text: str, kind: str, payload_text: str) -> str:
    """The chain hash of entry #``seq`` from its stored parts: ``at_text`` as :func:`format_at`
    writes it, ``payload_text`` the canonical payload text (:func:`canonical_payload`); equal to
    :func:`entry_hash` of the same entry. SHA-256, lowercase hex (64 chars)."""
    return _hash_parts(prev_hash, seq, at_text, kind, payload_text)


def entry_hash(
    prev_hash: str, seq: int, at: datetime, kind: str, payload: Mapping[str, object]
) -> str:
    """SHA-256 (lowercase hex, 64 chars) of the canonical encoding of
    ``{"seq": seq, "at": at, "kind": kind, "payload": payload, "prev": prev_hash}``.

    Raises :class:`AuditError` if ``at`` is naive or ``payload`` is not JSON-encodable.
    """
    return _hash_parts(prev_hash, seq, format_at(at), kind, canonical_payload(payload))


# --------------------------------------------------------------------------------------------
# entries and results


@dataclass(frozen=True)
class AuditEntry:
    """One link of the chain.

    ``seq`` is 1-based and gap-free; ``at`` is timezone-aware (UTC); ``payload`` holds plain JSON
    values; ``prev_hash`` / ``hash`` are 64 lowercase hex chars. ``payload_json`` and ``at_text``
    are the bytes a store actually holds, when the entry was read from one: verification hashes
    those (so an edit that a JSON decoder would hide is still caught); ``None`` means "derive
    them from ``payload`` / ``at``".
    """

    seq: int
    at: datetime
    kind: str
    payload: dict[str, JsonValue]
    prev_hash: str
    hash: str
    payload_json: str | None = field(default=None, compare=False, repr=False)
    at_text: str | None = field(default=None, compare=False, repr=False)

    def stored_payload(self) -> str:
        """The payload text that is hashed: the stored bytes, or the canonical encoding."""
        return (
            self.payload_json if self.payload_json is not None else canonical_payload(self.payload)
        )

    def stored_at(self) -> str:
        """The timestamp text that is hashed: the stored text, or :func:`format_at`."""
        return self.at_text if self.at_text is not None else format_at(self.at)

    def recompute_hash(self) -> str:
        """The hash this entry's content (including ``prev_hash`` and ``seq``) should have."""
        return _hash_parts(
            self.prev_hash, self.seq, self.stored_at(), self.kind, self.stored_payload()
        )


def make_entry(
    prev: AuditEntry | None, kind: str, payload: Mapping[str, object], at: datetime
) -> AuditEntry:
    """The entry that follows ``prev`` (``None`` → entry #1 after the genesis hash).

    The returned payload is normalised (what a reader will get back); ``payload_json`` is set to
    its canonical text. Raises :class:`AuditError` for a naive ``at`` or a bad payload.
    """
    seq = 1 if prev is None else prev.seq + 1
    prev_hash = GENESIS_HASH if prev is None else prev.hash
    return build_entry(seq, prev_hash, kind, payload, at)


def build_entry(
    seq: int, prev_hash: str, kind: str, payload: Mapping[str, object], at: datetime
) -> AuditEntry:
    """Entry #``seq`` linked to ``prev_hash``, its payload normalised and ``hash`` computed.

    ``kind`` must be a non-empty string. Raises :class:`AuditError` for a bad kind, a naive
    ``at`` or a non-JSON payload.
    """
    if not isinstance(kind, str) or not kind:
        raise AuditError(f"audit entry kind must be a non-empty string, got {kind!r}")
    text, normal = encode_payload(payload)
    at_text = format_at(at)
    return AuditEntry(
        seq=seq,
        at=at.astimezone(UTC),
        kind=kind,
        payload=normal,
        prev_hash=prev_hash,
        hash=_hash_parts(prev_hash, seq, at_text, kind, text),
        payload_json=text,
        at_text=at_text,
    )


@dataclass(frozen=True)
class Checkpoint:
    """A chain state recorded outside the log: ``count`` entries with head hash ``head_hash``.

    Verifying against it detects truncation of the tail and a rewrite of the whole chain up to
    entry #``count``; entries appended after the checkpoint are legitimate.
    """

    count: int
    head_hash: str


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of :func:`verify_chain`.

    ``count`` is the number of entries read; ``head_hash`` the hash of the last entry read
    (:data:`GENESIS_HASH` for an empty log); ``first_bad_seq`` the 1-based position of the first
    entry that is wrong (or missing), ``None`` when ``ok``; ``reason`` says what is wrong in words.
    """

    ok: bool
    count: int
    head_hash: str
    first_bad_seq: int | None = None
    reason: str | None = None

    def raise_for_failure(self) -> None:
        """Raise :class:`provguard.errors.AuditChainError` if the chain did not verify."""
        if not self.ok:
            raise AuditChainError(self.reason or "audit chain broken", self.first_bad_seq)


# --------------------------------------------------------------------------------------------
# verification


@dataclass
class _Problem:
    seq: int
    reason: str
    # what to look for in the rest of the log to explain the problem better
    missing: tuple[int, int] | None = None  # seqs [lo, hi) absent where expected
    moved_hash: str | None = None  # stored hash of an entry that sits in the wrong place
    moved_seq: int | None = None


def _short(h: str) -> str:
    return h[:12] + "…" if len(h) > 12 else h


def _check_entry(
    entry: AuditEntry, expected: int, prev: str, seen: dict[str, int]
) -> _Problem | None:
    """The problem with ``entry`` at position ``expected`` after a chain whose head is ``prev``."""
    if entry.seq != expected:
        if entry.seq > expected:
            if expected == 1:
                reason = f"entry #1 is missing: the log starts at entry #{entry.seq}"
            else:
                reason = f"entry #{expected} is missing: entry #{entry.seq} follows #{expected - 1}"
            return _Problem(expected, reason, missing=(expected, entry.seq))
        return _Problem(
            entry.seq,
            f"entry #{entry.seq} appears again after entry #{expected - 1} "
            "(a duplicate or an inserted entry)",
        )
    if not _HEX64.fullmatch(entry.hash) or not _HEX64.fullmatch(entry.prev_hash):
        return _Problem(entry.seq, f"entry #{entry.seq} has a malformed hash field")
    try:
        content_ok = entry.recompute_hash() == entry.hash
    except AuditError as exc:
        return _Problem(entry.seq, f"entry #{entry.seq} cannot be encoded: {exc.message}")
    link_ok = entry.prev_hash == prev
    if content_ok and link_ok:
        return _canonical_problem(entry)
    if not link_ok and entry.prev_hash in seen:
        m = seen[entry.prev_hash]
        if m < entry.seq - 1:
            span = f"#{m + 1}" if m + 1 == entry.seq - 1 else f"#{m + 1}–#{entry.seq - 1}"
            return _Problem(
                m + 1,
                f"entry {span} was inserted: entry #{entry.seq} "
                f"{'' if content_ok else '(renumbered) '}links back to entry #{m}",
            )
    if content_ok:
        # the entry is intact (its hash covers its prev_hash), so its predecessor changed
        if entry.seq == 1:
            return _Problem(
                1, f"entry #1 does not start from the genesis hash (prev {_short(entry.prev_hash)})"
            )
        return _Problem(
            entry.seq - 1,
            f"entry #{entry.seq - 1} was rewritten: the intact entry #{entry.seq} records "
            f"{_short(entry.prev_hash)} as its predecessor's hash, "
            f"but #{entry.seq - 1} now hashes to {_short(prev)}",
        )
    if link_ok:
        return _Problem(
            entry.seq,
            f"entry #{entry.seq} was edited: its content no longer matches its recorded hash "
            f"{_short(entry.hash)}",
        )
    written_as = _written_as(entry)
    if written_as is not None:
        before = "removed" if written_as > entry.seq else "inserted"
        return _Problem(
            entry.seq,
            f"entry #{entry.seq} is out of place: its hash shows it was written as entry "
            f"#{written_as} (entries before it were {before} and later ones renumbered, "
            "or entries were reordered)",
            moved_hash=entry.hash,
            moved_seq=entry.seq,
        )
    return _Problem(
        entry.seq,
        f"entry #{entry.seq} is out of place: neither its content nor its link to "
        f"entry #{entry.seq - 1} match (entries removed, inserted or reordered)",
        moved_hash=entry.hash,
        moved_seq=entry.seq,
    )


def _written_as(entry: AuditEntry, reach: int = 64) -> int | None:
    """The seq (within ``reach`` of its current one) under which ``entry`` hashes correctly."""
    try:
        at_text, payload_text = entry.stored_at(), entry.stored_payload()
    except AuditError:
        return None
    for delta in range(1, reach + 1):
        for seq in (entry.seq + delta, entry.seq - delta):
            if seq >= 1 and (
                _hash_parts(entry.prev_hash, seq, at_text, entry.kind, payload_text) == entry.hash
            ):
                return seq
    return None


def _canonical_problem(entry: AuditEntry) -> _Problem | None:
    """Stored bytes that hash correctly but are not canonical were forged, not written by us."""
    if entry.payload_json is not None and entry.payload_json != canonical_payload(entry.payload):
        return _Problem(
            entry.seq, f"entry #{entry.seq}: the stored payload is not in canonical form"
        )
    if entry.at_text is not None and entry.at_text != format_at(entry.at):
        return _Problem(
            entry.seq, f"entry #{entry.seq}: the stored timestamp is not in canonical form"
        )
    return None


def _explain(problem: _Problem, rest: Iterator[AuditEntry]) -> str:
    """Read the rest of the log to turn "missing" / "out of place" into "reordered" etc."""
    if problem.missing is None and problem.moved_hash is None:
        return problem.reason
    for entry in rest:
        if problem.missing is not None:
            lo, hi = problem.missing
            if lo <= entry.seq < hi:
                return (
                    f"entries are out of order: entry #{hi} stands where entry #{lo} belongs, "
                    f"and entry #{entry.seq} comes later"
                )
        if problem.moved_hash is not None and entry.prev_hash == problem.moved_hash:
            original = entry.seq - 1
            assert problem.moved_seq is not None
            if original == problem.moved_seq:
                break  # its successor moved with it: renumbering, explained already
            return (
                f"entries were reordered: entry #{problem.moved_seq} holds the entry written "
                f"as #{original} (entry #{entry.seq} still links to it)"
            )
    return problem.reason


def _missing_range(lo: int, hi: int) -> str:
    return f"entry #{lo} is missing" if lo == hi else f"entries #{lo}–#{hi} are missing"


def verify_chain(
    entries: Iterable[AuditEntry],
    checkpoint: Checkpoint | None = None,
    *,
    start: Checkpoint | None = None,
    checkpoints: Iterable[Checkpoint] = (),
) -> VerifyResult:
    """Verify a chain given in log order (seq 1, 2, ...); O(n) time, O(n) hashes of memory.

    Detects, and names by 1-based ``first_bad_seq`` with a reason in words:

    * an **edited** entry (content no longer matches its hash) -- names that entry;
    * a **rewritten** entry whose hash was recomputed -- names it, via its successor's link;
    * a **removed** entry (seq gap) -- names the missing seq;
    * a **reordered** pair -- names the first position holding the wrong entry;
    * an **inserted** entry (duplicate seq, or later entries renumbered) -- names the insertion;
    * against ``checkpoint``: **truncation** (fewer than ``checkpoint.count`` entries; names the
      first missing seq, and the reason names the missing range ``#first–#count``) and a
      **whole-tail rewrite** (hash of entry #count differs; names it).

    ``checkpoints``: more checkpoints to check in the same pass (say every stored signed
    checkpoint); truncation is judged against the largest count, and the first checkpoint (by
    count) whose head differs is named.

    After the first problem the remaining entries are still read, to tell "missing" from
    "reordered". Never raises for a broken chain; see :meth:`VerifyResult.raise_for_failure`.

    ``start`` (incremental verification): a prefix already verified -- ``entries`` then begin
    at seq ``start.count + 1`` and must link to ``start.head_hash``; the result counts the
    prefix too. Edits inside the prefix are NOT re-checked, nor are checkpoints inside it.
    """
    it = iter(entries)
    expected = 1 if start is None else start.count + 1
    prev = GENESIS_HASH if start is None else start.head_hash
    # hashes of the last _WINDOW verified entries, to recognise a link that skips entries
    seen: dict[str, int] = {prev: expected - 1}
    order: deque[str] = deque([prev])
    wanted = sorted(
        {(c.count, c.head_hash) for c in ([checkpoint] if checkpoint else []) + list(checkpoints)}
    )
    heads_at = {count for count, _head in wanted}
    seen_heads = {expected - 1: prev}  # the heads at the checkpoints' counts, as read
    for entry in it:
        problem = _check_entry(entry, expected, prev, seen)
        if problem is not None:
            return VerifyResult(
                ok=False,
                count=expected - 1,
                head_hash=prev,
                first_bad_seq=problem.seq,
                reason=_explain(problem, it),
            )
        seen[entry.hash] = entry.seq
        order.append(entry.hash)
        if len(order) > _WINDOW:
            seen.pop(order.popleft(), None)
        prev = entry.hash
        if entry.seq in heads_at:
            seen_heads[entry.seq] = entry.hash
        expected += 1
    count = expected - 1
    if wanted:
        largest = wanted[-1][0]
        if count < largest:
            return VerifyResult(
                ok=False,
                count=count,
                head_hash=prev,
                first_bad_seq=count + 1,
                reason=(
                    f"the log was truncated: the checkpoint records {largest} entries "
                    f"but only {count} remain ({_missing_range(count + 1, largest)})"
                ),
            )
        for cp_count, cp_head in wanted:
            expected_head = seen_heads.get(cp_count)
            if expected_head is not None and expected_head != cp_head:
                return VerifyResult(
                    ok=False,
                    count=count,
                    head_hash=prev,
                    first_bad_seq=max(cp_count, 1),
                    reason=(
                        f"entry #{cp_count} does not match the checkpoint: the checkpoint "
                        f"head is {_short(cp_head)} but the log has "
                        f"{_short(expected_head)} (the chain up to it was rewritten)"
                    ),
                )
    return VerifyResult(ok=True, count=count, head_hash=prev)


# --------------------------------------------------------------------------------------------
# time order along the chain

DEFAULT_TIME_TOLERANCE = timedelta(seconds=60)
"""How much earlier than its predecessor an entry may be stamped before
:func:`check_time_order` reports it. Entries are stamped by the writer's clock when they are
submitted, not when they are committed, and several writers (the job, ``provguard serve``'s
worker processes, ``provguard query``) append to one log: a batch submitted a moment before
another process's entry commits legitimately lands after it, and an NTP clock step moves the
clock back by up to a second or so. 60 s covers both with a wide margin; a backdated entry
(the ``at`` of an event forged months earlier) is far outside it."""


@dataclass(frozen=True)
class TimeRegression:
    """Entry #``seq`` is stamped ``at``, :attr:`behind` earlier than entry #``seq - 1``
    (stamped ``prev_at``)."""

    seq: int
    at: datetime
    prev_at: datetime

    @property
    def behind(self) -> timedelta:
        return self.prev_at - self.at

    def __str__(self) -> str:
        return (
            f"entry #{self.seq} is stamped {format_at(self.at)}, "
            f"{_duration(self.behind)} before entry #{self.seq - 1} ({format_at(self.prev_at)})"
        )


def _duration(span: timedelta) -> str:
    seconds = span.total_seconds()
    if seconds < 120:
        return f"{seconds:.3f} s"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h" if seconds >= 7200 else f"{seconds / 60:.1f} min"
    return f"{seconds / 86400:.1f} days"


@dataclass(frozen=True)
class TimeOrderResult:
    """The outcome of :func:`check_time_order`: ``checked`` entries read, ``tolerance`` used,
    ``regressions`` (every entry stamped more than ``tolerance`` before its predecessor, in
    seq order), ``unreadable`` seqs whose stored time does not parse (the chain verification
    reports those)."""

    checked: int
    tolerance: timedelta
    regressions: tuple[TimeRegression, ...] = ()
    unreadable: tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.regressions

    def message(self, limit: int = 3) -> str:
        """One sentence naming the first ``limit`` regressions and the count."""
        if self.ok:
            return (
                f"timestamps: non-decreasing along the chain ({self.checked} entries; "
                f"an entry may be stamped up to {_duration(self.tolerance)} before its "
                "predecessor)"
            )
        n = len(self.regressions)
        shown = "; ".join(str(r) for r in self.regressions[:limit])
        more = f"; and {n - limit} more" if n > limit else ""
        noun = "entry is" if n == 1 else "entries are"
        return (
            f"{n} {noun} stamped earlier than the entry before them by more than the tolerance "
            f"of {_duration(self.tolerance)} (a backdated or reordered entry, or a clock step "
            f"larger than the tolerance): {shown}{more}"
        )


def check_time_order(
    stamps: Iterable[tuple[int, str]], tolerance: timedelta = DEFAULT_TIME_TOLERANCE
) -> TimeOrderResult:
    """Check that timestamps do not go back along the chain by more than ``tolerance``.

    ``stamps``: ``(seq, stored at text)`` in seq order (the ``at`` column: ISO-8601 UTC with
    ``Z``, :func:`format_at`). Entry #n is reported when ``at(n) < at(n-1) - tolerance``: each
    entry is compared with its predecessor, so one backdated entry is one regression (the
    entry after it, forward again, is not). A stored time that does not parse is listed in
    ``unreadable`` and skipped (its neighbour is compared with the last readable time).
    Raises ``ValueError`` for a negative tolerance. Pure; O(n) time, O(regressions) memory."""
    if tolerance < timedelta(0):
        raise ValueError("the time tolerance must be >= 0")
    found: list[TimeRegression] = []
    unreadable: list[int] = []
    prev_text = ""  # the last readable stamp, as stored
    prev_fixed = False  # ... in the stored fixed-width form (format_at)
    prev: datetime | None = None  # ... parsed (None: not parsed yet)
    checked = 0
    for seq, text in stamps:
        checked += 1
        fixed = _FIXED_AT.fullmatch(text) is not None
        # the stored form (fixed width, UTC, "Z") sorts as its time does: a stamp equal to or
        # after the previous one in that form needs no parsing (a text of that form that is
        # not a real date is caught by the chain's canonical check, verify_chain)
        if fixed and prev_fixed and text >= prev_text:
            prev_text, prev = text, None
            continue
        try:
            at = parse_at(text)
        except AuditError:
            unreadable.append(seq)
            continue
        if prev_text:
            before = prev if prev is not None else parse_at(prev_text)
            if at < before - tolerance:
                found.append(TimeRegression(seq, at, before))
        prev_text, prev_fixed, prev = text, fixed, at
    return TimeOrderResult(checked, tolerance, tuple(found), tuple(unreadable))

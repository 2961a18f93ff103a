"""Deciding many requests at once from columns (numpy arrays, Arrow arrays, lists).

How a batch is decided (all steps but the last are vectorised numpy / Arrow passes):

1. Every string column is dictionary-encoded (an Arrow ``DictionaryArray`` is used as is) and each
   dictionary value is mapped to its *axis class*: two values are in one class when every rule
   treats them alike (the same bitmask in :class:`~provguard.decide.compiled.CompiledPolicy`).
   Origin label bitmasks are grouped the same way, and ``at`` is cut into validity segments.
2. The axis classes of a row form its *request class* (one int64 key per row, mixed radix); the
   classes present are found with a dense ``bincount`` table (or a hash table when the key space
   is large).
3. For the classes present, the candidate rules are a sparse join over per-axis boolean tables
   (rule ``r`` is a candidate for class ``k`` when every axis table says so), and each class's
   effect, ``excepted`` and ``shadow_denied`` flags come from counting its candidate rules by kind
   (enforced static deny / permit, shadow deny, bundle defaults in force). Classes whose candidate
   rules carry no ``when`` condition and no deny exception are decided exactly this way.
4. Rows of a class with a conditional candidate rule are decided with their own context: grant
   times (binned at every day a condition compares them with), grant status, and, only when a rule
   reads them, scopes, subject / context attributes (the names read) and consent records (with the
   exact request time). Rows with equal context share one call of
   :meth:`CompiledPolicy.decide`.

Reasons and obligations are built on demand (:meth:`BatchDecisions.decision`) from a
representative row of the row's class, by the same compiled index; the property tests in
``tests/policy/test_compiled.py`` check effect, excepted, shadow, determining rules and
obligations against the reference interpreter row by row. The explanation texts of a conditional
class quote its representative row's values (the decision itself is exact for every row).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias, overload

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from provguard.decide.compiled import CompiledPolicy
from provguard.decide.model import (
    PURPOSE_REQUIRED,
    Attrs,
    ConsentRecord,
    Decision,
    GrantFacts,
    Request,
    check_grant_times,
)
from provguard.errors import ProvguardError, RequestError
from provguard.policy.model import ConsentCondition, FieldCondition
from provguard.provenance import KNOWN_ORIGINS, OriginRegistry, default_registry

EFFECT_CODES: dict[str, int] = {"not_applicable": 0, "permit": 1, "deny": 2}
_NAT = np.iinfo(np.int64).min
_TIME_FIELDS = {
    "grant.first_used_by_recipient_at": "grant_first_used_by_recipient_at",
    "grant.granted_at": "grant_granted_at",
}
DENSE_KEYS = 1 << 23  # key spaces up to this size use a bincount table, larger ones a hash table

StrColumn: TypeAlias = (
    str | Sequence[str | None] | npt.NDArray[np.object_] | pa.Array | pa.ChunkedArray | None
)
TimeColumn: TypeAlias = datetime | npt.NDArray[np.datetime64] | pa.Array | pa.ChunkedArray | None
#: one object per row (None = absent): scopes as an iterable of str, subject / context as a
#: mapping, consents as a sequence of :class:`ConsentRecord`; or an Arrow list / struct column
ObjColumn: TypeAlias = Sequence[Any] | pa.Array | pa.ChunkedArray | None


class _LazyDecisions(Sequence[Decision]):
    """The decision of each class, built (and kept) on first access."""

    def __init__(self, count: int, build: Any) -> None:
        self._items: list[Decision | None] = [None] * count
        self._build = build

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, i: int) -> Decision: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Decision]: ...
    def __getitem__(self, i: int | slice) -> Decision | Sequence[Decision]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self._items)
        d = self._items[i]
        if d is None:
            d = self._build(i)
            self._items[i] = d
        return d

    def __iter__(self) -> Iterator[Decision]:
        for i in range(len(self)):
            yield self[i]


@dataclass(frozen=True)
class BatchDecisions:
    """Per-row results of :func:`decide_batch`.

    ``effect``: int8 codes per row (0 not_applicable, 1 permit, 2 deny; see :data:`EFFECT_CODES`);
    ``excepted`` / ``shadow_denied``: bool per row; ``class_index``: int32 per row into
    ``classes``, the decision of each class of rows the policy cannot tell apart (reasons,
    obligations), built on first access.
    """

    effect: npt.NDArray[np.int8]
    excepted: npt.NDArray[np.bool_]
    shadow_denied: npt.NDArray[np.bool_]
    class_index: npt.NDArray[np.int32]
    classes: Sequence[Decision]

    def __len__(self) -> int:
        return int(self.effect.shape[0])

    def decision(self, row: int) -> Decision:
        """The decision of ``row``'s class (its request is the class representative)."""
        return self.classes[int(self.class_index[row])]

    def allowed(self) -> npt.NDArray[np.bool_]:
        """What an enforcement point does per row: everything but deny proceeds."""
        return np.asarray(self.effect != EFFECT_CODES["deny"])

    def determining_rules(self, row: int) -> tuple[str, ...]:
        return tuple(r.rule_id for r in self.decision(row).determining)


# --- the per-policy tables ------------------------------------------------------------------------


def _bits(mask: int, n: int) -> npt.NDArray[np.bool_]:
    raw = np.frombuffer(mask.to_bytes(max(1, (n + 7) // 8), "little"), dtype=np.uint8)
    return np.unpackbits(raw, bitorder="little")[:n].astype(np.bool_)


class _Axis:
    """Value -> class id (classes = distinct rule masks) and the class x rule boolean table."""

    def __init__(self, n_rules: int) -> None:
        self.n_rules = n_rules
        self._ids: dict[object, int] = {}
        self._rows: list[npt.NDArray[np.bool_]] = []
        self._table: npt.NDArray[np.bool_] | None = None

    def class_of(self, mask: int, key: object = None) -> int:
        """The class of values with rule mask ``mask`` (and ``key``, when values with one mask
        must still be told apart)."""
        k = mask if key is None else (mask, key)
        cid = self._ids.get(k)
        if cid is None:
            cid = len(self._rows)
            self._ids[k] = cid
            self._rows.append(_bits(mask, self.n_rules))
            self._table = None
        return cid

    @property
    def size(self) -> int:
        return len(self._rows)

    @property
    def table(self) -> npt.NDArray[np.bool_]:
        if self._table is None:
            self._table = (
                np.stack(self._rows) if self._rows else np.zeros((0, self.n_rules), np.bool_)
            )
        return self._table


class _BatchIndex:
    """The dense tables of one compiled policy that batches read (built once, then cached)."""

    def __init__(self, cp: CompiledPolicy) -> None:
        n = cp.rule_count
        self.n_rules = n
        rules = [cr.rule for cr in cp._crules]
        enforce = np.array([r.mode == "enforce" for r in rules], np.bool_)
        deny = np.array([r.effect == "deny" for r in rules], np.bool_)
        dynamic = np.array(
            [bool(r.when) or (r.effect == "deny" and r.has_exception) for r in rules], np.bool_
        )
        self.dynamic = dynamic
        self.deny_static = enforce & deny & ~dynamic
        self.permit_static = enforce & ~deny & ~dynamic
        self.shadow_static = ~enforce & deny & ~dynamic
        self.enforce = enforce
        bundle_of = np.array([cr.bundle for cr in cp._crules], np.int64)
        default_bundles = sorted(cp._defaults)
        self.default_pos = {b: i for i, b in enumerate(default_bundles)}
        self.default_is_deny = np.array(
            [cp._defaults[b].effect == "deny" for b in default_bundles], np.bool_
        )
        self.rule_default_pos = np.array(
            [self.default_pos.get(int(b), -1) for b in bundle_of], np.int64
        )
        self.live_default = np.array(
            [[b in live for b in default_bundles] for live in cp._segment_bundles], np.bool_
        ).reshape(len(cp._segment_bundles), len(default_bundles))
        self.axes = {
            name: _Axis(n)
            for name in (
                "action",
                "purpose",
                "category",
                "app",
                "controller",
                "recipient",
                "origins",
                "segment",
            )
        }
        # segments share a class when they have the same rules and the same bundles in force
        # (a bundle's default applies only while it is in force)
        self.segment_class = np.array(
            [
                self.axes["segment"].class_of(m, live)
                for m, live in zip(cp._segment_rules, cp._segment_bundles, strict=True)
            ],
            np.int64,
        )
        self.bounds_ns = np.array([_ns(b) for b in cp._bounds], dtype=np.int64)
        self.origin_class: dict[int, int] = {}
        # what conditions read
        self.time_thresholds = _thresholds(cp)
        fields: set[str] = set()
        self.reads_consents = False
        for r in rules:
            for c in (*r.when, *r.unless_conditions):
                if isinstance(c, ConsentCondition):
                    self.reads_consents = True
                else:
                    fields.add(c.field)
        # a grant-time exception never holds for a revoked / expired grant: it reads the status
        self.reads_status = "grant.status" in fields or any(r.unless is not None for r in rules)
        self.reads_scopes = "grant.scopes" in fields
        self.subject_names = tuple(sorted(f[8:] for f in fields if f.startswith("subject.")))
        self.context_names = tuple(sorted(f[8:] for f in fields if f.startswith("context.")))


def _index(cp: CompiledPolicy) -> _BatchIndex:
    idx = cp._batch_index
    if idx is None:
        idx = _BatchIndex(cp)
        cp._batch_index = idx
    assert isinstance(idx, _BatchIndex)
    return idx


# --- column encoding ------------------------------------------------------------------------------


def _encode(col: StrColumn, n: int, name: str) -> tuple[npt.NDArray[np.int64], list[str | None]]:
    """(codes, values): ``values[codes[i]]`` is row i's value; code 0 is None."""
    if col is None or isinstance(col, str):
        return np.zeros(n, np.int64) if col is None else np.ones(n, np.int64), [None, col]
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if isinstance(col, pa.DictionaryArray):
        enc = col
    else:
        try:
            arr = col if isinstance(col, pa.Array) else pa.array(col, type=pa.string())
            enc = pc.dictionary_encode(arr)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
            raise RequestError(f"column '{name}' must hold strings: {exc}") from None
    if len(enc) != n:
        raise RequestError(f"column '{name}' has {len(enc)} rows, expected {n}")
    values = enc.dictionary.to_pylist()
    if any(v is not None and not isinstance(v, str) for v in values):
        raise RequestError(f"column '{name}' must hold strings")
    idx = enc.indices
    if idx.null_count:
        idx = pc.fill_null(pc.add(pc.cast(idx, pa.int64()), 1), 0)
        codes = idx.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    else:
        codes = idx.to_numpy(zero_copy_only=False).astype(np.int64) + 1
    return codes, [None, *values]


def _times_ns(col: TimeColumn, n: int, name: str) -> npt.NDArray[np.int64] | None:
    """UTC nanoseconds per row, int64 min for missing; None when the column is None."""
    if col is None:
        return None
    if isinstance(col, datetime):
        if col.tzinfo is None:
            raise RequestError(f"'{name}' must be timezone-aware")
        return np.full(n, _ns(col), np.int64)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if isinstance(col, pa.Array):
        if not pa.types.is_timestamp(col.type):
            raise RequestError(f"column '{name}' must be an Arrow timestamp column")
        col = pc.cast(col, pa.timestamp("ns", tz=col.type.tz)).to_numpy(zero_copy_only=False)
    arr = np.asarray(col)
    if arr.dtype.kind != "M":
        raise RequestError(f"column '{name}' must be datetime64 (UTC), not {arr.dtype}")
    if arr.shape != (n,):
        raise RequestError(f"column '{name}' has shape {arr.shape}, expected ({n},)")
    return arr.astype("datetime64[ns]").view(np.int64)


class _Objects:
    """One object per row, from a Python sequence (checked up front) or an Arrow column (type
    checked up front, rows converted when read)."""

    def __init__(self, col: Sequence[Any] | pa.Array, n: int, name: str) -> None:
        self.name = name
        self._arrow: pa.Array | None = None
        self._list: Sequence[Any] = ()
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if isinstance(col, pa.Array):
            want = pa.types.is_struct if name in ("subject", "context") else pa.types.is_list
            if name == "consents" or not (want(col.type) or pa.types.is_null(col.type)):
                raise RequestError(f"column '{name}' cannot be an Arrow {col.type} column")
            self._arrow = col
            size = len(col)
        else:
            self._list = col
            size = len(col)
            check = _CHECKS[name]
            for i, v in enumerate(col):
                if v is not None and not check(v):
                    raise RequestError(f"row {i}: '{name}' must be {_KINDS[name]}")
        if size != n:
            raise RequestError(f"column '{name}' has {size} rows, expected {n}")

    def __getitem__(self, i: int) -> Any:
        if self._arrow is not None:
            return self._arrow[i].as_py()
        return self._list[i]


_CHECKS: dict[str, Any] = {
    "grant_scopes": lambda v: not isinstance(v, str | bytes | Mapping) and isinstance(v, Iterable),
    "subject": lambda v: isinstance(v, Mapping),
    "context": lambda v: isinstance(v, Mapping),
    "consents": lambda v: (
        isinstance(v, Iterable)
        and not isinstance(v, str | bytes | Mapping)
        and all(isinstance(c, ConsentRecord) for c in v)
    ),
}
_KINDS = {
    "grant_scopes": "an iterable of scope names",
    "subject": "a mapping",
    "context": "a mapping",
    "consents": "a sequence of ConsentRecord",
}


def _objects(col: ObjColumn, n: int, name: str) -> _Objects | None:
    return None if col is None else _Objects(col, n, name)


def _ns(t: datetime) -> int:
    return int((t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)) * 1000


def _from_ns(ns: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)


def _thresholds(compiled: CompiledPolicy) -> dict[str, list[datetime]]:
    """Every instant a condition compares each grant time field with."""
    out: dict[str, set[datetime]] = {f: set() for f in _TIME_FIELDS.values()}
    for bundle in compiled.bundles:
        for rule in bundle.rules:
            if rule.unless is not None:
                if rule.unless.grant_first_used_by_recipient_before is not None:
                    out["grant_first_used_by_recipient_at"].add(
                        rule.unless.cut(rule.unless.grant_first_used_by_recipient_before)
                    )
                if rule.unless.grant_granted_before is not None:
                    out["grant_granted_at"].add(rule.unless.cut(rule.unless.grant_granted_before))
            for cond in (*rule.when, *rule.unless_conditions):
                if isinstance(cond, FieldCondition) and cond.field in _TIME_FIELDS:
                    for d in (cond.before, cond.on_or_after):
                        if d is not None:
                            out[_TIME_FIELDS[cond.field]].add(cond.cut(d))
    return {k: sorted(v) for k, v in out.items()}


def _first_row(codes: npt.NDArray[np.int64], value: int) -> int:
    return int(np.argmax(codes == value))


# --- the sparse join ------------------------------------------------------------------------------


def _candidates(
    class_codes: list[npt.NDArray[np.int64]], tables: list[npt.NDArray[np.bool_]]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Candidate (class, rule) pairs: rule r is a candidate of class k when ``tables[j][codes_j[k],
    r]`` holds for every axis j. Returns ``(final id per class, pair class ids, pair rule ids)``;
    the final ids are one per distinct class code tuple, pairs sorted by final id.

    The axes are joined in order of increasing density, so the pairs carried from stage to stage
    are those of the most selective axes first.
    """
    n_classes = len(class_codes[0]) if class_codes else 0
    n_rules = tables[0].shape[1] if tables else 0
    # an axis with one class among the rows filters every class alike: fold it into one mask
    const = np.ones(n_rules, np.bool_)
    density: dict[int, float] = {}
    for j, table in enumerate(tables):
        present = np.unique(class_codes[j])
        if len(present) == 1:
            const &= table[present[0]]
        else:
            density[j] = float(table[present].mean())
    order = sorted(density, key=density.__getitem__)
    if not order:
        pr = np.flatnonzero(const).astype(np.int64)
        return np.zeros(n_classes, np.int64), np.zeros(len(pr), np.int64), pr
    first = order[0]
    u, inv = np.unique(class_codes[first], return_inverse=True)
    pk, pr = np.nonzero(tables[first][u] & const)
    pk = pk.astype(np.int64)
    pr = pr.astype(np.int64)
    parent = inv.reshape(-1).astype(np.int64)
    n_prefix = len(u)
    for j in order[1:]:
        width = max(1, tables[j].shape[0])
        key = parent * width + class_codes[j]
        uj, invj = np.unique(key, return_inverse=True)
        par, val = uj // width, uj % width
        counts = np.bincount(pk, minlength=n_prefix)
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        c = counts[par]
        total = int(c.sum())
        q_rep = np.repeat(np.arange(len(uj), dtype=np.int64), c)
        offs = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(c) - c, c)
        r = pr[np.repeat(starts[par], c) + offs]
        keep = tables[j][val[q_rep], r]
        pk, pr = q_rep[keep], r[keep]
        parent = invj.reshape(-1).astype(np.int64)
        n_prefix = len(uj)
    return parent, pk, pr


# --- the batch ------------------------------------------------------------------------------------


def _check_times(
    at_ns: npt.NDArray[np.int64], times: Mapping[str, npt.NDArray[np.int64] | None]
) -> None:
    """:func:`check_grant_times` on every row at once (vectorised); raises for the first row
    that fails, with the message the row's :class:`Request` would give."""
    first = times["grant_first_used_by_recipient_at"]
    if first is None:
        return
    granted = times["grant_granted_at"]
    # compared in microseconds, the resolution of the rows' Request times
    has_first = first != _NAT
    first_us = first // 1000
    bad = has_first & (first_us > at_ns // 1000)
    if granted is not None:
        bad |= has_first & (granted != _NAT) & (first_us < granted // 1000)
    if not bad.any():
        return
    i = int(np.argmax(bad))
    check_grant_times(
        _from_ns(int(at_ns[i])),
        _from_ns(int(first[i])),
        None if granted is None or granted[i] == _NAT else _from_ns(int(granted[i])),
        where=f"row {i}: ",
    )
    raise AssertionError("unreachable: the row failed the vectorised check")  # pragma: no cover


def decide_batch(
    compiled: CompiledPolicy,
    *,
    app: StrColumn,
    action: StrColumn,
    category: StrColumn,
    origins: npt.ArrayLike | pa.Array,
    at: TimeColumn,
    purpose: StrColumn = None,
    recipient: StrColumn = None,
    controller: StrColumn = None,
    grant_first_used_by_recipient_at: TimeColumn = None,
    grant_granted_at: TimeColumn = None,
    registry: OriginRegistry | None = None,
    grant_status: StrColumn = None,
    grant_scopes: ObjColumn = None,
    subject: ObjColumn = None,
    context: ObjColumn = None,
    consents: ObjColumn = None,
    grant_facts: GrantFacts = "recorded",
) -> BatchDecisions:
    """Decide one request per row, exactly as :meth:`CompiledPolicy.decide` would row by row
    (see the module docstring for how).

    String columns (``app``, ``action``, ``category``, ``purpose``, ``recipient``, ``controller``,
    ``grant_status``): a sequence, numpy array, Arrow string or dictionary array of length ``n``,
    or one value for every row (None = absent). ``origins``: provenance label bitmasks, uint64 per
    row, bits named by ``registry`` (default: :func:`provguard.provenance.default_registry`).
    ``at`` and the grant times: numpy ``datetime64`` (read as UTC; NaT = absent), Arrow
    timestamps, or one aware datetime. ``grant_scopes`` (iterables of str), ``subject`` /
    ``context`` (mappings of attribute name to value, or an Arrow struct column; null fields are
    absent) and ``consents`` (sequences of :class:`ConsentRecord`): one object per row, None =
    absent; they are read only on rows a conditional rule could decide.

    ``grant_facts``: ``asserted`` when the grant times are the callers' word (then every row
    is checked like ``Request(..., grant_facts="asserted")``: a first use before the grant or
    after ``at`` refuses the batch, :func:`~provguard.decide.model.check_grant_times`);
    ``recorded`` (default) when provguard read them from a store of record.

    Raises :class:`RequestError` for mismatched lengths, unknown label bits, or a row that is not
    a valid :class:`Request` (naming the first such row).
    """
    reg = registry or default_registry()
    ix = _index(compiled)
    masks = np.asarray(
        origins.to_numpy(zero_copy_only=False)
        if isinstance(origins, pa.Array | pa.ChunkedArray)
        else origins
    )
    if masks.ndim != 1:
        raise RequestError("'origins' must be one label bitmask per row")
    n = int(masks.shape[0])
    if masks.dtype.kind not in "iu":
        raise RequestError(f"'origins' must be integer bitmasks, not {masks.dtype}")
    masks = masks.astype(np.uint64)
    at_ns = _times_ns(at, n, "at")
    if at_ns is None:
        raise RequestError("'at' is required")
    if n and np.any(at_ns == _NAT):
        raise RequestError(f"row {int(np.argmax(at_ns == _NAT))}: 'at' is missing")

    cols: dict[str, tuple[npt.NDArray[np.int64], list[str | None]]] = {}
    for name, col in (
        ("app", app),
        ("action", action),
        ("category", category),
        ("purpose", purpose),
        ("recipient", recipient),
        ("controller", controller),
    ):
        cols[name] = _encode(col, n, name)

    # per dictionary value: validity and axis class
    luts_used: dict[str, npt.NDArray[np.bool_]] = {}

    def lut(name: str, cls_of: Any) -> npt.NDArray[np.int64]:
        codes, values = cols[name]
        used = np.bincount(codes, minlength=len(values)) > 0
        out = np.zeros(len(values), np.int64)
        luts_used[name] = used
        for k, v in enumerate(values):
            if not used[k]:
                continue
            try:
                out[k] = cls_of(v)
            except RequestError as exc:
                raise RequestError(f"row {_first_row(codes, k)}: {exc.message}") from None
        return out

    def checked(taxonomy: Any, what: str, index: Mapping[Any, int], optional: bool) -> Any:
        def cls_of(v: str | None) -> int:
            if v is None:
                if not optional:
                    raise RequestError(f"{what} is missing")
                return ix.axes[what].class_of(index[None])
            if v not in taxonomy:
                raise RequestError(f"unknown {taxonomy.name} '{v}'")
            return ix.axes[what].class_of(index[v])

        return cls_of

    def selector(what: str, index: Mapping[str | None, int], other: int) -> Any:
        def cls_of(v: str | None) -> int:
            if v is None and what == "app":
                raise RequestError("app is missing")
            return ix.axes[what].class_of(index.get(v, other))

        return cls_of

    cp = compiled
    tax = cp.policy.taxonomy
    action_lut = lut("action", checked(tax.actions, "action", cp._action, False))
    purpose_lut = lut("purpose", checked(tax.purposes, "purpose", cp._purpose, True))
    category_lut = lut("category", checked(tax.categories, "category", cp._category, False))
    app_lut = lut("app", selector("app", cp._app, cp._app_other))
    ctrl_lut = lut("controller", selector("controller", cp._controller, cp._controller_other))
    recip_lut = lut("recipient", selector("recipient", cp._recipient, cp._recipient_other))

    # per-row rules of Request that are not about one value
    act_codes, act_values = cols["action"]
    needs_purpose = np.array([v in PURPOSE_REQUIRED for v in act_values], np.bool_)
    is_transfer = np.array([v == "transfer" for v in act_values], np.bool_)
    bad = needs_purpose[act_codes] & (cols["purpose"][0] == 0)
    if bad.any():
        row = int(np.argmax(bad))
        raise RequestError(f"row {row}: action '{act_values[act_codes[row]]}' needs a purpose")
    bad = is_transfer[act_codes] & (cols["recipient"][0] == 0)
    if bad.any():
        raise RequestError(f"row {int(np.argmax(bad))}: action 'transfer' needs a recipient")

    # origin labels -> origin classes
    menc = pc.dictionary_encode(pa.array(masks, type=pa.uint64()))
    mask_codes = menc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    mask_values = [int(m) for m in menc.dictionary.to_pylist()]
    origin_lut = np.zeros(len(mask_values), np.int64)
    origin_names: list[frozenset[str]] = []
    for k, m in enumerate(mask_values):
        try:
            names = reg.names_of(m) if m else frozenset()
        except ProvguardError as exc:
            raise RequestError(f"row {_first_row(mask_codes, k)}: {exc.message}") from None
        if not names:
            raise RequestError(
                f"row {_first_row(mask_codes, k)}: a request needs at least one origin "
                "(use 'unknown' when none is recorded)"
            )
        unknown = sorted(o for o in names if o not in KNOWN_ORIGINS)
        if unknown:
            raise RequestError(
                f"row {_first_row(mask_codes, k)}: unknown origin(s) "
                f"{', '.join(repr(o) for o in unknown)}"
            )
        origin_names.append(names)
        o = 0
        for name in names:
            o |= cp._origin.get(name, cp._origin_other)
        origin_lut[k] = ix.axes["origins"].class_of(o)

    if len(ix.bounds_ns) <= 16:  # a few comparisons beat a binary search per row
        seg = np.zeros(n, np.int64)
        for b in ix.bounds_ns:
            seg += at_ns >= b
    else:
        seg = np.searchsorted(ix.bounds_ns, at_ns, side="right").astype(np.int64)

    # per-row class codes, in a fixed axis order; an axis whose rows all fall in one class is a
    # constant, left out of the row key
    axis_names = ("app", "action", "purpose", "category", "controller", "recipient", "origins")
    seg_used = np.zeros(len(ix.segment_class), np.bool_)
    if n:
        seg_used[int(seg.min())] = seg_used[int(seg.max())] = True
    parts: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.bool_]]] = [
        (app_lut, cols["app"][0], luts_used["app"]),
        (action_lut, act_codes, luts_used["action"]),
        (purpose_lut, cols["purpose"][0], luts_used["purpose"]),
        (category_lut, cols["category"][0], luts_used["category"]),
        (ctrl_lut, cols["controller"][0], luts_used["controller"]),
        (recip_lut, cols["recipient"][0], luts_used["recipient"]),
        (origin_lut, mask_codes, np.ones(len(origin_lut), np.bool_)),
        (ix.segment_class, seg, seg_used),
    ]
    widths = [ix.axes[a].size for a in axis_names] + [ix.axes["segment"].size]
    constant: list[int | None] = []
    varying: list[int] = []
    for j, (table_lut, _codes, used) in enumerate(parts):
        classes_used = np.unique(table_lut[used])
        same = len(classes_used) <= 1 and (j < 7 or not n or int(seg.min()) == int(seg.max()))
        constant.append(
            int(classes_used[0]) if same and len(classes_used) else (0 if same else None)
        )
        if not same:
            varying.append(j)
    space = float(np.prod(np.array([widths[j] for j in varying], dtype=np.float64)))
    key = np.zeros(n, np.int64)
    for j in varying:
        table_lut, codes, _used = parts[j]
        key *= widths[j]
        key += table_lut[codes]
    if space <= DENSE_KEYS:
        present = np.bincount(key, minlength=int(space)) > 0
        uniq = np.flatnonzero(present).astype(np.int64)
        lookup = np.cumsum(present, dtype=np.int64) - 1
        class_of_row = lookup[key]
    else:
        kenc = pc.dictionary_encode(pa.array(key, type=pa.int64()))
        class_of_row = kenc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        uniq = np.asarray(kenc.dictionary.to_numpy(zero_copy_only=False), dtype=np.int64)
    n_classes = len(uniq)
    class_codes: list[npt.NDArray[np.int64]] = [np.zeros(0, np.int64)] * len(parts)
    rest = uniq.copy()
    for j in reversed(varying):
        class_codes[j] = rest % widths[j]
        rest //= widths[j]
    for j, c in enumerate(constant):
        if c is not None:
            class_codes[j] = np.full(n_classes, c, np.int64)

    tables = [ix.axes[a].table for a in axis_names] + [ix.axes["segment"].table]
    if n_classes and ix.n_rules:
        final, pk, pr = _candidates(class_codes, tables)
        n_final = int(final.max()) + 1
    else:
        final = np.zeros(n_classes, np.int64)
        pk = pr = np.zeros(0, np.int64)
        n_final = max(1, n_classes)

    def any_of(kind: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
        sel = kind[pr]
        return np.asarray(np.bincount(pk[sel], minlength=n_final)[final] > 0)

    dyn = any_of(ix.dynamic)
    deny = any_of(ix.deny_static)
    permit = any_of(ix.permit_static)
    shadow = any_of(ix.shadow_static)
    n_def = len(ix.default_is_deny)
    if n_def:
        matched = np.zeros((n_final, n_def), np.bool_)
        sel = ix.enforce[pr] & (ix.rule_default_pos[pr] >= 0)
        matched[pk[sel], ix.rule_default_pos[pr[sel]]] = True
        live = ix.live_default[_segment_of_class(ix, class_codes[-1])]
        fires = live & ~matched[final]
        deny |= (fires & ix.default_is_deny).any(axis=1)
        permit |= (fires & ~ix.default_is_deny).any(axis=1)
    class_effect = np.where(deny, 2, np.where(permit, 1, 0)).astype(np.int8)

    effect = class_effect[class_of_row] if n else np.zeros(0, np.int8)
    excepted = np.zeros(n, np.bool_)
    shadow_row = shadow[class_of_row] if n else np.zeros(0, np.bool_)
    class_index = class_of_row.astype(np.int32)

    reps: list[npt.NDArray[np.int64]] = []  # a row per class, found on first use

    time_cols: dict[str, npt.NDArray[np.int64] | None] = {
        "grant_first_used_by_recipient_at": _times_ns(
            grant_first_used_by_recipient_at, n, "grant_first_used_by_recipient_at"
        ),
        "grant_granted_at": _times_ns(grant_granted_at, n, "grant_granted_at"),
    }
    status_codes, status_values = _encode(grant_status, n, "grant_status")
    for k, v in enumerate(status_values):
        if (
            v is not None
            and v not in ("active", "revoked", "expired")
            and np.any(status_codes == k)
        ):
            raise RequestError(
                f"row {_first_row(status_codes, k)}: unknown grant status '{v}' "
                "(active, revoked or expired)"
            )
    if grant_facts == "asserted":
        _check_times(at_ns, time_cols)
    elif grant_facts != "recorded":
        raise RequestError(f"grant_facts is 'asserted' or 'recorded', not {grant_facts!r}")
    scope_list = _objects(grant_scopes, n, "grant_scopes")
    subject_list = _objects(subject, n, "subject")
    context_list = _objects(context, n, "context")
    consent_list = _objects(consents, n, "consents")

    def row_request(i: int) -> Request:
        def val(name: str) -> str | None:
            codes, values = cols[name]
            return values[int(codes[i])]

        extra: dict[str, Any] = {}
        for name, t in time_cols.items():
            if t is not None and t[i] != _NAT:
                extra[name] = _from_ns(int(t[i]))
        st = status_values[int(status_codes[i])]
        if st is not None:
            extra["grant_status"] = st
        if scope_list is not None and (scopes_i := scope_list[i]) is not None:
            extra["grant_scopes"] = frozenset(scopes_i)
        for name, objs in (("subject", subject_list), ("context", context_list)):
            if objs is not None and (obj := objs[i]) is not None:
                extra[name] = _attrs(obj, name, i)
        if consent_list is not None and (cons := consent_list[i]) is not None:
            extra["consents"] = _consents(cons, i)
        try:
            return Request(
                app=str(val("app")),
                action=str(val("action")),
                category=str(val("category")),
                origins=origin_names[int(mask_codes[i])],
                at=_from_ns(int(at_ns[i])),
                purpose=val("purpose"),
                recipient=val("recipient"),
                controller=val("controller"),
                taxonomy=tax,
                **extra,
            )
        except RequestError as exc:
            raise RequestError(f"row {i}: {exc.message}") from None

    decisions: list[Decision] = []
    dyn_rows = np.flatnonzero(dyn[class_of_row]) if n else np.zeros(0, np.int64)
    if len(dyn_rows):
        # vectorised part of the context key: class, time bins, status
        ckey = class_of_row[dyn_rows].copy()
        for name, t in time_cols.items():
            if t is None:
                continue
            thr = np.array([_ns(x) for x in ix.time_thresholds[name]], dtype=np.int64)
            tv = t[dyn_rows]
            b = np.searchsorted(thr, tv, side="right").astype(np.int64) + 1
            b[tv == _NAT] = 0
            ckey = ckey * (len(thr) + 2) + b
        if ix.reads_status:
            ckey = ckey * len(status_values) + status_codes[dyn_rows]
        per_row = (
            (ix.reads_scopes and scope_list is not None)
            or (bool(ix.subject_names) and subject_list is not None)
            or (bool(ix.context_names) and context_list is not None)
            or (ix.reads_consents and consent_list is not None)
        )
        group_of: dict[Any, int] = {}
        group_rows: list[int] = []
        gid = np.empty(len(dyn_rows), np.int64)
        if per_row:
            for j, i in enumerate(dyn_rows.tolist()):
                gkey = (int(ckey[j]), *_context_key(ix, i, scope_list, subject_list, context_list,
                                                  consent_list, int(at_ns[i])))  # fmt: skip
                g = group_of.get(gkey)
                if g is None:
                    g = len(group_rows)
                    group_of[gkey] = g
                    group_rows.append(i)
                gid[j] = g
        else:
            kenc = pc.dictionary_encode(pa.array(ckey, type=pa.int64()))
            gid = kenc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
            first = np.zeros(len(kenc.dictionary), np.int64)
            first[gid[::-1]] = dyn_rows[::-1]
            group_rows = [int(x) for x in first]
        g_effect = np.zeros(len(group_rows), np.int8)
        g_exc = np.zeros(len(group_rows), np.bool_)
        g_shadow = np.zeros(len(group_rows), np.bool_)
        for g, i in enumerate(group_rows):
            d = compiled.decide(row_request(i))
            decisions.append(d)
            g_effect[g] = EFFECT_CODES[d.effect]
            g_exc[g] = d.excepted
            g_shadow[g] = d.shadow_denied
        effect[dyn_rows] = g_effect[gid]
        excepted[dyn_rows] = g_exc[gid]
        shadow_row[dyn_rows] = g_shadow[gid]
        class_index[dyn_rows] = (n_classes + gid).astype(np.int32)

    def build(k: int) -> Decision:
        if k >= n_classes:
            return decisions[k - n_classes]
        if not reps:
            rep = np.zeros(n_classes, np.int64)
            rep[class_of_row] = np.arange(n, dtype=np.int64)
            reps.append(rep)
        return compiled.decide(row_request(int(reps[0][k])))

    return BatchDecisions(
        effect=effect,
        excepted=excepted,
        shadow_denied=shadow_row,
        class_index=class_index,
        classes=_LazyDecisions(n_classes + len(decisions), build),
    )


def _segment_of_class(ix: _BatchIndex, seg_class: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """A segment index for each segment class (the segments of a class have the same rules and
    bundles in force, so any of them gives the bundle defaults that apply)."""
    first = np.zeros(ix.axes["segment"].size, np.int64)
    for s in range(len(ix.segment_class) - 1, -1, -1):
        first[ix.segment_class[s]] = s
    return first[seg_class]


def _attrs(value: Any, name: str, row: int) -> Attrs:
    if isinstance(value, Attrs):
        return value
    if not isinstance(value, Mapping):
        raise RequestError(f"row {row}: '{name}' must be a mapping, not {type(value).__name__}")
    items: dict[str, Any] = {}
    for k, v in value.items():
        if v is None:
            continue
        if isinstance(v, list | tuple | set):
            v = frozenset(v)
        items[k] = v
    try:
        return Attrs(items)
    except RequestError as exc:
        raise RequestError(f"row {row}: {name}: {exc.message}") from None


def _consents(value: Any, row: int) -> tuple[ConsentRecord, ...]:
    records = tuple(value) if isinstance(value, Iterable) else ()
    if not all(isinstance(c, ConsentRecord) for c in records):
        raise RequestError(f"row {row}: 'consents' must be a sequence of ConsentRecord")
    return records


def _context_key(
    ix: _BatchIndex,
    i: int,
    scopes: _Objects | None,
    subject: _Objects | None,
    context: _Objects | None,
    consents: _Objects | None,
    at_ns: int,
) -> tuple[Any, ...]:
    """The part of row ``i``'s context that conditions read (hashable)."""
    out: list[Any] = []
    if ix.reads_scopes and scopes is not None:
        s = scopes[i]
        out.append(None if s is None else frozenset(s))
    for names, objs, label in (
        (ix.subject_names, subject, "subject"),
        (ix.context_names, context, "context"),
    ):
        if names and objs is not None:
            obj = objs[i]
            a = _attrs(obj, label, i) if obj is not None else Attrs()
            out.append(tuple((nm, _typed(a.get(nm))) for nm in names))
    if ix.reads_consents and consents is not None:
        cons = consents[i]
        c = _consents(cons, i) if cons is not None else ()
        out.append(c)
        out.append(at_ns if c else 0)
    return tuple(out)


def _typed(v: object) -> object:
    """A key that keeps ``True`` apart from ``1`` and dates apart from text."""
    return (type(v).__name__, v)

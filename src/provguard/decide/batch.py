"""Deciding many requests at once from columns (numpy arrays, Arrow arrays, lists).

Rows are grouped into *classes* of rows that the policy cannot tell apart: the same action, app,
controller, recipient, purpose, category and origin label, the same validity segment of ``at``
(the time line cut at every instrument's start and end day), and the same bin of each grant time
(cut at every date a condition compares that time with; a missing time is its own bin). Each class
is decided once by :class:`~provguard.decide.compiled.CompiledPolicy`; the per-row results are
array lookups. Columns are dictionary-encoded with Arrow, so the cost is a few vectorised passes
over the rows plus one decision per class.

The decision of a class is exact for every row of it; only its explanation texts quote the class's
representative times (an ``excepted`` reason shows the first instant of the row's bin). Batch rows
carry no grant status, scopes, subject, context or consents: conditions on those see them absent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeAlias

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from provguard.decide.compiled import CompiledPolicy
from provguard.decide.conditions import day_start
from provguard.decide.model import Decision, Request
from provguard.errors import RequestError
from provguard.policy.model import FieldCondition
from provguard.provenance import OriginRegistry, default_registry

EFFECT_CODES: dict[str, int] = {"not_applicable": 0, "permit": 1, "deny": 2}
_EPOCH_NS = np.datetime64("1970-01-01T00:00:00", "ns")
_TIME_FIELDS = {
    "grant.first_used_by_recipient_at": "grant_first_used_by_recipient_at",
    "grant.granted_at": "grant_granted_at",
}

StrColumn: TypeAlias = (
    str | Sequence[str | None] | npt.NDArray[np.object_] | pa.Array | pa.ChunkedArray | None
)
TimeColumn: TypeAlias = datetime | npt.NDArray[np.datetime64] | pa.Array | pa.ChunkedArray | None


@dataclass(frozen=True)
class BatchDecisions:
    """Per-row results of :func:`decide_batch`.

    ``effect``: int8 codes per row (0 not_applicable, 1 permit, 2 deny; see :data:`EFFECT_CODES`);
    ``excepted`` / ``shadow_denied``: bool per row; ``class_index``: int32 per row into
    ``classes``, the decision of each class of indistinguishable rows (reasons, obligations).
    """

    effect: npt.NDArray[np.int8]
    excepted: npt.NDArray[np.bool_]
    shadow_denied: npt.NDArray[np.bool_]
    class_index: npt.NDArray[np.int32]
    classes: tuple[Decision, ...]

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


def _encode(col: StrColumn, n: int, name: str) -> tuple[npt.NDArray[np.int64], list[str | None]]:
    """(codes, values): ``values[codes[i]]`` is row i's value; code 0 is None."""
    if col is None or isinstance(col, str):
        return np.zeros(n, np.int64) if col is None else np.ones(n, np.int64), [None, col]
    arr = col if isinstance(col, pa.Array | pa.ChunkedArray) else pa.array(col, type=pa.string())
    if len(arr) != n:
        raise RequestError(f"column '{name}' has {len(arr)} rows, expected {n}")
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    enc = pc.dictionary_encode(arr)
    idx = enc.indices.to_numpy(zero_copy_only=False)
    codes = (
        np.where(np.isnan(idx), -1, idx).astype(np.int64) + 1
        if enc.null_count
        else (idx.astype(np.int64) + 1)
    )
    values: list[str | None] = [None, *enc.dictionary.to_pylist()]
    return codes, values


def _times_ns(col: TimeColumn, n: int, name: str) -> npt.NDArray[np.int64] | None:
    """UTC nanoseconds per row, ``iNaT`` (int64 min) for missing; None when the column is None."""
    if col is None:
        return None
    if isinstance(col, datetime):
        if col.tzinfo is None:
            raise RequestError(f"'{name}' must be timezone-aware")
        ns = int(col.astimezone(UTC).timestamp() * 1_000_000) * 1000
        return np.full(n, ns, np.int64)
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
                        day_start(rule.unless.grant_first_used_by_recipient_before)
                    )
                if rule.unless.grant_granted_before is not None:
                    out["grant_granted_at"].add(day_start(rule.unless.grant_granted_before))
            for cond in (*rule.when, *rule.unless_conditions):
                if isinstance(cond, FieldCondition) and cond.field in _TIME_FIELDS:
                    for d in (cond.before, cond.on_or_after):
                        if d is not None:
                            out[_TIME_FIELDS[cond.field]].add(day_start(d))
    return {k: sorted(v) for k, v in out.items()}


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
) -> BatchDecisions:
    """Decide one request per row; see the module docstring.

    String columns: a sequence, numpy array or Arrow array of equal length ``n``, or one value for
    every row (None = absent). ``origins``: provenance label bitmasks, uint64 per row, bits named
    by ``registry`` (default: :func:`provguard.provenance.default_registry`). ``at`` and the grant
    times: numpy ``datetime64`` (read as UTC; NaT = absent), Arrow timestamps, or one aware
    datetime. Raises :class:`RequestError` for mismatched lengths, unknown label bits, or a row
    that is not a valid :class:`Request` (naming the row).
    """
    reg = registry or default_registry()
    masks = np.asarray(
        origins.to_numpy(zero_copy_only=False) if isinstance(origins, pa.Array) else origins
    )
    if masks.ndim != 1:
        raise RequestError("'origins' must be one label bitmask per row")
    n = int(masks.shape[0])
    masks = masks.astype(np.uint64)
    at_ns = _times_ns(at, n, "at")
    if at_ns is None:
        raise RequestError("'at' is required")
    if np.any(at_ns == np.iinfo(np.int64).min):
        raise RequestError(
            f"'at' is missing on row {int(np.argmax(at_ns == np.iinfo(np.int64).min))}"
        )
    columns: list[tuple[npt.NDArray[np.int64], list[object]]] = []
    for name, col in (
        ("app", app),
        ("action", action),
        ("category", category),
        ("purpose", purpose),
        ("recipient", recipient),
        ("controller", controller),
    ):
        codes, str_values = _encode(col, n, name)
        columns.append((codes, list(str_values)))
    enc = pc.dictionary_encode(pa.array(masks, type=pa.uint64()))
    columns.append(
        (
            enc.indices.to_numpy(zero_copy_only=False).astype(np.int64),
            list(enc.dictionary.to_pylist()),
        )
    )
    bounds = np.array([_ns(b) for b in compiled._bounds], dtype=np.int64)
    seg = np.searchsorted(bounds, at_ns, side="right").astype(np.int64)
    columns.append((seg, list(range(len(bounds) + 1))))
    thresholds = _thresholds(compiled)
    time_fields: list[str] = []
    for field_name, col in (
        ("grant_first_used_by_recipient_at", grant_first_used_by_recipient_at),
        ("grant_granted_at", grant_granted_at),
    ):
        t = _times_ns(col, n, field_name)
        if t is None:
            continue
        thr = thresholds[field_name]
        cut = np.array([_ns(x) for x in thr], dtype=np.int64)
        # bin 0 = missing; bin k+1 = at least k thresholds at or before the time
        b = np.searchsorted(cut, t, side="right").astype(np.int64) + 1
        b[t == np.iinfo(np.int64).min] = 0
        reps: list[object] = [None]
        for k in range(len(thr) + 1):
            reps.append(thr[k - 1] if k > 0 else (thr[0] - timedelta(days=1) if thr else None))
        if not thr:
            reps[1] = datetime(2000, 1, 1, tzinfo=UTC)  # any present time: nothing compares it
        columns.append((b, reps))
        time_fields.append(field_name)
    # one int64 key per row (mixed radix), falling back to row-wise unique on overflow
    radix = [len(v) for _, v in columns]
    if float(np.prod(np.array(radix, dtype=np.float64))) < 2.0**62:
        key = np.zeros(n, np.int64)
        for codes, values in columns:
            key = key * len(values) + codes
        kenc = pc.dictionary_encode(pa.array(key, type=pa.int64()))
        class_index = kenc.indices.to_numpy(zero_copy_only=False).astype(np.int32)
        uniq = np.asarray(kenc.dictionary.to_numpy(zero_copy_only=False), dtype=np.int64)
        parts = []
        rest = uniq.copy()
        for _codes, values in reversed(columns):
            parts.append(rest % len(values))
            rest //= len(values)
        class_codes = np.stack(parts[::-1], axis=1)
    else:
        stacked = np.stack([c for c, _ in columns], axis=1)
        class_codes, inverse = np.unique(stacked, axis=0, return_inverse=True)
        class_index = inverse.reshape(-1).astype(np.int32)
    classes: list[Decision] = []
    for k, codes_row in enumerate(class_codes):
        vals = [columns[j][1][int(c)] for j, c in enumerate(codes_row)]
        app_v, action_v, cat_v, purpose_v, recipient_v, controller_v, mask_v, seg_v = vals[:8]
        s = int(seg_v)  # type: ignore[call-overload]
        t_rep = compiled._bounds[s - 1] if s > 0 else datetime(1, 1, 2, tzinfo=UTC)
        extra = dict(zip(time_fields, vals[8:], strict=True))
        try:
            req = Request(
                app=str(app_v),
                action=str(action_v),
                category=str(cat_v),
                origins=reg.names_of(int(mask_v)),  # type: ignore[call-overload]
                at=t_rep,
                purpose=purpose_v,  # type: ignore[arg-type]
                recipient=recipient_v,  # type: ignore[arg-type]
                controller=controller_v,  # type: ignore[arg-type]
                **extra,  # type: ignore[arg-type]
            )
        except Exception as exc:
            row = int(np.argmax(class_index == k))
            message = exc.message if isinstance(exc, RequestError) else str(exc)
            raise RequestError(f"row {row}: {message}") from None
        classes.append(compiled.decide(req))
    effects = np.array([EFFECT_CODES[d.effect] for d in classes], dtype=np.int8)
    excepted = np.array([d.excepted for d in classes], dtype=np.bool_)
    shadow = np.array([d.shadow_denied for d in classes], dtype=np.bool_)
    return BatchDecisions(
        effect=effects[class_index] if n else np.zeros(0, np.int8),
        excepted=excepted[class_index] if n else np.zeros(0, np.bool_),
        shadow_denied=shadow[class_index] if n else np.zeros(0, np.bool_),
        class_index=class_index,
        classes=tuple(classes),
    )

"""Handle matching: match keys, pinyin readings and rapidfuzz scores for (app, provider) pairs.

For each pair the scanner computes, on the v2 match keys
(:data:`~provguard.similarity.handles.MATCH_STEPS`):

- ``similarity`` -- normalised Indel similarity in 0..1 (``1 - (insertions + deletions) /
  (len(a) + len(b))``, rapidfuzz ``Indel.normalized_similarity``; = ``fuzz.ratio / 100``);
- ``contained`` -- an addition to the copy: either the shorter key starts the longer one
  (rapidfuzz ``Prefix``; an added suffix such as ``_official``, ``2003``, ``酱``) and is at least
  ``min_contained`` characters long, or the shorter key occurs anywhere in the longer one
  (``fuzz.partial_ratio == 100``) with at most ``max_extra`` characters around it (a decoration
  the key keeps, such as Georgian ``ღ``);
- ``pinyin`` -- the keys differ in script (one holds hanzi, the other none) and their pinyin
  readings (pypinyin ``lazy_pinyin``, tone-less, letters and digits only) are equal:
  ``王小明`` ~ ``wangxiaoming``. Two hanzi handles are never compared by reading (homophones are
  different names).

``match_kind`` is the first that holds of ``exact`` (identical strings), ``normalized`` (v1 keys
equal), ``key`` (v2 match keys equal), ``pinyin``, ``contained``, ``fuzzy``
(``similarity >= min_similarity``), else ``none``; ``match`` is ``match_kind != "none"``. A null
or blank handle (empty match key) never matches. The default thresholds are calibrated on the
labelled sandbox set by ``bench/scan_labelled.py`` (see docs/scanner.md); they are not guesses.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa
from pypinyin import lazy_pinyin
from rapidfuzz import fuzz, process
from rapidfuzz.distance import Indel, Prefix

from provguard.errors import InputError
from provguard.similarity.handles import MATCH_STEPS, normalize_handles

MATCH_KINDS = ("exact", "normalized", "key", "pinyin", "contained", "fuzzy", "none")
"""The values of ``match_kind``, in precedence order."""

_HANZI = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_NOT_ALNUM = re.compile(r"[^0-9a-z]")


@dataclass(frozen=True)
class HandleThresholds:
    """Decision thresholds for handle matching.

    ``min_similarity``: Indel similarity (0..1) at or above which two keys are a fuzzy match.
    ``min_contained``: shortest key length (characters) for an added-suffix match; 0 disables it.
    ``max_extra``: most extra characters around a substring match; 0 disables it.
    """

    min_similarity: float = 0.96
    min_contained: int = 0
    max_extra: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_similarity <= 1.0:
            raise InputError("min_similarity must be in 0..1")
        if self.min_contained < 0 or self.max_extra < 0:
            raise InputError("min_contained and max_extra must be >= 0")


CALIBRATED = HandleThresholds(min_similarity=0.96, min_contained=0, max_extra=0)
"""The thresholds chosen by ``bench/scan_labelled.py --calibrate`` on the seed-7 sandbox
(docs/scanner.md): containment rules are off because, at pooled precision >= 0.99, they cost more
false matches on hard negatives (``小鹿`` vs ``迷路的小鹿``) than they gain."""


@lru_cache(maxsize=65536)
def pinyin_key(key: str) -> str:
    """Tone-less pinyin reading of a match key: hanzi -> syllables, other letters/digits kept.

    ``"王小明"`` -> ``"wangxiaoming"``, ``"小猫123"`` -> ``"xiaomao123"``.
    """
    return _NOT_ALNUM.sub("", "".join(lazy_pinyin(key)).casefold())


@dataclass(frozen=True)
class HandleScores:
    """Per-pair results, arrays of length N (see module docstring)."""

    similarity: np.ndarray  # float64, 0..1 (0 where a side is null/blank)
    contained: np.ndarray  # bool
    pinyin: np.ndarray  # bool
    match_kind: np.ndarray  # object (str), one of MATCH_KINDS
    match: np.ndarray  # bool


def _column(values: Sequence[str | None] | pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    if isinstance(values, pa.Array):
        return values
    try:
        return pa.array(list(values), type=pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputError(f"handles must be strings or None: {exc}") from exc


@dataclass(frozen=True)
class HandleFeatures:
    """Threshold-free per-pair features (arrays of length N); see :func:`handle_features`."""

    valid: np.ndarray  # bool: both match keys non-empty
    exact: np.ndarray  # bool: identical strings
    v1_equal: np.ndarray  # bool: v1 keys equal
    key_equal: np.ndarray  # bool: v2 match keys equal
    pinyin: np.ndarray  # bool: cross-script pinyin readings equal
    similarity: np.ndarray  # float64 0..1, Indel normalised similarity of the match keys
    prefix: np.ndarray  # int64: common prefix length of the keys
    substring: np.ndarray  # bool: the shorter key occurs in the longer one
    len_app: np.ndarray  # int64: match key lengths
    len_provider: np.ndarray


def handle_features(
    app: Sequence[str | None] | pa.Array | pa.ChunkedArray,
    provider: Sequence[str | None] | pa.Array | pa.ChunkedArray,
    *,
    v1_app: pa.Array | pa.ChunkedArray | None = None,
    v1_provider: pa.Array | pa.ChunkedArray | None = None,
) -> HandleFeatures:
    """Compute the features of N aligned (app handle, provider nickname) pairs.

    Args:
        app, provider: N handles each (nullable strings).
        v1_app, v1_provider: the v1-normalised handles if the caller has them already.

    Raises:
        InputError: lengths differ or a value is not a string.
    """
    a_raw, b_raw = _column(app), _column(provider)
    if len(a_raw) != len(b_raw):
        raise InputError("app and provider handle columns must have the same length")
    n = len(a_raw)
    ak = [k or "" for k in normalize_handles(a_raw, MATCH_STEPS).to_pylist()]
    bk = [k or "" for k in normalize_handles(b_raw, MATCH_STEPS).to_pylist()]
    v1a = (v1_app if v1_app is not None else normalize_handles(a_raw)).to_pylist()
    v1b = (v1_provider if v1_provider is not None else normalize_handles(b_raw)).to_pylist()
    valid = np.fromiter((bool(x) and bool(y) for x, y in zip(ak, bk, strict=True)), bool, n)
    if n:
        sim = np.asarray(process.cpdist(ak, bk, scorer=Indel.normalized_similarity, workers=-1))
        pre = np.asarray(process.cpdist(ak, bk, scorer=Prefix.similarity, workers=-1))
        part = np.asarray(process.cpdist(ak, bk, scorer=fuzz.partial_ratio, workers=-1))
    else:
        sim, pre, part = np.zeros(0), np.zeros(0, np.int64), np.zeros(0)
    key_equal = valid & np.fromiter((x == y for x, y in zip(ak, bk, strict=True)), bool, n)
    has_hanzi_a = np.fromiter((bool(_HANZI.search(x)) for x in ak), bool, n)
    has_hanzi_b = np.fromiter((bool(_HANZI.search(x)) for x in bk), bool, n)
    cross = valid & ~key_equal & (has_hanzi_a != has_hanzi_b)
    pinyin = np.zeros(n, dtype=bool)
    for i in np.flatnonzero(cross):
        pinyin[i] = pinyin_key(ak[i]) == pinyin_key(bk[i]) != ""
    a_list, b_list = a_raw.to_pylist(), b_raw.to_pylist()
    return HandleFeatures(
        valid=valid,
        exact=valid & np.fromiter((x == y for x, y in zip(a_list, b_list, strict=True)), bool, n),
        v1_equal=valid & np.fromiter((x == y for x, y in zip(v1a, v1b, strict=True)), bool, n),
        key_equal=key_equal,
        pinyin=pinyin,
        similarity=np.where(valid, sim.astype(np.float64), 0.0),
        prefix=pre.astype(np.int64),
        substring=valid & (part >= 100.0),
        len_app=np.fromiter(map(len, ak), np.int64, n),
        len_provider=np.fromiter(map(len, bk), np.int64, n),
    )


def decide_handles(f: HandleFeatures, thresholds: HandleThresholds = CALIBRATED) -> HandleScores:
    """Apply ``thresholds`` to features (the module docstring's precedence of kinds)."""
    la, lb = f.len_app, f.len_provider
    shorter = np.minimum(la, lb)
    suffix_added = (
        (thresholds.min_contained > 0)
        & (shorter >= thresholds.min_contained)
        & (f.prefix == shorter)
    )
    infix = (thresholds.max_extra > 0) & (np.abs(la - lb) <= thresholds.max_extra) & f.substring
    contained = f.valid & (suffix_added | infix)
    fuzzy = f.valid & (f.similarity >= thresholds.min_similarity)
    kind = np.full(len(f.valid), "none", dtype=object)
    for name, mask in (
        ("fuzzy", fuzzy),
        ("contained", contained),
        ("pinyin", f.pinyin),
        ("key", f.key_equal),
        ("normalized", f.v1_equal),
        ("exact", f.exact),
    ):
        kind[mask] = name
    return HandleScores(f.similarity, contained, f.pinyin, kind, kind != "none")


def score_handles(
    app: Sequence[str | None] | pa.Array | pa.ChunkedArray,
    provider: Sequence[str | None] | pa.Array | pa.ChunkedArray,
    thresholds: HandleThresholds = CALIBRATED,
    *,
    v1_app: pa.Array | pa.ChunkedArray | None = None,
    v1_provider: pa.Array | pa.ChunkedArray | None = None,
) -> HandleScores:
    """Score N aligned (app handle, provider nickname) pairs:
    :func:`decide_handles` of :func:`handle_features`.

    Args:
        app, provider: N handles each (nullable strings).
        thresholds: decision thresholds (default: calibrated).
        v1_app, v1_provider: the v1-normalised handles if the caller has them already.

    Returns:
        :class:`HandleScores`.

    Raises:
        InputError: lengths differ or a value is not a string.
    """
    feats = handle_features(app, provider, v1_app=v1_app, v1_provider=v1_provider)
    return decide_handles(feats, thresholds)

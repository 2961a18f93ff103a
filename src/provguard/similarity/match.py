"""Handle matching: match keys, pinyin readings and rapidfuzz scores for (app, provider) pairs.

For each pair the scanner computes, on the v2 match keys
(:data:`~provguard.similarity.handles.MATCH_STEPS`):

- ``similarity`` -- normalised Indel similarity in 0..1 (``1 - (insertions + deletions) /
  (len(a) + len(b))``, rapidfuzz ``Indel.normalized_similarity``; = ``fuzz.ratio / 100``);
- ``suffix`` -- an *added suffix* (issue 6): the app key is the provider key followed by a short
  remainder of a known shape (:func:`suffix_kind`, on the key before the confusable skeleton so
  digits stay digits): a common handle affix (:data:`COMMON_AFFIXES`: ``official``, ``呀``,
  ``酱``, ...), a year ``19xx``/``20xx``, a run of 2..``max_suffix_digits`` digits after a
  provider key that does not end in a digit, or up to ``max_suffix_digits`` digits set off by a
  separator in the typed handle (``eva.b10_81``). A digit glued to a provider key that ends in
  digits (``panda_lover7`` -> ``panda_lover74``) is a *different number*, not a suffix: such
  pairs are the hard negatives of the labelled set;
- ``wrapped`` -- the app key is the provider key between two copies of the same 1..``max_wrap``
  characters that are neither letters/digits of ASCII nor hanzi (a decoration that the match key
  keeps because it is a letter of another script, e.g. Georgian ``ღ``: ``ღ小鹿ღ``);
- ``contained`` (the older, calibrated-off rules) -- the shorter key starts the longer one and is
  at least ``min_contained`` characters long, or occurs in it with at most ``max_extra``
  characters around it;
- ``pinyin`` -- the keys differ in script (one holds hanzi, the other none) and their pinyin
  readings (pypinyin ``lazy_pinyin``, tone-less, letters and digits only) are equal:
  ``王小明`` ~ ``wangxiaoming``. Two hanzi handles are never compared by reading (homophones are
  different names).

``match_kind`` is the first that holds of ``exact`` (identical strings), ``normalized`` (v1 keys
equal), ``key`` (v2 match keys equal), ``pinyin``, ``contained`` (any of suffix / wrapped / the
older containment rules), ``fuzzy`` (``similarity >= min_similarity``), else ``none``;
``match`` is ``match_kind != "none"``. A null or blank handle (empty match key) never matches.
The default thresholds are calibrated on the labelled sandbox set by ``bench/scan_labelled.py``
(see docs/scanner.md); they are not guesses.

Speed: keys are computed once per distinct handle over the union of both columns
(:func:`~provguard.similarity.handles.normalize_many`, whole-column C-level steps), equalities
are integer comparisons of dictionary codes, the similarity and prefix scores are rapidfuzz
``process.cpdist`` (C++, all cores); only the few candidate pairs of the suffix / wrap / pinyin
tests run Python code per pair.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pypinyin import lazy_pinyin
from rapidfuzz import process
from rapidfuzz.distance import Indel, Prefix

from provguard.errors import InputError
from provguard.similarity.handles import (
    MATCH_STEPS,
    V1_STEPS,
    HandleStep,
    confusable_skeleton,
    normalize_handle,
    normalize_text,
)

MATCH_KINDS = ("exact", "normalized", "key", "pinyin", "contained", "fuzzy", "none")
"""The values of ``match_kind``, in precedence order."""

SUFFIX_KINDS = ("", "affix", "year", "digits", "sep_digits")
"""Codes of :attr:`HandleFeatures.suffix_kind` (index into this tuple; 0 = no added suffix)."""

COMMON_AFFIXES = frozenset(
    [
        # Latin words appended to a name to mark "this is really me" / a channel
        "official", "offical", "real", "hq", "tv", "vlog", "blog", "channel", "studio", "fans",
        # Chinese sentence-final particles and diminutives used as handle endings, and
        # "official" / "myself" / "alt account" / "main account" / "studio"
        "呀", "酱", "啊", "吖", "哒", "呢", "哦", "丫", "君", "桑", "官方", "本人", "小号",
        "大号", "工作室",
    ]
)  # fmt: skip
"""Affixes an *added suffix* may consist of (match-key form: case-folded, no separators)."""

_HANZI = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_NOT_ALNUM = re.compile(r"[^0-9a-z]")
_YEAR = re.compile(r"(?:19|20)[0-9]{2}")
_DIGITS = re.compile(r"[0-9]+")
_SEPARATED_TAIL = r"(?:[^\w]|_)+{}(?:[^\w]|_)*$"


@dataclass(frozen=True)
class HandleThresholds:
    """Decision thresholds for handle matching.

    ``min_similarity``: Indel similarity (0..1) at or above which two keys are a fuzzy match.
    ``min_contained``: shortest key length (characters) for the older prefix rule; 0 disables it.
    ``max_extra``: most extra characters around the older substring rule; 0 disables it.
    ``max_suffix_digits``: most digits of an added-suffix digit run; 0 disables digit suffixes
    (years included).
    ``suffix_affix``: accept an added :data:`COMMON_AFFIXES` word.
    ``min_suffix_base``: shortest provider key (characters) an added suffix may follow.
    ``max_wrap``: most characters on each side of a symmetric wrapper; 0 disables it.
    """

    min_similarity: float = 0.96
    min_contained: int = 0
    max_extra: int = 0
    max_suffix_digits: int = 0
    suffix_affix: bool = False
    min_suffix_base: int = 1
    max_wrap: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_similarity <= 1.0:
            raise InputError("min_similarity must be in 0..1")
        if min(self.min_contained, self.max_extra, self.max_suffix_digits, self.max_wrap) < 0:
            raise InputError("min_contained, max_extra, max_suffix_digits, max_wrap must be >= 0")
        if self.min_suffix_base < 1:
            raise InputError("min_suffix_base must be >= 1")


CALIBRATED = HandleThresholds(
    min_similarity=0.97,
    min_contained=0,
    max_extra=0,
    max_suffix_digits=4,
    suffix_affix=True,
    min_suffix_base=1,
    max_wrap=1,
)
"""The thresholds chosen by ``bench/scan_labelled.py --seed 7 --calibrate`` (docs/scanner.md;
the most conservative setting with the best recall on the recognisable edits at pooled
precision >= 0.99): the shaped added-suffix and symmetric-wrapper rules on, fuzzy matching from
0.97 (with those rules, 0.96 only added false matches such as ``dreamer_lover9`` vs
``dreamer_lover91``); the older bare prefix / substring rules stay off because they cost more
false matches on hard negatives (``panda_lover7`` vs ``panda_lover74``, ``小鹿`` vs
``迷路的小鹿``) than they gain."""


@lru_cache(maxsize=65536)
def _run_pinyin(run: str) -> str:
    return "".join(lazy_pinyin(run))


def pinyin_key(key: str) -> str:
    """Tone-less pinyin reading of a match key: hanzi -> syllables, other letters/digits kept.

    ``"王小明"`` -> ``"wangxiaoming"``, ``"小猫123"`` -> ``"xiaomao123"``. Readings are cached
    per run of hanzi (pypinyin picks a polyphone's reading from the run's phrase).
    """
    parts = re.split(r"([\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+)", key)
    text = "".join(_run_pinyin(p) if i % 2 else p for i, p in enumerate(parts))
    return _NOT_ALNUM.sub("", text.casefold())


_HANZI_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_NOT_ALNUM_LF = re.compile(r"[^0-9a-z\n]+")


def pinyin_keys(keys: Sequence[str]) -> list[str]:
    """:func:`pinyin_key` of each key, in one pass over the keys joined by line feeds (hanzi
    runs read by pypinyin, cached per run); a key holding a line feed is read on its own."""
    keys = list(keys)
    if not keys or any("\n" in k for k in keys):
        return [pinyin_key(k) for k in keys]
    text = _HANZI_RUN.sub(lambda m: _run_pinyin(m.group(0)), "\n".join(keys))
    return _NOT_ALNUM_LF.sub("", text.casefold()).split("\n")


def suffix_kind(
    app_simplified: str, provider_key_len: int, app_v1: str, max_digits: int = 4
) -> str:
    """Classify the remainder of an app key after the provider key (see module docstring).

    Args:
        app_simplified: the app handle's match key before the confusable skeleton (so digits
            are digits); its first ``provider_key_len`` characters equal the provider's key.
        provider_key_len: length of the provider's match key (>= 1).
        app_v1: the app handle's v1 form (keeps separators), for ``sep_digits``.
        max_digits: longest digit run accepted.

    Returns:
        One of :data:`SUFFIX_KINDS` (``""``: not an added suffix of a known shape).
    """
    rem = app_simplified[provider_key_len:]
    if not rem or provider_key_len < 1:
        return ""
    if rem in COMMON_AFFIXES:
        return "affix"
    if not _DIGITS.fullmatch(rem) or len(rem) > max_digits:
        return ""
    if re.search(_SEPARATED_TAIL.format(re.escape(rem)), app_v1):
        return "sep_digits"
    if _YEAR.fullmatch(rem):
        return "year"
    if len(rem) >= 2 and not app_simplified[provider_key_len - 1].isdigit():
        return "digits"
    return ""


def _wrapped(longer: str, shorter: str, max_wrap: int) -> bool:
    extra = len(longer) - len(shorter)
    if extra < 2 or extra % 2 or extra // 2 > max_wrap:
        return False
    w = extra // 2
    left, mid, right = longer[:w], longer[w:-w], longer[-w:]
    if mid != shorter or left != right:
        return False
    return not any((c.isascii() and c.isalnum()) or _HANZI.match(c) for c in left)


@dataclass(frozen=True)
class HandleScores:
    """Per-pair results, arrays of length N (see module docstring)."""

    similarity: np.ndarray  # float64, 0..1 (0 where a side is null/blank)
    contained: np.ndarray  # bool: suffix, wrapped or the older containment rules
    pinyin: np.ndarray  # bool
    match_kind: np.ndarray  # object (str), one of MATCH_KINDS
    match: np.ndarray  # bool


def _column(values: Sequence[str | None] | pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        if pa.types.is_null(values.type):
            return pa.nulls(len(values), pa.string())
        if pa.types.is_dictionary(values.type):
            values = values.cast(values.type.value_type)
        if pa.types.is_large_string(values.type):
            return values.cast(pa.string())
        if not pa.types.is_string(values.type):
            raise InputError(f"handles must be a string column, got {values.type}")
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
    suffix_kind: np.ndarray  # int8: index into SUFFIX_KINDS (app key = provider key + suffix)
    suffix_digits: np.ndarray  # int64: digits in that suffix (0 for an affix)
    wrap: np.ndarray  # int64: wrapper width on each side (0: not wrapped), up to 2


def _joined(values: pa.Array) -> str | None:
    """The values (a string array without nulls) joined by line feeds, in C; None if a value
    holds a line feed."""
    if pc.any(pc.match_substring(values, "\n")).as_py():
        return None
    lists = pa.ListArray.from_arrays(pa.array([0, len(values)], pa.int32()), values)
    out: str = pc.binary_join(lists, "\n")[0].as_py()
    return out


def _normalised_text(values: pa.Array, joined: str | None, steps: tuple[HandleStep, ...]) -> str:
    """``steps`` (V1_STEPS or MATCH_STEPS prefixes: their results hold no line feed) applied to
    every value, joined by line feeds."""
    out = normalize_text(joined, len(values), steps) if joined is not None else None
    if out is None:
        out = "\n".join(normalize_handle(v, steps) for v in values.to_pylist())
    return out


def _split(text: str) -> pa.Array:
    parts = pc.split_pattern(pa.array([text], pa.string()), "\n")
    out: pa.Array = parts.flatten()
    return out


def _lengths_and_hanzi(text: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Code-point length of each of the ``n`` line-feed-separated values and whether it holds a
    hanzi, from one UTF-32 buffer."""
    cps = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    seps = np.flatnonzero(cps == 0x0A)
    lengths = np.diff(np.concatenate(([-1], seps, [len(cps)]))) - 1
    han = np.flatnonzero(
        ((cps >= 0x3400) & (cps <= 0x4DBF))
        | ((cps >= 0x4E00) & (cps <= 0x9FFF))
        | ((cps >= 0xF900) & (cps <= 0xFAFF))
    )
    has = np.zeros(n, dtype=bool)
    has[np.searchsorted(seps, han)] = True
    return lengths.astype(np.int64), has


def _pair_equal(values: pa.Array, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """``values[ia[i]] == values[ib[i]]`` per pair (False where an index is -1)."""
    ok = (ia >= 0) & (ib >= 0)
    out = np.zeros(len(ia), dtype=bool)
    if ok.any():
        eq = pc.equal(values.take(ia[ok]), values.take(ib[ok]))
        out[ok] = np.asarray(eq.to_numpy(zero_copy_only=False), dtype=bool)
    return out


def handle_features(
    app: Sequence[str | None] | pa.Array | pa.ChunkedArray,
    provider: Sequence[str | None] | pa.Array | pa.ChunkedArray,
    *,
    v1_app: pa.Array | pa.ChunkedArray | None = None,
    v1_provider: pa.Array | pa.ChunkedArray | None = None,
    max_suffix_digits: int = 4,
    max_wrap: int = 2,
) -> HandleFeatures:
    """Compute the features of N aligned (app handle, provider nickname) pairs.

    Args:
        app, provider: N handles each (nullable strings).
        v1_app, v1_provider: accepted for compatibility (the v1 keys are computed here, once
            per distinct handle, either way).
        max_suffix_digits: longest digit run :func:`suffix_kind` classifies (features above it
            are ``""``); thresholds can only lower it.
        max_wrap: widest wrapper recorded in ``wrap``.

    Raises:
        InputError: lengths differ or a value is not a string.
    """
    del v1_app, v1_provider
    a_raw, b_raw = _column(app), _column(provider)
    if len(a_raw) != len(b_raw):
        raise InputError("app and provider handle columns must have the same length")
    n = len(a_raw)
    enc = pc.dictionary_encode(pa.concat_arrays([a_raw, b_raw]))
    dictionary: pa.Array = enc.dictionary
    m = len(dictionary)
    codes = np.asarray(pc.fill_null(enc.indices, -1).to_numpy(), dtype=np.int64)
    ia, ib = codes[:n], codes[n:]
    if m:
        joined = _joined(dictionary)
        v1_text = _normalised_text(dictionary, joined, V1_STEPS)
        simplified_text = _normalised_text(dictionary, joined, MATCH_STEPS[:-1])
        assert MATCH_STEPS[-1] is confusable_skeleton
        keys_text = normalize_text(simplified_text, m, (confusable_skeleton,))
        assert keys_text is not None  # the skeleton keeps line feeds and lengths
        keys = keys_text.split("\n")
        key_len, key_han = _lengths_and_hanzi(keys_text, m)
        v1_arr, simplified_arr = _split(v1_text), _split(simplified_text)
        key_arr = _split(keys_text)
    else:
        keys = []
        key_len, key_han = np.zeros(0, np.int64), np.zeros(0, bool)
        v1_arr = simplified_arr = key_arr = pa.array([], pa.string())

    # per-pair views; a null handle takes a sentinel row with an empty key
    def pick(arr: np.ndarray, idx: np.ndarray, fill: object) -> np.ndarray:
        out = np.empty(n, dtype=arr.dtype)
        ok = idx >= 0
        out[ok] = arr[idx[ok]]
        out[~ok] = fill
        return out

    keys_obj = np.empty(m + 1, dtype=object)
    keys_obj[:m] = keys
    keys_obj[m] = ""  # the row of a null handle
    ka = keys_obj[np.where(ia >= 0, ia, m)]
    kb = keys_obj[np.where(ib >= 0, ib, m)]
    la, lb = pick(key_len, ia, 0), pick(key_len, ib, 0)
    valid = (la > 0) & (lb > 0)
    exact = valid & (ia == ib)
    v1_equal = valid & _pair_equal(v1_arr, ia, ib)
    key_equal = valid & _pair_equal(key_arr, ia, ib)
    if n:
        a_list, b_list = ka.tolist(), kb.tolist()
        sim = np.asarray(
            process.cpdist(a_list, b_list, scorer=Indel.normalized_similarity, workers=-1),
            dtype=np.float64,
        )
        pre = np.asarray(
            process.cpdist(a_list, b_list, scorer=Prefix.similarity, workers=-1), dtype=np.int64
        )
    else:
        sim, pre = np.zeros(0), np.zeros(0, np.int64)
    sim = np.where(valid, sim, 0.0)
    shorter, total = np.minimum(la, lb), la + lb
    # the shorter key inside the longer one <=> their LCS is the whole shorter key, so the
    # Indel similarity is 2 * shorter / total (cpdist gives float32): verify those candidates
    substring = valid & key_equal
    cand = np.flatnonzero(valid & ~key_equal & (sim >= 2 * shorter / np.maximum(total, 1) - 1e-4))
    for i in cand:
        x, y = ka[i], kb[i]
        substring[i] = y in x if len(x) >= len(y) else x in y

    # added suffix: app key = provider key + remainder (app longer, provider key its prefix)
    suffix = np.zeros(n, dtype=np.int8)
    suffix_digits = np.zeros(n, dtype=np.int64)
    for i in np.flatnonzero(valid & (la > lb) & (pre == lb)):
        j = int(ia[i])
        kind = suffix_kind(
            simplified_arr[j].as_py(), int(lb[i]), v1_arr[j].as_py(), max_suffix_digits
        )
        if kind:
            suffix[i] = SUFFIX_KINDS.index(kind)
            if kind != "affix":
                suffix_digits[i] = la[i] - lb[i]
    wrap = np.zeros(n, dtype=np.int64)
    for i in np.flatnonzero(substring & (la > lb) & ((la - lb) % 2 == 0)):
        for w in range(1, max_wrap + 1):
            if _wrapped(ka[i], kb[i], w):
                wrap[i] = w
                break

    # pinyin: cross-script pairs, readings computed once per distinct key, in one batch
    cross = np.flatnonzero(
        valid & ~key_equal & (pick(key_han, ia, False) != pick(key_han, ib, False))
    )
    pinyin = np.zeros(n, dtype=bool)
    if len(cross):
        need = np.unique(np.concatenate([ia[cross], ib[cross]]))
        readings = np.asarray(pinyin_keys([keys[j] for j in need.tolist()]), dtype=object)
        ra = readings[np.searchsorted(need, ia[cross])]
        rb = readings[np.searchsorted(need, ib[cross])]
        pinyin[cross] = (ra == rb) & (ra != "")
    return HandleFeatures(
        valid=valid,
        exact=exact,
        v1_equal=v1_equal,
        key_equal=key_equal,
        pinyin=pinyin,
        similarity=sim,
        prefix=pre,
        substring=substring,
        len_app=la.astype(np.int64),
        len_provider=lb.astype(np.int64),
        suffix_kind=suffix,
        suffix_digits=suffix_digits,
        wrap=wrap,
    )


def decide_handles(f: HandleFeatures, thresholds: HandleThresholds = CALIBRATED) -> HandleScores:
    """Apply ``thresholds`` to features (the module docstring's precedence of kinds)."""
    la, lb = f.len_app, f.len_provider
    shorter = np.minimum(la, lb)
    th = thresholds
    prefix_added = (th.min_contained > 0) & (shorter >= th.min_contained) & (f.prefix == shorter)
    infix = (th.max_extra > 0) & (np.abs(la - lb) <= th.max_extra) & f.substring
    kind = f.suffix_kind
    affix = th.suffix_affix & (kind == SUFFIX_KINDS.index("affix"))
    digits = (kind > SUFFIX_KINDS.index("affix")) & (f.suffix_digits <= th.max_suffix_digits)
    suffix = (affix | digits) & (lb >= th.min_suffix_base)
    wrapped = (f.wrap > 0) & (f.wrap <= th.max_wrap)
    contained = f.valid & (prefix_added | infix | suffix | wrapped)
    fuzzy = f.valid & (f.similarity >= th.min_similarity)
    out = np.full(len(f.valid), "none", dtype=object)
    for name, mask in (
        ("fuzzy", fuzzy),
        ("contained", contained),
        ("pinyin", f.pinyin),
        ("key", f.key_equal),
        ("normalized", f.v1_equal),
        ("exact", f.exact),
    ):
        out[mask] = name
    return HandleScores(f.similarity, contained, f.pinyin, out, out != "none")


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
        v1_app, v1_provider: accepted for compatibility (unused).

    Returns:
        :class:`HandleScores`.

    Raises:
        InputError: lengths differ or a value is not a string.
    """
    feats = handle_features(
        app,
        provider,
        v1_app=v1_app,
        v1_provider=v1_provider,
        max_suffix_digits=max(4, thresholds.max_suffix_digits),
        max_wrap=max(2, thresholds.max_wrap),
    )
    return decide_handles(feats, thresholds)

"""Handle (nickname) normalisation, v1.

A handle is normalised by running it through an ordered list of small steps, each a
``str -> str`` function. v1 (:data:`V1_STEPS`) is:

1. :func:`drop_format_characters` -- remove every code point of General Category ``Cf``
   (format characters: ZERO WIDTH SPACE U+200B, ZERO WIDTH NON-JOINER/JOINER U+200C/U+200D,
   LEFT-TO-RIGHT MARK U+200E, WORD JOINER U+2060, BOM U+FEFF, soft hyphen U+00AD, ...). Done
   first so that a format character cannot separate a base letter from its combining mark
   during normalisation.
2. :func:`nfkc_casefold` -- compatibility caseless form, the Unicode Standard's definition D146
   (chapter 3.13, "Compatibility caseless matching"):
   ``NFKC(casefold(NFKD(casefold(NFD(s)))))``. This folds full-width letters and digits
   (``ＺＨＡＮＧ`` -> ``zhang``), ligatures, superscripts, and case (``ß`` -> ``ss``).
3. :func:`collapse_whitespace` -- strip surrounding whitespace and collapse every inner run of
   Unicode whitespace to one ASCII space (after NFKC the ideographic space U+3000 is already
   U+0020).

v2 (:data:`MATCH_STEPS`, the *match key* used by the scanner) adds, in this order:

1. :func:`drop_format_characters` (as v1);
2. :func:`drop_emoji` -- every emoji sequence known to the ``emoji`` package (Unicode UTS #51
   data: ZWJ sequences, flags, keycaps, skin tones), then any left-over variation selector;
3. :func:`nfkc_casefold` (as v1);
4. :func:`drop_decorations` -- every code point of General Category ``P*`` (punctuation), ``S*``
   (symbols), ``Z*`` (separators) and ``Cc``: brackets ``【】``, stars, ``~``, ``_``, spaces;
5. :func:`to_simplified` -- Traditional -> Simplified Chinese with OpenCC (``t2s``);
6. :func:`confusable_skeleton` -- every character mapped to one representative of its confusable
   class (Unicode UTS #39 ``confusables.txt``, as shipped by ``confusable_homoglyphs``), so a
   Cyrillic ``а`` and a Latin ``a`` give the same key.

The match key is not meant to be shown; it is a comparison key.
"""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import emoji
import numpy as np
import opencc
import pyarrow as pa
import pyarrow.compute as pc
from confusable_homoglyphs import confusables

from provguard.errors import InputError

HandleStep = Callable[[str], str]
"""One normalisation step: a pure ``str -> str`` function."""


def drop_format_characters(s: str) -> str:
    """Remove every code point whose Unicode General Category is ``Cf`` (format, invisible)."""
    if s.isascii():
        return s
    return "".join(ch for ch in s if unicodedata.category(ch) != "Cf")


def nfkc_casefold(s: str) -> str:
    """Compatibility caseless form (Unicode Standard D146): NFKC(cf(NFKD(cf(NFD(s)))))."""
    if s.isascii():
        return s.casefold()
    nfd = unicodedata.normalize("NFD", s)
    nfkd = unicodedata.normalize("NFKD", nfd.casefold())
    return unicodedata.normalize("NFKC", nfkd.casefold())


def collapse_whitespace(s: str) -> str:
    """Strip surrounding whitespace and collapse inner Unicode whitespace runs to one space."""
    return " ".join(s.split())


V1_STEPS: tuple[HandleStep, ...] = (
    drop_format_characters,
    nfkc_casefold,
    collapse_whitespace,
)
"""The v1 normalisation pipeline, applied in this order."""


def drop_emoji(s: str) -> str:
    """Remove emoji (UTS #51 sequences per the ``emoji`` package) and variation selectors."""
    if s.isascii():
        return s
    out = emoji.replace_emoji(s, "")
    return "".join(ch for ch in out if not ("\ufe00" <= ch <= "\ufe0f"))


_DECORATION_CATEGORIES = frozenset(
    ["Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc"]
)


def drop_decorations(s: str) -> str:
    """Remove punctuation, symbols, separators and control characters (see module docstring)."""
    return "".join(ch for ch in s if unicodedata.category(ch) not in _DECORATION_CATEGORIES)


@lru_cache(maxsize=1)
def _t2s() -> Any:
    return opencc.OpenCC("t2s")


def to_simplified(s: str) -> str:
    """Traditional -> Simplified Chinese (OpenCC ``t2s``); other scripts pass through."""
    if s.isascii():
        return s
    out: str = _t2s().convert(s)
    return out


@lru_cache(maxsize=1)
def _skeleton_table() -> dict[int, str]:
    """Map code point -> representative of its confusable class (UTS #39 data).

    ``confusable_homoglyphs`` ships the single-character pairs of ``confusables.txt`` in both
    directions; each connected class gets one representative, preferring in order an ASCII
    member, one that NFKC leaves unchanged, a lower-case letter, then the lowest code point
    (so ``1 l I |`` -> ``l``, ``⼩`` (Kangxi radical) -> ``小``). CJK unified ideographs are
    left as they are. Multi-character prototypes are
    not used (a skeleton here keeps the length of the string).
    """
    data = confusables.confusables_data
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.get(x, x) != x:
            parent[x] = parent.get(parent[x], parent[x])
            x = parent[x]
        return x

    def rank(c: str) -> tuple[bool, bool, bool, bool, int]:
        return (
            not c.isascii(),
            unicodedata.normalize("NFKC", c) != c,
            "\u2e80" <= c <= "\u2fdf",  # CJK radicals: never the representative of a hanzi
            not c.islower(),
            ord(c),
        )

    for src, targets in data.items():
        if len(src) != 1:
            continue
        for t in targets:
            c = t["c"]
            if len(c) != 1:
                continue
            a, b = find(src), find(c)
            if a != b:
                lo, hi = (a, b) if rank(a) <= rank(b) else (b, a)
                parent[hi] = lo
    table = {ord(c): find(c) for c in parent}
    # a CJK unified ideograph is its own skeleton: folding hanzi into look-alikes (radicals,
    # other ideographs) would merge different words
    return {
        k: v
        for k, v in table.items()
        if chr(k) != v and not (0x3400 <= k <= 0x4DBF or 0x4E00 <= k <= 0x9FFF)
    }


def confusable_skeleton(s: str) -> str:
    """Map each character to its confusable-class representative (see :func:`_skeleton_table`).

    Applied after case folding, so ``"раураl"`` (Cyrillic ``р``, ``а``, ``у``) -> ``"paypal"``.
    """
    return s.translate(_skeleton_table())


MATCH_STEPS: tuple[HandleStep, ...] = (
    drop_format_characters,
    drop_emoji,
    nfkc_casefold,
    drop_decorations,
    to_simplified,
    confusable_skeleton,
)
"""The v2 match-key pipeline (module docstring), applied in this order."""


def normalize_handle(s: str, steps: Sequence[HandleStep] = V1_STEPS) -> str:
    """Normalise one handle by applying ``steps`` in order.

    Args:
        s: the handle as stored (any Unicode string; may be empty).
        steps: the pipeline; defaults to :data:`V1_STEPS`.

    Returns:
        The normalised handle; ``""`` if nothing visible remains.

    Raises:
        InputError: ``s`` is not a ``str``.
    """
    if not isinstance(s, str):
        raise InputError(f"a handle must be a str, got {type(s).__name__}")
    for step in steps:
        s = step(s)
    return s


# --- batch (whole-column) normalisation ---------------------------------------------------------
#
# Every step above is local to a string and leaves a line feed alone (it is not Cf, not an emoji,
# NFKC/case folding keep it, drop_decorations is made to keep it, OpenCC converts text line by
# line, the skeleton table does not map it). So a column without line feeds can be joined with
# "\n", each step run ONCE over the joined text with C-level primitives (numpy lookup tables
# over the UTF-32 code points, ``unicodedata.normalize``, one OpenCC call; ``drop_emoji`` per
# value only on the values that hold an emoji code point), and split again: the
# same result as the per-string steps (differential test: tests/similarity/test_sim_batch.py),
# at C speed instead of several Python calls per handle.

_SEP = "\n"


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4")


def _from_codepoints(cps: np.ndarray) -> str:
    return np.ascontiguousarray(cps, dtype="<u4").tobytes().decode("utf-32-le")


def _category_lut(categories: frozenset[str], exclude: str = "") -> np.ndarray:
    """Boolean table over all code points: General Category in ``categories`` (minus
    ``exclude``)."""
    lut = np.fromiter(
        (unicodedata.category(chr(cp)) in categories for cp in range(sys.maxunicode + 1)),
        dtype=bool,
        count=sys.maxunicode + 1,
    )
    for ch in exclude:
        lut[ord(ch)] = False
    return lut


@lru_cache(maxsize=1)
def _format_lut() -> np.ndarray:
    return _category_lut(frozenset(["Cf"]))


@lru_cache(maxsize=1)
def _decoration_lut() -> np.ndarray:
    return _category_lut(_DECORATION_CATEGORIES, exclude=_SEP)


@lru_cache(maxsize=1)
def _emoji_lut() -> np.ndarray:
    """The non-ASCII code points that occur in emoji sequences (the ASCII members ``0-9 # *``
    only start keycaps, which need a non-ASCII member too), and the variation selectors."""
    lut = np.zeros(sys.maxunicode + 1, dtype=bool)
    for seq in emoji.EMOJI_DATA:
        for c in seq:
            if not c.isascii():
                lut[ord(c)] = True
    lut[0xFE00:0xFE10] = True
    return lut


def _delete(text: str, lut: np.ndarray) -> str:
    cps = _codepoints(text)
    drop = lut[cps]
    return _from_codepoints(cps[~drop]) if drop.any() else text


_KEYCAP_BASES = np.array([ord(c) for c in "0123456789#*"], dtype="<u4")


def _batch_drop_emoji(text: str) -> str:
    """:func:`drop_emoji` of every value, tokenising only the emoji runs.

    An emoji sequence consists of emoji code points (:func:`_emoji_lut`) and at most one ASCII
    keycap base in front, so each maximal run of emoji code points (with the keycap base before
    it, if any) is replaced by ``emoji.replace_emoji`` of the run -- all runs in one call, joined
    by line feeds, which no sequence holds -- and the text between runs is kept; then variation
    selectors are deleted.
    """
    cps = _codepoints(text)
    flag = _emoji_lut()[cps]
    starts, ends = _runs(np.flatnonzero(flag))
    if not len(starts):
        return text
    before = np.maximum(starts - 1, 0)
    starts = np.where((starts > 0) & np.isin(cps[before], _KEYCAP_BASES), before, starts).tolist()
    ends_l = ends.tolist()
    runs = [text[a:b] for a, b in zip(starts, ends_l, strict=True)]
    done = emoji.replace_emoji(_SEP.join(runs), "").split(_SEP)
    if len(done) != len(runs):  # cannot happen (no sequence holds a line feed); stay exact
        values = text.split(_SEP)
        return _delete(_SEP.join(map(drop_emoji, values)), _variation_lut())
    pieces: list[str] = []
    prev = 0
    for a, b, rep in zip(starts, ends_l, done, strict=True):
        pieces.append(text[prev:a])
        pieces.append(rep)
        prev = b
    pieces.append(text[prev:])
    return _delete("".join(pieces), _variation_lut())


@lru_cache(maxsize=1)
def _variation_lut() -> np.ndarray:
    lut = np.zeros(sys.maxunicode + 1, dtype=bool)
    lut[0xFE00:0xFE10] = True
    return lut


@lru_cache(maxsize=1)
def _space_lut() -> np.ndarray:
    lut = np.fromiter(
        (chr(cp).isspace() for cp in range(sys.maxunicode + 1)),
        dtype=bool,
        count=sys.maxunicode + 1,
    )
    lut[ord(_SEP)] = False
    return lut


def _runs(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maximal runs of consecutive positions in the sorted ``idx``: (starts, ends), ends
    exclusive."""
    if not len(idx):
        return idx, idx
    brk = np.flatnonzero(np.diff(idx) != 1)
    starts = np.concatenate(([idx[0]], idx[brk + 1]))
    ends = np.concatenate((idx[brk] + 1, [idx[-1] + 1]))
    return starts, ends


def _batch_collapse(text: str) -> str:
    """:func:`collapse_whitespace` of every value: each run of whitespace becomes one space,
    and a run at the start or end of a value is deleted."""
    cps = _codepoints(text)
    ws_idx = np.flatnonzero(_space_lut()[cps])
    starts, ends = _runs(ws_idx)
    if not len(starts):
        return text
    n = len(cps)
    at_start = (starts == 0) | (cps[np.maximum(starts - 1, 0)] == ord(_SEP))
    at_end = (ends == n) | (cps[np.minimum(ends, n - 1)] == ord(_SEP))
    inner = ~(at_start | at_end)
    single_space = (ends - starts == 1) & (cps[starts] == ord(" "))
    if (inner & single_space).all():
        return text  # already collapsed
    out = cps.copy()
    keep = np.ones(n, dtype=bool)
    keep[ws_idx] = False
    keep[starts[inner]] = True
    out[starts[inner]] = ord(" ")
    return _from_codepoints(out[keep])


@lru_cache(maxsize=1)
def _skeleton_lut() -> np.ndarray:
    table = _skeleton_table()
    lut = np.arange(max(table) + 1, dtype=np.uint32)
    for k, v in table.items():
        lut[k] = ord(v)
    return lut


def _skeleton_text(text: str) -> str:
    cps = _codepoints(text).copy()
    lut = _skeleton_lut()
    low = cps < len(lut)
    cps[low] = lut[cps[low]]
    return _from_codepoints(cps)


_BATCH: dict[HandleStep, Callable[[str], str]] = {}


def _init_batch() -> dict[HandleStep, Callable[[str], str]]:
    if not _BATCH:
        _BATCH.update(
            {
                drop_format_characters: lambda t: _delete(t, _format_lut()),
                drop_emoji: _batch_drop_emoji,
                nfkc_casefold: lambda t: unicodedata.normalize(
                    "NFKC",
                    unicodedata.normalize(
                        "NFKD", unicodedata.normalize("NFD", t).casefold()
                    ).casefold(),
                ),
                collapse_whitespace: _batch_collapse,
                drop_decorations: lambda t: _delete(t, _decoration_lut()),
                to_simplified: lambda t: str(_t2s().convert(t)),
                confusable_skeleton: _skeleton_text,
            }
        )
    return _BATCH


def normalize_text(text: str, count: int, steps: Sequence[HandleStep]) -> str | None:
    """Normalise ``count`` values joined by line feeds, each step once over the whole text.

    Args:
        text: the values joined with ``"\\n"`` (no value holds a line feed).
        count: the number of values (``text.count("\\n") == count - 1``).
        steps: the pipeline.

    Returns:
        The normalised values joined with ``"\\n"``, equal to joining
        ``normalize_handle(v, steps)`` of each value; None when that cannot be done in one pass
        (a step that is not one of this module's, or a line-feed count that does not match).
    """
    batch = _init_batch()
    if count < 1 or not all(step in batch for step in steps):
        return None
    if text.count(_SEP) != count - 1:
        return None
    for step in steps:
        text = batch[step](text)
    return text if text.count(_SEP) == count - 1 else None


def normalize_many(values: Sequence[str], steps: Sequence[HandleStep] = V1_STEPS) -> list[str]:
    """Normalise N strings (no nulls) with ``steps``: the same result as
    ``[normalize_handle(v, steps) for v in values]``.

    When every step is one of this module's steps and no value holds a line feed, the values are
    joined and each step runs once over the joined text (:func:`normalize_text`); otherwise
    value by value.

    Raises:
        InputError: a value is not a ``str``.
    """
    values = list(values)
    for v in values:
        if not isinstance(v, str):
            raise InputError(f"a handle must be a str, got {type(v).__name__}")
    if not values:
        return []
    text = normalize_text(_SEP.join(values), len(values), steps)
    if text is not None:
        return text.split(_SEP)
    return [normalize_handle(v, steps) for v in values]


def normalize_handles(
    values: Sequence[str | None] | pa.Array | pa.ChunkedArray,
    steps: Sequence[HandleStep] = V1_STEPS,
) -> pa.Array:
    """Normalise a column of handles; nulls stay null.

    Each distinct value is normalised once (the column is dictionary-encoded, the dictionary is
    normalised with :func:`normalize_many`, and the result is taken back by index), so the cost
    is in the number of distinct handles, not rows.

    Args:
        values: N handles, as a Python sequence or a pyarrow string / large_string array.
        steps: the pipeline; defaults to :data:`V1_STEPS`.

    Returns:
        A ``pa.string()`` array of length N.

    Raises:
        InputError: ``values`` is not a string column.
    """
    if isinstance(values, pa.ChunkedArray):
        arr = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    elif isinstance(values, pa.Array):
        arr = values
    else:
        try:
            arr = pa.array(list(values), type=pa.string())
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise InputError(f"handles must be strings or None: {exc}") from exc
    if pa.types.is_null(arr.type):
        return pa.nulls(len(arr), type=pa.string())
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        raise InputError(f"handles must be a string column, got {arr.type}")
    encoded = arr if isinstance(arr, pa.DictionaryArray) else pc.dictionary_encode(arr)
    dictionary = encoded.dictionary.to_pylist()
    normalised = pa.array(normalize_many(dictionary, steps), type=pa.string())
    indices = encoded.indices
    if len(normalised) == 0:
        return pa.nulls(len(arr), type=pa.string())
    out = normalised.take(indices)
    assert isinstance(out, pa.Array)
    return out

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

import unicodedata
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import emoji
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


def normalize_handles(
    values: Sequence[str | None] | pa.Array | pa.ChunkedArray,
    steps: Sequence[HandleStep] = V1_STEPS,
) -> pa.Array:
    """Normalise a column of handles; nulls stay null.

    Each distinct value is normalised once (the column is dictionary-encoded, the dictionary is
    normalised, and the result is taken back by index), so the cost is in the number of distinct
    handles, not rows.

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
    normalised = pa.array([normalize_handle(v, steps) for v in dictionary], type=pa.string())
    indices = encoded.indices
    if len(normalised) == 0:
        return pa.nulls(len(arr), type=pa.string())
    out = normalised.take(indices)
    assert isinstance(out, pa.Array)
    return out

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

Later steps (emoji and decoration removal, Unicode confusables per UTS #39, Traditional ->
Simplified via OpenCC, pinyin) belong in later versions: they are new functions appended to a
new step list; :func:`normalize_handle` takes the list as a parameter.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

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

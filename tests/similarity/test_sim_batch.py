"""Whole-column handle normalisation and features equal the per-string reference (issue 6)."""

from __future__ import annotations

import emoji
import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st
from pypinyin import lazy_pinyin
from rapidfuzz.distance import Indel, Prefix

from provguard.similarity.handles import (
    MATCH_STEPS,
    V1_STEPS,
    collapse_whitespace,
    drop_emoji,
    normalize_handle,
    normalize_handles,
    normalize_many,
    normalize_text,
)
from provguard.similarity.match import handle_features, pinyin_key, pinyin_keys

_EMOJI = sorted(emoji.EMOJI_DATA)[::7]
# pieces that exercise every step: emoji (sequences and loose components), format characters,
# full-width forms, traditional hanzi, decorations, confusables, whitespace of all kinds,
# combining marks, a line feed, keycap bases
_PIECES = [
    *_EMOJI,
    "\ufe0f", "\ufe0e", "\u20e3", "\U0001f3fb", "\U0001f1e8", "\U0001f1f3", "\u200d", "\u200b",
    "\u00ad", "\ufeff", "ＺＨＡＮＧ", "１２３", "快樂的小貓", "愛", "『", "』", "★", "~", "_",
    "ღ", "а", "е", "о", "р", "ѕ", "1", "l", "I", "0", "O", " ", "\u3000", "\t", "\u2028",
    "\x1c", "\n", "e\u0301", "\u0301", "ß", "ﬁ", "①", "#", "*", "Straße", "王小明", "coffee",
    "lover", "呀", "酱", "\U0001d400", "⼩",
]  # fmt: skip

handles = st.lists(st.sampled_from(_PIECES), max_size=6).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(handles, min_size=1, max_size=25))
def test_batch_normalisation_equals_per_string(values: list[str]) -> None:
    for steps in (V1_STEPS, MATCH_STEPS, MATCH_STEPS[:-1], (drop_emoji,), (collapse_whitespace,)):
        assert normalize_many(values, steps) == [normalize_handle(v, steps) for v in values]


def test_batch_path_is_taken_and_falls_back_on_line_feeds() -> None:
    values = ["ＡＢ 🌸", "快樂", "a\u200db"]
    assert normalize_text("\n".join(values), 3, V1_STEPS) == "ab 🌸\n快樂\nab"
    assert normalize_text("\n".join(values), 3, MATCH_STEPS) == "ab\n快乐\nab"
    assert normalize_text("a\nb", 3, V1_STEPS) is None  # count mismatch
    assert normalize_text("a", 1, [str.upper]) is None  # a foreign step
    # a value holding a line feed: the per-string path, same result
    assert normalize_many(["a\nb", "Ｃ"], V1_STEPS) == ["a b", "c"]
    assert normalize_many(["a\nb"], [str.upper]) == ["A\nB"]


def test_normalize_handles_unchanged_api() -> None:
    out = normalize_handles(["ＡＢ", None, "x\u200dy"], MATCH_STEPS)
    assert out.to_pylist() == ["ab", None, "xy"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["王小明", "小猫", "行长", "银行", "abc", "ღ", "1", "重庆"])))
def test_batch_pinyin_equals_per_key(parts: list[str]) -> None:
    key = "".join(parts)
    ref = "".join(lazy_pinyin(key)).casefold()
    ref = "".join(ch for ch in ref if ch.isascii() and ch.isalnum())
    assert pinyin_key(key) == ref
    assert pinyin_keys([key, "小猫1", key]) == [ref, "xiaomao1", ref]


def _reference(a: str | None, b: str | None) -> dict[str, object]:
    """Per-pair features computed the slow, obvious way."""
    ka = normalize_handle(a, MATCH_STEPS) if a is not None else ""
    kb = normalize_handle(b, MATCH_STEPS) if b is not None else ""
    valid = bool(ka) and bool(kb)
    v1a = normalize_handle(a) if a is not None else None
    v1b = normalize_handle(b) if b is not None else None
    han = [any("\u4e00" <= c <= "\u9fff" for c in k) for k in (ka, kb)]
    cross = valid and ka != kb and han[0] != han[1]
    short, long_ = sorted((ka, kb), key=len)
    return {
        "valid": valid,
        "exact": valid and a == b,
        "v1_equal": valid and v1a == v1b,
        "key_equal": valid and ka == kb,
        "pinyin": cross and pinyin_key(ka) == pinyin_key(kb) != "",
        "similarity": Indel.normalized_similarity(ka, kb) if valid else 0.0,
        "prefix": Prefix.similarity(ka, kb),
        "substring": valid and short in long_,
        "len_app": len(ka),
        "len_provider": len(kb),
    }


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.none() | handles, st.none() | handles), min_size=1, max_size=20))
def test_features_equal_per_pair_reference(pairs: list[tuple[str | None, str | None]]) -> None:
    a = [p[0] for p in pairs]
    b = [p[1] for p in pairs]
    f = handle_features(a, b)
    for i, (x, y) in enumerate(pairs):
        ref = _reference(x, y)
        for name, want in ref.items():
            got = getattr(f, name)[i]
            if name == "similarity":
                assert abs(float(got) - float(want)) < 1e-6, (x, y, name)  # type: ignore[arg-type]
            else:
                assert got == want, (x, y, name, got, want)


def test_features_accept_arrow_columns() -> None:
    a = pa.chunked_array([pa.array(["小猫呀", None]), pa.array(["x"], pa.string())])
    b = pa.array(["小猫", "y", None], pa.large_string())
    f = handle_features(a, b)
    assert f.valid.tolist() == [True, False, False]
    assert np.array_equal(f.len_app, [3, 0, 1])

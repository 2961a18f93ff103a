from __future__ import annotations

import pyarrow as pa
import pytest

from provguard.errors import InputError
from provguard.similarity.handles import (
    V1_STEPS,
    collapse_whitespace,
    drop_format_characters,
    nfkc_casefold,
    normalize_handle,
    normalize_handles,
)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("ＺｈａｎｇＷｅｉ", "zhangwei"),  # full-width Latin letters
        ("Zhang\u200dWei", "zhangwei"),  # zero-width joiner
        ("\u200bzhang\u200c wei\ufeff", "ZHANG WEI"),  # ZWSP, ZWNJ, BOM
        ("  Zhang \t\u3000 Wei  ", "zhang wei"),  # surrounding / ideographic spaces
        ("Straße", "STRASSE"),  # full case folding, not lower()
        ("ﬁsh①", "fish1"),  # ligature, circled digit (NFKC)
        ("王小明\u200d", "王小明"),
        ("ｗａｎｇ１２３", "wang123"),  # full-width digits
        ("e\u200d\u0301", "\u00e9"),  # ZWJ between base and combining mark
    ],
)
def test_equal_after_normalisation(a: str, b: str) -> None:
    assert a != b
    assert normalize_handle(a) == normalize_handle(b)


def test_different_handles_stay_different() -> None:
    assert normalize_handle("王小明") != normalize_handle("汪小明")
    assert normalize_handle("zhang wei") != normalize_handle("zhangwei")


def test_exact_values() -> None:
    assert normalize_handle("  ＺＨＡＮＧ\u200d  Wei\u3000 ") == "zhang wei"
    assert normalize_handle("\u200b\u200d \u3000") == ""
    assert normalize_handle("") == ""


def test_steps_are_small_functions_in_order() -> None:
    assert (drop_format_characters, nfkc_casefold, collapse_whitespace) == V1_STEPS
    assert drop_format_characters("a\u200db\u00adc") == "abc"
    assert nfkc_casefold("ＡＢ") == "ab"
    assert collapse_whitespace(" a  b ") == "a b"
    # a custom pipeline is honoured
    assert normalize_handle(" A ", steps=[collapse_whitespace]) == "A"


def test_non_string_rejected() -> None:
    with pytest.raises(InputError):
        normalize_handle(3)  # type: ignore[arg-type]


def test_vectorised_matches_scalar_and_keeps_nulls() -> None:
    values = ["ＡＢ", None, "ab", "Zhang\u200dWei", "ab"]
    out = normalize_handles(values)
    assert out.type == pa.string()
    assert out.to_pylist() == ["ab", None, "ab", "zhangwei", "ab"]
    chunked = pa.chunked_array([pa.array(values[:2]), pa.array(values[2:])])
    assert normalize_handles(chunked).to_pylist() == out.to_pylist()
    assert normalize_handles(pa.array(values, type=pa.large_string())).to_pylist() == (
        out.to_pylist()
    )
    assert normalize_handles([]).to_pylist() == []
    assert normalize_handles([None, None]).to_pylist() == [None, None]


def test_vectorised_rejects_non_strings() -> None:
    with pytest.raises(InputError):
        normalize_handles(pa.array([1, 2]))

"""Real-name detection (the campaign's exemption), including compound surnames (issue 6)."""

from __future__ import annotations

import pytest

from provguard.errors import InputError
from provguard.similarity.names import (
    COMPOUND_SURNAMES,
    MIN_LLR,
    chinese_name_score,
    detect_real_name,
)


@pytest.mark.parametrize(
    "name", ["欧阳娜娜", "诸葛亮", "司马懿", "司马光", "上官婉儿", "欧阳修", "慕容复", "公孙胜"]
)
def test_compound_surname_names_are_names(name: str) -> None:
    assert name[:2] in COMPOUND_SURNAMES
    v = detect_real_name(name)
    assert v.is_name and v.reason == "chinese_name"
    assert v.score is not None and v.score >= MIN_LLR


def test_four_hanzi_need_a_compound_surname() -> None:
    # 4 hanzi without a compound surname: not applicable (no single-surname reading of 3 given
    # characters); with one, scored by the compound reading
    assert chinese_name_score("王小明明") is None
    assert detect_real_name("王小明明").reason == "not_a_name"
    assert chinese_name_score("欧阳娜娜") is not None
    # the compound reading beats the single-character reading of the same handle
    assert chinese_name_score("欧阳修") > chinese_name_score("欧修")  # type: ignore[operator]


def test_compound_surname_alone_or_with_a_phrase_is_not_a_name() -> None:
    assert not detect_real_name("欧阳").is_name
    assert not detect_real_name("东方不败").is_name  # a novel's character nickname: LLR < 4
    assert not detect_real_name("快乐的小猫").is_name


def test_single_surname_names_unchanged() -> None:
    for name in ("王小明", "张伟", "李娜"):
        assert detect_real_name(name).is_name


def test_verified_and_latin_names() -> None:
    assert detect_real_name("欧阳娜娜", "歐陽娜娜").reason == "verified_name"  # t2s
    assert detect_real_name("ｅｍｍａ", "emma").is_name  # NFKC
    assert not detect_real_name("欧阳娜娜🌸", "欧阳娜娜").is_name  # decorated
    assert detect_real_name("Emma Walker").reason == "latin_name"
    assert not detect_real_name("SunnyFox").is_name
    assert detect_real_name(None) == detect_real_name("\u200b")
    with pytest.raises(InputError):
        detect_real_name(3)  # type: ignore[arg-type]

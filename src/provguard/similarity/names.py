"""Real-name detection: is a handle the data subject's personal name? (the campaign's exemption)

Duoshan's 2019 notice let a handle that is the user's real name stay. Two tests, in order:

1. **Verified name** -- when the platform knows the subject's legal name, the handle is a real
   name iff it *is* the name, up to invisible characters, Unicode compatibility forms and script:
   v1 normalisation (format characters, NFKC, whitespace; no case folding) then OpenCC ``t2s``
   on both. A decorated or emoji-adorned name is not the name. Reason ``verified_name``.
2. **Name-likeness** (no verified name) -- a statistical test on the handle alone, in the same
   strict form (decorations and emoji make it "not a name"):

   - *Chinese*: 2-3 hanzi, the first a surname and the rest given-name characters; or 3-4 hanzi
     starting with a compound surname (:data:`COMPOUND_SURNAMES`, the two-character surnames of
     the *Hundred Family Surnames* 百家姓: ``欧阳``, ``司马``, ``诸葛``, ``上官``, ...) followed
     by 1-2 given-name characters. Statistics come from the person-name entries (POS tag ``nr``)
     of jieba's dictionary (built from the People's Daily corpus; 65k names of 2-4 characters):
     a single-character surname is a character that starts at least ``MIN_SURNAME_COUNT`` such
     names; the score is the log-likelihood ratio ``log P(s | surname) - log P(s) + sum_i
     log P(ci | given) - log P(ci)`` against the character frequencies of the whole dictionary
     (add-one smoothing; for a compound surname ``s``, ``P(s | surname)`` counts the names it
     starts and ``P(s)`` is the product of its two characters' frequencies). When a handle
     starts with a compound surname, the better of the two readings (compound, or first
     character + given name) is its score. Score >= ``min_llr``: reason ``chinese_name``.
   - *Latin*: two or three alphabetic words, the first a first name of the US Census 1990 lists
     and the last a surname of the US Census 1990 surname list (both shipped by the ``names``
     package). Reason ``latin_name``.

``min_llr`` is calibrated by ``bench/scan_labelled.py`` (docs/scanner.md).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from provguard.errors import InputError
from provguard.similarity.handles import (
    collapse_whitespace,
    drop_format_characters,
    normalize_handle,
    to_simplified,
)

MIN_SURNAME_COUNT = 20
"""A character is a surname if it starts at least this many ``nr`` names in jieba's dictionary."""

MIN_LLR = 4.0
"""Default Chinese name-likeness threshold (log-likelihood ratio, nats); calibrated."""

COMPOUND_SURNAMES = frozenset(
    [
        "欧阳", "司马", "诸葛", "上官", "东方", "皇甫", "慕容", "令狐", "司徒", "夏侯",
        "尉迟", "公孙", "长孙", "宇文", "轩辕", "端木", "独孤", "南宫", "西门", "百里",
        "呼延", "申屠", "太史", "澹台", "闻人", "钟离", "赫连", "万俟", "濮阳", "单于",
        "司空", "公冶", "宗政", "淳于", "仲孙", "东郭", "南门", "羊舌", "微生", "梁丘",
        "左丘", "东门", "第五", "拓跋", "纳兰", "完颜", "司寇", "亓官", "巫马", "公西",
        "漆雕", "乐正", "壤驷", "公良", "谷梁", "宰父", "夹谷", "段干", "归海", "公羊",
    ]
)  # fmt: skip
"""Two-character (compound) surnames, from the *Hundred Family Surnames* (百家姓) and the
common Xianbei/Manchu ones (拓跋, 宇文, 纳兰, 完颜)."""

_ALL_HANZI = re.compile(r"^[\u4e00-\u9fff]{2,4}$")
_LATIN_WORDS = re.compile(r"^[A-Za-z][A-Za-z'\-]*(?: [A-Za-z][A-Za-z'\-]*){1,2}$")


@dataclass(frozen=True)
class NameVerdict:
    """``is_name``; ``reason`` one of ``verified_name``, ``chinese_name``, ``latin_name``,
    ``not_a_name``; ``score`` the Chinese log-likelihood ratio when computed (else None)."""

    is_name: bool
    reason: str
    score: float | None = None


@dataclass(frozen=True)
class _ChineseStats:
    surname: dict[str, float]  # log P(c | surname position); compound surnames included
    given: dict[str, float]  # log P(c | given-name position)
    background: dict[str, float]  # log P(c) over the dictionary, weighted by word frequency
    given_floor: float
    background_floor: float


@lru_cache(maxsize=1)
def _chinese_stats() -> _ChineseStats:
    first: Counter[str] = Counter()
    compound: Counter[str] = Counter()
    given: Counter[str] = Counter()
    background: Counter[str] = Counter()
    text = resources.files("jieba").joinpath("dict.txt").read_text(encoding="utf-8")
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        word, freq, tag = parts[0], int(parts[1]), parts[2]
        for ch in word:
            background[ch] += freq
        if tag != "nr" or not 2 <= len(word) <= 4:
            continue
        if len(word) >= 3 and word[:2] in COMPOUND_SURNAMES:
            compound[word[:2]] += 1
            rest = word[2:]
        elif len(word) <= 3:
            first[word[0]] += 1
            rest = word[1:]
        else:
            continue
        for ch in rest:
            given[ch] += 1
    surnames: dict[str, int] = {c: n for c, n in first.items() if n >= MIN_SURNAME_COUNT}
    for c in COMPOUND_SURNAMES:
        surnames[c] = compound[c] + 1  # add-one: every listed compound is a surname
    s_total = sum(surnames.values())
    g_total = sum(given.values()) + len(given) + 1
    b_total = sum(background.values()) + len(background) + 1
    return _ChineseStats(
        surname={c: math.log(n / s_total) for c, n in surnames.items()},
        given={c: math.log((n + 1) / g_total) for c, n in given.items()},
        background={c: math.log((n + 1) / b_total) for c, n in background.items()},
        given_floor=math.log(1 / g_total),
        background_floor=math.log(1 / b_total),
    )


@lru_cache(maxsize=1)
def _latin_lists() -> tuple[frozenset[str], frozenset[str]]:
    pkg = resources.files("names")

    def read(name: str) -> set[str]:
        text = pkg.joinpath(name).read_text(encoding="ascii")
        return {line.split()[0].casefold() for line in text.splitlines() if line.strip()}

    first = read("dist.male.first") | read("dist.female.first")
    return frozenset(first), frozenset(read("dist.all.last"))


def nfkc(s: str) -> str:
    """Unicode NFKC (no case folding)."""
    return unicodedata.normalize("NFKC", s)


_STRICT_STEPS = (drop_format_characters, nfkc, collapse_whitespace, to_simplified)


def _strict(s: str) -> str:
    return normalize_handle(s, _STRICT_STEPS)


def _reading_score(st: _ChineseStats, surname: str, given: str) -> float | None:
    sur = st.surname.get(surname)
    if sur is None or not 1 <= len(given) <= 2:
        return None
    score = sur - sum(st.background.get(ch, st.background_floor) for ch in surname)
    for ch in given:
        score += st.given.get(ch, st.given_floor) - st.background.get(ch, st.background_floor)
    return score


def chinese_name_score(key: str) -> float | None:
    """Log-likelihood ratio that a 2-4-hanzi string is a personal name; None if not applicable
    (other length or script, or no surname reading: a 2-3-hanzi string whose first character
    is not a surname, a 4-hanzi string that does not start with a compound surname)."""
    if not _ALL_HANZI.match(key):
        return None
    st = _chinese_stats()
    scores = [_reading_score(st, key[0], key[1:])]
    if len(key) >= 3 and key[:2] in COMPOUND_SURNAMES:
        scores.append(_reading_score(st, key[:2], key[2:]))
    known = [s for s in scores if s is not None]
    return max(known) if known else None


def looks_like_latin_name(handle: str) -> bool:
    """Two or three alphabetic words: a census first name ... a census surname."""
    text = _strict(handle)
    if not _LATIN_WORDS.match(text):
        return False
    words = text.casefold().split()
    first, last = _latin_lists()
    return words[0] in first and words[-1] in last


def detect_real_name(
    handle: str | None, real_name: str | None = None, *, min_llr: float = MIN_LLR
) -> NameVerdict:
    """Is ``handle`` a personal name (the subject's, when ``real_name`` is known)?

    Args:
        handle: the app handle (None or blank: never a name).
        real_name: the subject's verified legal name, if the platform holds it.
        min_llr: Chinese name-likeness threshold (nats).

    Returns:
        :class:`NameVerdict` (see module docstring for the reasons).

    Raises:
        InputError: ``handle`` or ``real_name`` is not a string or None.
    """
    for v in (handle, real_name):
        if v is not None and not isinstance(v, str):
            raise InputError("handle and real_name must be strings or None")
    if handle is None:
        return NameVerdict(False, "not_a_name")
    key = _strict(handle)
    if not key:
        return NameVerdict(False, "not_a_name")
    if real_name is not None:
        same = key == _strict(real_name)
        return NameVerdict(same, "verified_name" if same else "not_a_name")
    score = chinese_name_score(key)
    if score is not None and score >= min_llr:
        return NameVerdict(True, "chinese_name", score)
    if looks_like_latin_name(handle):
        return NameVerdict(True, "latin_name", score)
    return NameVerdict(False, "not_a_name", score)

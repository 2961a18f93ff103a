"""Handles (nicknames): the provider's copy and the realistic edits users make to it.

A provider nickname is, per subject (probabilities in :class:`HandleStyle`): the subject's real
name; a hanzi handle (optional prefix + noun, e.g. ``快乐的小猫``); a Latin handle (``SunnyFox``,
``coffee_lover88``, ``emma.w``); or a mixed one (``小猫123``, ``Leo的咖啡``).

An **edit** turns a handle into a near-copy; :data:`EDITS` lists them. ``traditional`` uses
OpenCC (``s2t``, simplified → traditional Chinese). An edit that would not change the handle
(``fullwidth`` of a pure-hanzi handle, ``traditional`` of a Latin one, ``case`` without letters) is
*not applicable*; :func:`apply_edit` returns None and :func:`edit_handle` falls back to
another edit, so the recorded ground-truth edit is always the one really applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

import numpy as np
import opencc

__all__ = [
    "EDITS",
    "EMOJI",
    "HandleStyle",
    "apply_edit",
    "draw_edit",
    "edit_handle",
    "fullwidth",
    "nickname",
    "to_traditional",
]

EDITS: Final = ("exact", "fullwidth", "emoji", "traditional", "suffix", "decoration", "case")
"""Handle edits, as recorded in ``app_profiles.handle_edit`` (besides ``user_input``)."""

EMOJI: Final = ("🌸", "✨", "🐱", "🍀", "🌙", "🔥", "💫", "🍓", "🎵", "🌈", "😊", "🐼")
_DECORATIONS: Final = ("『{}』", "★{}★", "〖{}〗", "~{}~", "ღ{}ღ", "✿{}", "【{}】", "°{}°")
_SUFFIXES: Final = ("_{d2}", "{year}", "呀", "酱", "_official", "~", ".", "{d1}{d1}")

_HANZI_PREFIX: Final = (
    "快乐的", "小", "爱吃", "追风的", "安静的", "温柔", "阿", "大", "迷路的", "会飞的", "一只",
    "无敌", "听风", "夜里的", "可爱的",
)  # fmt: skip
_HANZI_NOUN: Final = (
    "小猫", "鱼", "少年", "月亮", "星星", "兔子", "西瓜", "阳光", "柠檬", "旅人", "云朵", "橘子",
    "熊猫", "咖啡", "向日葵", "海风", "奶茶", "书生", "雨天", "彩虹", "飞鸟", "红豆", "长颈鹿",
    "梦想家", "风铃", "小鹿", "时光", "蓝天",
)  # fmt: skip
_LATIN_ADJ: Final = (
    "Sunny", "Lazy", "Happy", "Silent", "Crazy", "Little", "Lucky", "Blue", "Wild", "Sweet",
    "Cool", "Dreamy", "Tiny", "Brave", "Golden",
)  # fmt: skip
_LATIN_NOUN: Final = (
    "Fox", "Cat", "Panda", "Tiger", "Cloud", "Star", "Moon", "River", "Coffee", "Lemon", "Rider",
    "Dreamer", "Wolf", "Bear", "Pixel", "Ocean", "Rabbit", "Mango", "Ninja", "Traveler",
)  # fmt: skip


@dataclass(frozen=True)
class HandleStyle:
    """Probabilities of provider nickname kinds.

    ``real_name`` applies to everyone first; the remaining mass is split by script of the real
    name: for Chinese-named subjects ``zh_*`` (hanzi / latin / mixed), for Latin-named ``en_*``.
    """

    real_name: float = 0.12
    zh_hanzi: float = 0.70
    zh_latin: float = 0.20
    zh_mixed: float = 0.10
    en_latin: float = 0.80
    en_hanzi: float = 0.10
    en_mixed: float = 0.10


@lru_cache(maxsize=1)
def _s2t() -> Any:
    return opencc.OpenCC("s2t")


def to_traditional(text: str) -> str:
    """Simplified → traditional Chinese with OpenCC (``s2t``); other characters unchanged."""
    out: str = _s2t().convert(text)
    return out


def fullwidth(text: str) -> str:
    """ASCII ``!``..``~`` → full-width forms (U+FF01..U+FF5E); space → ideographic space."""
    chars = []
    for ch in text:
        code = ord(ch)
        if 0x21 <= code <= 0x7E:
            chars.append(chr(code + 0xFEE0))
        elif ch == " ":
            chars.append("\u3000")
        else:
            chars.append(ch)
    return "".join(chars)


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(0, len(options)))]


def _hanzi(rng: np.random.Generator) -> str:
    prefix = _pick(rng, _HANZI_PREFIX) if rng.random() < 0.5 else ""
    return prefix + _pick(rng, _HANZI_NOUN)


def _latin(rng: np.random.Generator, real_name: str) -> str:
    kind = int(rng.integers(0, 3))
    if kind == 0:
        return _pick(rng, _LATIN_ADJ) + _pick(rng, _LATIN_NOUN)
    if kind == 1:
        word = _pick(rng, _LATIN_NOUN).lower()
        return f"{word}_lover{int(rng.integers(1, 100))}"
    parts = real_name.split()
    if len(parts) == 2 and parts[0].isascii():
        return f"{parts[0].lower()}.{parts[1][0].lower()}{int(rng.integers(0, 100)):02d}"
    return f"{_pick(rng, _LATIN_NOUN).lower()}{int(rng.integers(1990, 2006))}"


def _mixed(rng: np.random.Generator) -> str:
    if rng.random() < 0.5:
        return _pick(rng, _HANZI_NOUN) + str(int(rng.integers(1, 1000)))
    return _pick(rng, _LATIN_NOUN) + "的" + _pick(rng, _HANZI_NOUN)


def nickname(
    rng: np.random.Generator,
    real_name: str,
    chinese: bool,
    style: HandleStyle,
    *,
    real_name_prob: float | None = None,
) -> str:
    """Draw one nickname for a subject whose legal name is ``real_name``.

    ``real_name_prob`` overrides ``style.real_name`` (user-typed handles use a different rate).
    """
    p_real = style.real_name if real_name_prob is None else real_name_prob
    if rng.random() < p_real:
        return real_name
    u = rng.random()
    if chinese:
        if u < style.zh_hanzi:
            return _hanzi(rng)
        if u < style.zh_hanzi + style.zh_latin:
            return _latin(rng, real_name)
        return _mixed(rng)
    if u < style.en_latin:
        return _latin(rng, real_name)
    if u < style.en_latin + style.en_hanzi:
        return _hanzi(rng)
    return _mixed(rng)


def apply_edit(handle: str, edit: str, rng: np.random.Generator) -> str | None:
    """Apply ``edit`` (one of :data:`EDITS`) to ``handle``; None when it would change nothing.

    Raises:
        ValueError: unknown edit.
    """
    if edit == "exact":
        return handle
    if edit == "fullwidth":
        out = fullwidth(handle)
    elif edit == "traditional":
        out = to_traditional(handle)
    elif edit == "case":
        out = handle.lower() if handle != handle.lower() else handle.upper()
    elif edit == "emoji":
        emo = _pick(rng, EMOJI)
        if rng.random() < 0.3:
            emo += _pick(rng, EMOJI)
        out = handle + emo if rng.random() < 0.7 else emo + handle
    elif edit == "suffix":
        pattern = _pick(rng, _SUFFIXES)
        out = handle + pattern.format(
            d2=f"{int(rng.integers(0, 100)):02d}",
            d1=int(rng.integers(0, 10)),
            year=int(rng.integers(1990, 2006)),
        )
    elif edit == "decoration":
        out = _pick(rng, _DECORATIONS).format(handle)
    else:
        raise ValueError(f"unknown handle edit {edit!r}")
    return out if out != handle else None


def draw_edit(rng: np.random.Generator, probs: Mapping[str, float]) -> str:
    """Draw an edit name from ``probs`` (edit → probability; must sum to 1 within 1e-9)."""
    names = list(probs)
    p = np.array([probs[k] for k in names], dtype=np.float64)
    if abs(p.sum() - 1.0) > 1e-9:
        raise ValueError(f"edit probabilities sum to {p.sum()}, not 1")
    return names[int(rng.choice(len(names), p=p))]


_FALLBACK: Final[dict[str, tuple[str, ...]]] = {
    "traditional": ("fullwidth",),
    "fullwidth": ("traditional",),
    "case": ("fullwidth", "traditional"),
}


def edit_handle(
    handle: str, rng: np.random.Generator, probs: Mapping[str, float]
) -> tuple[str, str]:
    """Draw an edit from ``probs`` and apply it.

    An inapplicable edit falls back to its script counterpart (``traditional`` ↔ ``fullwidth``;
    ``case`` → ``fullwidth`` → ``traditional``), then to ``emoji`` (always applicable).

    Returns:
        ``(edited handle, edit actually applied)``.
    """
    edit = draw_edit(rng, probs)
    for candidate in (edit, *_FALLBACK.get(edit, ()), "emoji"):
        out = apply_edit(handle, candidate, rng)
        if out is not None:
            return out, candidate
    raise AssertionError("unreachable: the emoji edit always changes a handle")

"""Interning origins to bits."""

from __future__ import annotations

from collections.abc import Iterable

from provguard.errors import InputError

UNKNOWN = "unknown"
MAX_ORIGINS = 64  # a label must fit an unsigned 64-bit column (DuckDB UBIGINT)

_BUILTIN = (UNKNOWN, "user_input", "wechat", "qq", "apple", "google", "douyin", "duoshan")

KNOWN_ORIGINS: frozenset[str] = frozenset(_BUILTIN)
"""The origins policies and requests may name; a misspelt origin is an error, never a silent
non-match (a rule on ``wechatt`` would quietly stop covering WeChat data)."""


class OriginRegistry:
    """A stable mapping origin name <-> bit position.

    Bit ``i`` of a mask means origin ``names[i]``. ``unknown`` is always bit 0. Names are appended,
    never renumbered, so masks written to a store stay readable; persist :attr:`names` beside them.

    Raises :class:`InputError` when more than 64 origins are interned.
    """

    def __init__(self, names: Iterable[str] = _BUILTIN) -> None:
        self._names: list[str] = []
        self._bits: dict[str, int] = {}
        for name in names:
            self.intern(name)
        if not self._names or self._names[0] != UNKNOWN:
            raise InputError("origin registry must start with 'unknown' at bit 0")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._names)

    def intern(self, name: str) -> int:
        """Bit position of ``name``, interning it if new."""
        bit = self._bits.get(name)
        if bit is not None:
            return bit
        if len(self._names) >= MAX_ORIGINS:
            raise InputError(f"too many origins (max {MAX_ORIGINS}); cannot intern '{name}'")
        bit = len(self._names)
        self._names.append(name)
        self._bits[name] = bit
        return bit

    def bit(self, name: str) -> int:
        """Bit position of a known origin; raises :class:`InputError` for an unknown name."""
        try:
            return self._bits[name]
        except KeyError:
            raise InputError(f"unknown origin '{name}'; known: {', '.join(self._names)}") from None

    def mask(self, names: Iterable[str]) -> int:
        """The bitmask (an int in [0, 2**64)) of a set of origin names (interning new ones)."""
        m = 0
        for name in names:
            m |= 1 << self.intern(name)
        return m

    def names_of(self, mask: int) -> frozenset[str]:
        """The origin names set in ``mask``; raises :class:`InputError` on a bit with no name."""
        out = set()
        m = mask
        while m:
            low = m & -m
            i = low.bit_length() - 1
            if i >= len(self._names):
                raise InputError(f"label bit {i} has no origin in this registry")
            out.add(self._names[i])
            m ^= low
        return frozenset(out)


def default_registry() -> OriginRegistry:
    """A fresh registry holding the built-in origins in their fixed order."""
    return OriginRegistry()

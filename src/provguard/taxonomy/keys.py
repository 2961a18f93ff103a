"""Dotted hierarchical keys and the taxonomy that knows which keys exist."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from provguard.errors import TaxonomyError


def covers(parent: str, child: str) -> bool:
    """True when ``child`` equals ``parent`` or lies below it (``a.b`` covers ``a.b.c``,
    not ``a.bc``)."""
    return child == parent or child.startswith(parent + ".")


def ancestors(key: str) -> Iterator[str]:
    """``a.b.c`` -> ``a.b.c``, ``a.b``, ``a`` (the key itself first)."""
    parts = key.split(".")
    for i in range(len(parts), 0, -1):
        yield ".".join(parts[:i])


@dataclass(frozen=True)
class Taxonomy:
    """A named set of dotted keys, closed under prefixes.

    Raises :class:`TaxonomyError` when built from a key whose parent is not listed, so that a typo
    in an extension cannot silently create a new root.
    """

    name: str
    keys: frozenset[str]
    descriptions: dict[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def from_entries(cls, name: str, entries: Iterable[tuple[str, str]]) -> Taxonomy:
        keys: set[str] = set()
        descriptions: dict[str, str] = {}
        for key, description in entries:
            if not key or any(not part for part in key.split(".")):
                raise TaxonomyError(f"{name}: malformed key '{key}'")
            parent = key.rpartition(".")[0]
            if parent and parent not in keys:
                raise TaxonomyError(f"{name}: key '{key}' listed before its parent '{parent}'")
            keys.add(key)
            descriptions[key] = description
        return cls(name, frozenset(keys), descriptions)

    def __contains__(self, key: object) -> bool:
        return key in self.keys

    def check(self, key: str) -> str:
        """Return ``key`` if known; else raise :class:`TaxonomyError` naming nearby keys."""
        if key in self.keys:
            return key
        parent = key.rpartition(".")[0]
        siblings = sorted(k for k in self.keys if k.rpartition(".")[0] == parent)
        hint = f"; known keys here: {', '.join(siblings)}" if siblings else ""
        raise TaxonomyError(f"unknown {self.name} '{key}'{hint}")

    def descendants(self, key: str) -> frozenset[str]:
        """Every known key covered by ``key`` (itself included)."""
        return frozenset(k for k in self.keys if covers(key, k))

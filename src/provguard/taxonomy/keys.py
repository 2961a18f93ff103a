"""Dotted hierarchical keys and the taxonomy that knows which keys exist."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from provguard.errors import TaxonomyError


def covers(parent: str, child: str) -> bool:
    """True when ``child`` equals ``parent`` or lies below it (``a.b`` covers ``a.b.c``,
    not ``a.bc``)."""
    return child == parent or child.startswith(parent + ".")


def related(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` lie on one branch: equal, ``a`` below ``b`` or ``b`` below ``a``
    (``social`` and ``social.friend_recommendation`` are related; ``social.messaging`` and
    ``social.friend_recommendation`` are not). This is how a *prohibition* on a key reaches
    requests for its ancestors too (Byun & Li, VLDB Journal 17(4), 2008; see
    :func:`provguard.decide.reference.key_matches`)."""
    return covers(a, b) or covers(b, a)


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
        """Build from ``(key, description)`` pairs, each listed after its parent."""
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

    def extend(self, entries: Iterable[tuple[str, str]]) -> Taxonomy:
        """A new taxonomy with ``entries`` (``(key, description)``) added below existing keys.

        Entries may come in any order as long as every parent is either already known or another
        entry. Raises :class:`TaxonomyError` for a malformed key, a key that already exists
        (built in or listed twice) or a key whose parent is neither known nor listed.
        ``self`` is not changed.
        """
        pending: dict[str, str] = {}
        for key, description in entries:
            if not key or any(not part for part in key.split(".")):
                raise TaxonomyError(f"{self.name}: malformed key '{key}'")
            if key in self.keys or key in pending:
                raise TaxonomyError(f"{self.name}: key '{key}' already exists")
            pending[key] = description
        for key in pending:
            parent = key.rpartition(".")[0]
            if not parent or (parent not in self.keys and parent not in pending):
                raise TaxonomyError(
                    f"{self.name}: key '{key}' has no known parent"
                    + (f" ('{parent}' is unknown)" if parent else " (new roots are not allowed)")
                )
        descriptions = dict(self.descriptions)
        descriptions.update(pending)
        return Taxonomy(self.name, self.keys | frozenset(pending), descriptions)

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

"""Provenance labels and their propagation."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from provguard.errors import InputError
from provguard.provenance.origins import OriginRegistry


@dataclass(frozen=True)
class ProvenanceLabel:
    """The origins (as a bitmask of an :class:`OriginRegistry`) and grants a value depends on.

    An empty label (mask 0) means "no recorded origin"; loaders give such values the ``unknown``
    origin explicitly instead, so that policies can decide what unknown data gets.
    """

    mask: int = 0
    grants: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls, registry: OriginRegistry, origins: Iterable[str], grants: Iterable[str] = ()
    ) -> ProvenanceLabel:
        return cls(registry.mask(origins), frozenset(g for g in grants if g))

    def origins(self, registry: OriginRegistry) -> frozenset[str]:
        return registry.names_of(self.mask)

    def __or__(self, other: ProvenanceLabel) -> ProvenanceLabel:
        return ProvenanceLabel(self.mask | other.mask, self.grants | other.grants)


def union(labels: Iterable[ProvenanceLabel]) -> ProvenanceLabel:
    """The label of a value derived from values with ``labels``: the union of all of them."""
    mask = 0
    grants: set[str] = set()
    for label in labels:
        mask |= label.mask
        grants |= label.grants
    return ProvenanceLabel(mask, frozenset(grants))


@dataclass(frozen=True)
class Declassification:
    """The record of an explicit removal of an origin from a label; goes to the audit log."""

    origin: str
    actor: str
    reason: str
    at: datetime
    before: int
    after: int


def declassify(
    label: ProvenanceLabel,
    registry: OriginRegistry,
    origin: str,
    *,
    actor: str,
    reason: str,
    at: datetime,
) -> tuple[ProvenanceLabel, Declassification]:
    """Remove ``origin`` from ``label``; returns the new label and the record to audit.

    Raises :class:`InputError` if actor or reason is empty (a declassification must say who and why)
    or if the label does not carry the origin.
    """
    if not actor.strip() or not reason.strip():
        raise InputError("declassification needs an actor and a reason")
    bit = 1 << registry.bit(origin)
    if not label.mask & bit:
        raise InputError(f"label does not carry origin '{origin}'")
    new = ProvenanceLabel(label.mask & ~bit, label.grants)
    return new, Declassification(origin, actor, reason, at, label.mask, new.mask)

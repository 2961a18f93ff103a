"""Hierarchical vocabularies: data categories, purposes (data uses) and actions.

Keys are dotted paths; a key covers itself and every key below it (``user.name`` covers
``user.name.nickname``). Two keys are *related* when one covers the other: a ``deny`` rule's
purposes and data categories match every related request key (a prohibition propagates down and
up the hierarchy), a ``permit`` rule's only the keys they cover (Byun & Li, "Purpose based access
control for privacy protection in relational database systems", VLDB Journal 17(4), 2008;
:func:`provguard.decide.reference.key_matches`).

Data-category keys follow the fideslang taxonomy where it has one
(``user``, ``user.name``, ``user.unique_id``, ``user.contact``); the rest are provguard extensions
listed in :mod:`provguard.taxonomy.builtin`. A policy set may add keys below existing ones
(:mod:`provguard.taxonomy.extension`); those live in the set's :class:`Taxonomies`, never here.
"""

from provguard.taxonomy.builtin import ACTIONS, DATA_CATEGORIES, PURPOSES
from provguard.taxonomy.extension import (
    BUILTIN_TAXONOMIES,
    Declaration,
    ExtensionKey,
    Taxonomies,
    resolve_extensions,
)
from provguard.taxonomy.keys import Taxonomy, covers, related

__all__ = [
    "ACTIONS",
    "BUILTIN_TAXONOMIES",
    "DATA_CATEGORIES",
    "PURPOSES",
    "Declaration",
    "ExtensionKey",
    "Taxonomies",
    "Taxonomy",
    "covers",
    "related",
    "resolve_extensions",
]

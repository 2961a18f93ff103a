"""Hierarchical vocabularies: data categories, purposes (data uses) and actions.

Keys are dotted paths; a key covers itself and every key below it (``user.name`` covers
``user.name.nickname``). Data-category keys follow the fideslang taxonomy where it has one
(``user``, ``user.name``, ``user.unique_id``, ``user.contact``); the rest are provguard extensions
listed in :mod:`provguard.taxonomy.builtin`.
"""

from provguard.taxonomy.builtin import ACTIONS, DATA_CATEGORIES, PURPOSES
from provguard.taxonomy.keys import Taxonomy, covers

__all__ = ["ACTIONS", "DATA_CATEGORIES", "PURPOSES", "Taxonomy", "covers"]

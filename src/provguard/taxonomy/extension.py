"""Taxonomy extensions: custom data categories and purposes a policy set declares.

A bundle may add keys below existing ones (``user.name.nickname.platform_copy`` below
``user.name.nickname``). The extended vocabularies belong to the
:class:`~provguard.policy.PolicySet` that declares them (``PolicySet.taxonomy``), never to the
process: the built-in :data:`BUILTIN_TAXONOMIES` never change.

Two ways to write a key, both giving a full dotted key whose parent is its dotted prefix (so the
hierarchy semantics of :func:`~provguard.taxonomy.keys.covers` hold unchanged):

- ``key: user.name.nickname.platform_copy`` -- the parent is ``user.name.nickname``;
- ``key: platform_copy`` with ``parent: user.name.nickname`` -- ``parent`` is a known key, or the
  ``key`` (as written) or full key of another declaration of the same kind in the policy set; the
  full key is ``<full key of parent>.platform_copy``. Declarations that name each other as parents
  form a **cycle** and are rejected.

:func:`resolve_extensions` checks every declaration at once and returns located
:class:`~provguard.errors.PolicyError` s (code ``PG110``), each with a fix hint.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from provguard.errors import PolicyError, SourceLocation
from provguard.taxonomy.builtin import ACTIONS, DATA_CATEGORIES, PURPOSES
from provguard.taxonomy.keys import Taxonomy

Axis = Literal["categories", "purposes"]
#: YAML name of each extensible axis -> the word used in messages
AXIS_NAMES: dict[str, str] = {"categories": "data category", "purposes": "purpose"}

_SEGMENT = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class ExtensionKey:
    """One resolved extension key: ``axis`` (``categories`` | ``purposes``), the full dotted
    ``key`` and its ``description`` (may be empty)."""

    axis: Axis
    key: str
    description: str = ""


@dataclass(frozen=True)
class Taxonomies:
    """The three vocabularies a policy set is checked against: data categories, purposes and
    actions. Immutable; :meth:`extended` returns a new instance."""

    categories: Taxonomy
    purposes: Taxonomy
    actions: Taxonomy

    def axis(self, axis: Axis) -> Taxonomy:
        """The taxonomy of ``axis`` (``categories`` or ``purposes``)."""
        return self.categories if axis == "categories" else self.purposes

    @property
    def is_builtin(self) -> bool:
        """True when no extension was added."""
        return self == BUILTIN_TAXONOMIES

    def extended(self, keys: Iterable[ExtensionKey]) -> Taxonomies:
        """A new instance with ``keys`` added (a key already present with the same axis is kept
        once). Raises :class:`~provguard.errors.TaxonomyError` when a key's parent is neither
        known nor among ``keys``, or a key is malformed."""
        new: dict[Axis, dict[str, str]] = {"categories": {}, "purposes": {}}
        for k in keys:
            if k.key not in self.axis(k.axis) and k.key not in new[k.axis]:
                new[k.axis][k.key] = k.description
        if not new["categories"] and not new["purposes"]:
            return self
        return Taxonomies(
            self.categories.extend(new["categories"].items()),
            self.purposes.extend(new["purposes"].items()),
            self.actions,
        )


BUILTIN_TAXONOMIES = Taxonomies(DATA_CATEGORIES, PURPOSES, ACTIONS)


@dataclass(frozen=True)
class Declaration:
    """One extension entry as written in a bundle.

    ``key`` / ``parent``: as written; ``source``: the file it comes from (a key declared again,
    identically, in another file of the set is accepted once; twice in one file is an error);
    ``location`` / ``parent_location``: where ``key`` and ``parent`` are (1-based);
    ``yaml_key``: its dotted YAML path (``taxonomy.categories[0]``).
    """

    axis: Axis
    key: str
    parent: str | None
    description: str
    source: str
    yaml_key: str
    location: SourceLocation | None = None
    parent_location: SourceLocation | None = None


def _error(
    d: Declaration, message: str, *, at_parent: bool = False, field: str = "key"
) -> PolicyError:
    loc = d.parent_location if at_parent and d.parent_location is not None else d.location
    return PolicyError(message, loc, key=f"{d.yaml_key}.{'parent' if at_parent else field}")


def _suggest(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=0.6)
    return f"; hint: did you mean '{close[0]}'?" if close else ""


def _well_formed(key: str) -> bool:
    return bool(key) and all(_SEGMENT.match(part) for part in key.split("."))


def resolve_extensions(
    declarations: Sequence[Declaration], base: Taxonomies = BUILTIN_TAXONOMIES
) -> tuple[Taxonomies, dict[int, ExtensionKey], list[PolicyError]]:
    """Check ``declarations`` together (one policy set) against ``base``.

    Returns ``(taxonomies, resolved, errors)``: ``taxonomies`` is ``base`` extended by every valid
    declaration, ``resolved`` maps the index of each valid declaration to its
    :class:`ExtensionKey`, and ``errors`` lists every problem (never raised here): a malformed key,
    a ``parent`` with a dotted ``key``, a duplicate of a built-in key, a key declared twice in one
    file, an unknown parent (with "did you mean" and, when the parent belongs to the other axis,
    which one it is), and cycles of ``parent`` references (one error per declaration on the
    cycle, naming the cycle).
    """
    errors: list[PolicyError] = []
    full: dict[int, str] = {}
    usable: list[int] = []
    for i, d in enumerate(declarations):
        what = AXIS_NAMES[d.axis]
        if not _well_formed(d.key):
            errors.append(
                _error(
                    d,
                    f"malformed {what} key '{d.key}'; hint: lowercase dotted segments "
                    "([a-z][a-z0-9_]*), e.g. 'user.name.nickname.platform_copy'",
                )
            )
            continue
        if d.parent is not None:
            if "." in d.key:
                errors.append(
                    _error(
                        d,
                        f"with 'parent', 'key' is one segment (the full key is PARENT.KEY), "
                        f"not '{d.key}'; hint: write 'key: {d.key.rpartition('.')[2]}' or drop "
                        "'parent' (a dotted key names its own parent)",
                    )
                )
                continue
            if not _well_formed(d.parent):
                errors.append(_error(d, f"malformed parent key '{d.parent}'", at_parent=True))
                continue
        else:
            full[i] = d.key
        usable.append(i)

    # parent-form declarations: resolve through known keys and other declarations (fixed point)
    pending = [i for i in usable if i not in full]
    by_written: dict[tuple[Axis, str], int] = {}
    short: dict[tuple[Axis, str], list[int]] = {}
    for i in usable:
        d = declarations[i]
        by_written.setdefault((d.axis, d.key), i)
        if d.parent is not None:
            short.setdefault((d.axis, d.key), []).append(i)
    for i in list(pending):
        d = declarations[i]
        assert d.parent is not None
        named = short.get((d.axis, d.parent), [])
        if d.parent not in base.axis(d.axis) and len({declarations[j].parent for j in named}) > 1:
            where = ", ".join(str(declarations[j].location) for j in named)
            errors.append(
                _error(
                    d,
                    f"parent '{d.parent}' is ambiguous: several entries have that key ({where}); "
                    "hint: name the parent by its full dotted key",
                    at_parent=True,
                )
            )
            pending.remove(i)
    progress = True
    while pending and progress:
        progress = False
        for i in list(pending):
            d = declarations[i]
            parent = d.parent
            assert parent is not None
            known = base.axis(d.axis)
            ref = by_written.get((d.axis, parent))
            if parent in known:
                full[i] = f"{parent}.{d.key}"
            elif ref is not None and ref in full:
                full[i] = f"{full[ref]}.{d.key}"
            elif any(declarations[j].axis == d.axis and k == parent for j, k in full.items()):
                full[i] = f"{parent}.{d.key}"
            else:
                continue
            pending.remove(i)
            progress = True
    for i in pending:
        d = declarations[i]
        assert d.parent is not None
        chain, loop = _follow(i, declarations, by_written, set(pending))
        if loop is not None and i in loop:
            names = " -> ".join(declarations[j].key for j in (*loop, loop[0]))
            errors.append(
                _error(
                    d,
                    f"cycle in taxonomy extension parents: {names}; hint: make one of them "
                    "hang below an existing key",
                    at_parent=True,
                )
            )
        elif len(chain) > 1:
            errors.append(
                _error(
                    d,
                    f"parent '{d.parent}' is declared but cannot be resolved"
                    + (" (it is on a cycle)" if loop is not None else " (its parent is unknown)")
                    + "; hint: fix that declaration",
                    at_parent=True,
                )
            )
        else:
            errors.append(_unknown_parent(d, d.parent, base, declarations, full))

    # duplicates, then parents of dotted keys; keep only keys whose whole ancestry is valid
    first_in_file: dict[tuple[Axis, str, str], int] = {}
    candidates: dict[int, str] = {}
    for i in sorted(full, key=lambda j: (full[j].count("."), j)):
        d = declarations[i]
        key = full[i]
        if key in base.axis(d.axis):
            hint = (
                f"use '{key}' in rules directly"
                if d.parent is None and key == d.key
                else "pick a new name below it"
            )
            errors.append(_error(d, f"'{key}' is a built-in {AXIS_NAMES[d.axis]}; hint: {hint}"))
            continue
        seen = first_in_file.get((d.axis, key, d.source))
        if seen is not None:
            first = declarations[seen].location
            errors.append(
                _error(
                    d,
                    f"{AXIS_NAMES[d.axis]} '{key}' declared twice"
                    + (f" (first at {first})" if first else "")
                    + "; hint: delete one",
                )
            )
            continue
        first_in_file[(d.axis, key, d.source)] = i
        candidates[i] = key
    valid_keys: dict[Axis, set[str]] = {"categories": set(), "purposes": set()}
    resolved: dict[int, ExtensionKey] = {}
    for i in sorted(candidates, key=lambda j: (candidates[j].count("."), j)):
        d = declarations[i]
        key = candidates[i]
        parent = key.rpartition(".")[0]
        if not parent:
            roots = ", ".join(sorted(k for k in base.axis(d.axis).keys if "." not in k))
            errors.append(
                _error(
                    d,
                    f"'{key}' would be a new top-level {AXIS_NAMES[d.axis]}; extensions go below "
                    f"existing keys; hint: hang it below one of {roots}",
                )
            )
            continue
        if parent in base.axis(d.axis) or parent in valid_keys[d.axis]:
            valid_keys[d.axis].add(key)
            resolved[i] = ExtensionKey(d.axis, key, d.description)
        elif d.parent is None:
            errors.append(_unknown_parent(d, parent, base, declarations, candidates))
        # a parent-form key below an invalid declaration: that declaration carries the error
    errors.sort(key=_position)
    taxonomies = base.extended(
        resolved[i] for i in sorted(resolved, key=lambda j: resolved[j].key.count("."))
    )
    return taxonomies, resolved, errors


def _position(e: PolicyError) -> tuple[str, int, int]:
    loc = e.location
    return (loc.path, loc.line, loc.column) if loc is not None else ("", 0, 0)


def _follow(
    start: int,
    declarations: Sequence[Declaration],
    by_written: dict[tuple[Axis, str], int],
    pending: set[int],
) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """Follow ``parent`` references from ``start`` through unresolved declarations: the chain
    visited and, when it runs into a cycle, the declarations on that cycle."""
    path: list[int] = []
    i: int | None = start
    while i is not None and i in pending:
        if i in path:
            return tuple(path), tuple(path[path.index(i) :])
        path.append(i)
        parent = declarations[i].parent
        i = by_written.get((declarations[i].axis, parent)) if parent is not None else None
    return tuple(path), None


def _unknown_parent(
    d: Declaration,
    parent: str,
    base: Taxonomies,
    declarations: Sequence[Declaration],
    full: dict[int, str],
) -> PolicyError:
    what = AXIS_NAMES[d.axis]
    known = set(base.axis(d.axis).keys)
    known.update(k for j, k in full.items() if declarations[j].axis == d.axis)
    other: Axis = "purposes" if d.axis == "categories" else "categories"
    note = ""
    if parent in base.axis(other):
        note = f" ('{parent}' is a {AXIS_NAMES[other]}, declare this under taxonomy.{other})"
    hint = _suggest(parent, known) or (
        "; hint: declare the parent first (in this or another bundle of the set) or hang the key "
        "below an existing key"
    )
    return _error(
        d,
        f"unknown parent {what} '{parent}' of '{d.key}'{note}{hint}",
        at_parent=d.parent is not None,
    )

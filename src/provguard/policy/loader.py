"""Validate YAML source into a checked :class:`~provguard.policy.model.Bundle`.

Every error of a file is collected and raised at once as :class:`PolicyErrors`, each naming
``file:line:col``, the dotted key and the rule id. Checks beyond the schema: taxonomy extensions
(``taxonomy:``, see :mod:`provguard.taxonomy.extension`) hang below known keys without duplicates
or cycles, taxonomy keys exist (actions, purposes, data categories; built in or declared in the
set), rule ids are unique, validity starts before it ends.

Loading a folder is two passes: every file is parsed and its extensions collected, the
extensions of the whole set are resolved together (a bundle may extend a key another bundle of the
set declares), then every bundle's rules are checked against the set's vocabularies.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path as FsPath
from typing import Any, TypeVar

from pydantic import ValidationError

from provguard.errors import PolicyError, PolicyErrors, TaxonomyError
from provguard.policy.model import (
    Bundle,
    BundleSource,
    ConsentCondition,
    ConsentRequirement,
    DataTarget,
    EventEnd,
    FieldCondition,
    Instrument,
    ObligationSource,
    PolicySet,
    Rule,
    RuleSource,
    Selector,
    TaxonomyEntrySource,
    TaxonomySource,
    UnknownOrigin,
    Unless,
)
from provguard.policy.source import Path, SourceDoc, parse_yaml
from provguard.provenance.origins import KNOWN_ORIGINS, UNKNOWN
from provguard.taxonomy import (
    BUILTIN_TAXONOMIES,
    Declaration,
    ExtensionKey,
    Taxonomies,
    Taxonomy,
    resolve_extensions,
)
from provguard.taxonomy.extension import AXIS_NAMES, Axis


def _dotted(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _rule_id(doc: SourceDoc, path: Path) -> str | None:
    if len(path) >= 2 and path[0] == "rules" and isinstance(path[1], int):
        rules = doc.value.get("rules") if isinstance(doc.value, dict) else None
        if isinstance(rules, list) and path[1] < len(rules) and isinstance(rules[path[1]], dict):
            rid = rules[path[1]].get("id")
            return str(rid) if rid is not None else f"#{path[1] + 1}"
    return None


def _schema_errors(doc: SourceDoc, exc: ValidationError) -> list[PolicyError]:
    errors: list[PolicyError] = []
    seen: set[tuple[Path, str]] = set()
    raw = exc.errors()
    # pydantic also reports "too short" on a list whose only items failed: keep the item errors
    nested = {tuple(e["loc"][:i]) for e in raw for i in range(len(e["loc"]))}
    raw = [e for e in raw if not (e["type"] == "too_short" and tuple(e["loc"]) in nested)]
    for err in raw:
        # pydantic puts union branch names ("tuple[str, ...]", "NotList") into loc: drop them
        loc: Path = tuple(p for p in err["loc"] if isinstance(p, int) or _is_key(doc, p))
        kind = err["type"]
        if kind in ("extra_forbidden", "missing") and err["loc"]:
            # the offending key itself may be any text ("A", "1x"): keep it
            last = err["loc"][-1]
            if not loc or loc[-1] != last:
                loc = (*loc, last if isinstance(last, int) else str(last))
        if (loc, kind) in seen:
            continue
        seen.add((loc, kind))
        if kind == "extra_forbidden":
            word = str(loc[-1])
            if len(loc) == 2 and loc[0] == "taxonomy":
                hint = (
                    "; hint: taxonomy extensions take 'categories' and 'purposes' (actions are "
                    "a closed vocabulary)"
                )
            else:
                hint = _suggest(word, _KNOWN_KEYS - {word})
            msg = f"unknown key '{word}'{hint}"
            location = doc.locate(loc, prefer_value=False)
        elif kind == "missing":
            msg = f"missing required key '{loc[-1]}'; hint: add '{loc[-1]}:' here"
            location = doc.locate(loc[:-1], prefer_value=True)
        else:
            msg = err["msg"]
            location = doc.locate(loc)
        errors.append(PolicyError(msg, location, key=_dotted(loc), rule=_rule_id(doc, loc)))
    return errors


def _model_keys() -> frozenset[str]:
    keys: set[str] = set()
    for model in (
        BundleSource,
        Instrument,
        RuleSource,
        DataTarget,
        Unless,
        FieldCondition,
        ConsentCondition,
        ConsentRequirement,
        ObligationSource,
        TaxonomySource,
        TaxonomyEntrySource,
    ):
        for name, info in model.model_fields.items():
            keys.add(info.alias or name)
    return frozenset(keys)


_KNOWN_KEYS = _model_keys()


def _suggest(word: str, candidates: Iterable[str]) -> str:
    """``"; hint: did you mean 'x'?"`` for the closest candidate, or ``""``."""
    close = difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=0.6)
    return f"; hint: did you mean '{close[0]}'?" if close else ""


_KEY = re.compile(r"^[a-z_][a-z0-9_]*$")
_TYPE_TAGS = frozenset({"date", "datetime", "str", "int", "float", "bool", "none"})


def _is_key(doc: SourceDoc, part: Any) -> bool:
    """False for the union-branch tags pydantic puts into error locations ("NotList", "date")."""
    return isinstance(part, str) and bool(_KEY.match(part)) and part not in _TYPE_TAGS


def _check_keys(
    doc: SourceDoc,
    taxonomy: Taxonomy,
    values: Iterable[str] | None,
    path: Path,
    rule_id: str,
    errors: list[PolicyError],
    skip: Callable[[str], bool] | None = None,
) -> None:
    """Append an error for each value ``taxonomy`` does not know (``""`` and values ``skip``
    accepts are not checked)."""
    for i, value in enumerate(values or ()):
        if skip is not None and (value == "" or skip(value)):
            continue
        try:
            taxonomy.check(value)
        except TaxonomyError as exc:
            hint = _suggest(value, taxonomy.keys)
            axis = next((a for a, name in AXIS_NAMES.items() if name == taxonomy.name), None)
            parent = value.rpartition(".")[0]
            if axis is not None and parent in taxonomy:
                declare = f"declare it under 'taxonomy.{axis}' to extend the taxonomy"
                hint = f"{hint} (or {declare})" if hint else f"; hint: {declare}"
            errors.append(
                PolicyError(
                    exc.message + hint,
                    doc.locate((*path, i)),
                    key=_dotted((*path, i)),
                    rule=rule_id,
                )
            )


@dataclass(frozen=True)
class _Parsed:
    """One parsed file: ``source`` is None when the schema failed; ``errors`` holds what was
    found so far (impossible dates, schema errors), reported with the later checks' errors."""

    doc: SourceDoc
    source: BundleSource | None
    errors: tuple[PolicyError, ...] = ()


def _parse(text: str, path: str) -> _Parsed:
    """Parse and validate the schema; raises only when the file is not a YAML mapping."""
    doc = parse_yaml(text, path)
    if not isinstance(doc.value, dict):
        raise PolicyError(
            "a policy bundle is a mapping with 'instrument' and 'rules'", doc.locate(())
        )
    bad = [
        PolicyError(msg, doc.locate(at), key=_dotted(at), rule=_rule_id(doc, at))
        for at, msg in doc.bad_dates.items()
    ]
    bad_keys = {e.key for e in bad}
    try:
        source = BundleSource.model_validate(doc.value)
    except ValidationError as exc:
        # an impossible date is reported once, with its real reason (not pydantic's wording)
        errs = [e for e in _schema_errors(doc, exc) if e.key not in bad_keys]
        return _Parsed(doc, None, (*bad, *errs))
    return _Parsed(doc, source, tuple(bad))


def _raw_rule_errors(doc: SourceDoc, taxonomies: Taxonomies) -> list[PolicyError]:
    """Taxonomy keys, origins and duplicate ids of the rules of a file whose schema failed, read
    from the raw YAML, so that one run reports every problem (not schema errors first, then
    taxonomy errors once they are fixed). Keys at or below a key the file's own ``taxonomy:``
    declares are not checked (its extensions could not be resolved)."""
    raw = doc.value if isinstance(doc.value, dict) else {}
    declared: set[str] = set()
    tax = raw.get("taxonomy")
    if isinstance(tax, dict):
        for entries in tax.values():
            for entry in entries if isinstance(entries, list) else ():
                if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                    declared.add(str(entry["key"]).rpartition(".")[2])

    def own(value: str) -> bool:
        return any(seg in declared for seg in value.split("."))

    def strings(value: object) -> list[str] | None:
        return [v if isinstance(v, str) else "" for v in value] if isinstance(value, list) else None

    errors: list[PolicyError] = []
    rules = raw.get("rules")
    seen: dict[str, int] = {}
    for i, rule in enumerate(rules if isinstance(rules, list) else ()):
        if not isinstance(rule, dict):
            continue
        base: Path = ("rules", i)
        rid = rule.get("id")
        rule_id = str(rid) if isinstance(rid, str) else f"#{i + 1}"
        if isinstance(rid, str):
            if rid in seen:
                errors.append(
                    PolicyError(
                        f"duplicate rule id (first at rules[{seen[rid]}])",
                        doc.locate((*base, "id")),
                        key=_dotted((*base, "id")),
                        rule=rid,
                    )
                )
            seen.setdefault(rid, i)
        data = rule.get("data") if isinstance(rule.get("data"), dict) else {}
        assert isinstance(data, dict)
        for values, path, taxonomy in (
            (strings(rule.get("actions")), (*base, "actions"), taxonomies.actions),
            (strings(rule.get("purposes")), (*base, "purposes"), taxonomies.purposes),
            (strings(data.get("categories")), (*base, "data", "categories"), taxonomies.categories),
        ):
            if values is not None:
                _check_keys(doc, taxonomy, values, path, rule_id, errors, skip=own)
        origins = data.get("origins")
        for k, origin in enumerate(origins if isinstance(origins, list) else ()):
            if isinstance(origin, str) and origin not in KNOWN_ORIGINS:
                errors.append(_origin_error(doc, origin, (*base, "data", "origins", k), rule_id))
    return errors


def _origin_error(doc: SourceDoc, origin: str, at: Path, rule_id: str) -> PolicyError:
    return PolicyError(
        f"unknown origin '{origin}'{_suggest(origin, KNOWN_ORIGINS)}; "
        f"known: {', '.join(sorted(KNOWN_ORIGINS))}",
        doc.locate(at),
        key=_dotted(at),
        rule=rule_id,
    )


def _sorted(errors: Iterable[PolicyError]) -> list[PolicyError]:
    """Errors in file, line, column order (unlocated ones last, in the order found)."""

    def key(e: PolicyError) -> tuple[int, str, int, int]:
        loc = e.location
        return (1, "", 0, 0) if loc is None else (0, loc.path, loc.line, loc.column)

    return sorted(errors, key=key)


def _raise(errors: list[PolicyError]) -> None:
    if errors:
        ordered = _sorted(errors)
        raise ordered[0] if len(ordered) == 1 else PolicyErrors(ordered)


def _declarations(parsed: _Parsed) -> list[Declaration]:
    """The ``taxonomy:`` entries of one bundle, located (none when its schema failed)."""
    if parsed.source is None:
        return []
    doc, tax = parsed.doc, parsed.source.taxonomy
    out: list[Declaration] = []
    axes: tuple[tuple[Axis, TaxonomySource], ...] = (("categories", tax), ("purposes", tax))
    for axis, source in axes:
        entries: tuple[TaxonomyEntrySource, ...] = getattr(source, axis)
        for i, entry in enumerate(entries):
            at: Path = ("taxonomy", axis, i)
            out.append(
                Declaration(
                    axis=axis,
                    key=entry.key,
                    parent=entry.parent,
                    description=entry.description or "",
                    source=doc.path,
                    yaml_key=_dotted(at),
                    location=doc.locate((*at, "key")),
                    parent_location=(
                        doc.locate((*at, "parent")) if entry.parent is not None else None
                    ),
                )
            )
    return out


def load_bundle_text(text: str, path: str = "<string>") -> Bundle:
    """Parse and check one bundle from YAML ``text``.

    The bundle's ``taxonomy:`` extensions are resolved against the built-in vocabularies only
    (use :func:`load_policy_dir` for bundles that extend each other's keys).
    Raises :class:`PolicyError` (one problem) or :class:`PolicyErrors` (several), each located.
    """
    parsed = _parse(text, path)
    decls = _declarations(parsed)
    taxonomies, resolved, errors = resolve_extensions(decls)
    if parsed.source is None:
        _raise([*parsed.errors, *errors, *_raw_rule_errors(parsed.doc, taxonomies)])
    own = tuple(resolved[i] for i in sorted(resolved, key=lambda j: _depth(resolved[j])))
    return _build(parsed, taxonomies, own, errors)


def _depth(key: ExtensionKey) -> tuple[int, str]:
    return key.key.count("."), key.key


def _build(
    parsed: _Parsed,
    taxonomies: Taxonomies,
    own: tuple[ExtensionKey, ...],
    errors: list[PolicyError],
) -> Bundle:
    """Check ``parsed`` against ``taxonomies`` (the vocabularies of its policy set); ``errors``
    holds problems found before (its extensions) and is reported along with the rest."""
    doc, source = parsed.doc, parsed.source
    assert source is not None
    errors = [*parsed.errors, *errors]
    actions_tax = taxonomies.actions
    inst = source.instrument
    zone = source.timezone or inst.timezone
    if source.timezone and inst.timezone and source.timezone != inst.timezone:
        errors.append(
            PolicyError(
                f"the bundle's timezone '{source.timezone}' differs from the instrument's "
                f"'{inst.timezone}'; hint: declare the zone once (one of them)",
                doc.locate(("instrument", "timezone")),
                key="instrument.timezone",
            )
        )
    if zone is not None and inst.timezone is None:
        inst = inst.model_copy(update={"timezone": zone})
    until = inst.effective_until
    if isinstance(until, date) and not isinstance(until, EventEnd) and until <= inst.effective_from:
        errors.append(
            PolicyError(
                "effective_until must be after effective_from (validity never starts)",
                doc.locate(("instrument", "effective_until")),
                key="instrument.effective_until",
            )
        )
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    unknown_origin = unknown_origin_of(source)
    for i, rs in enumerate(source.rules):
        base: Path = ("rules", i)
        if rs.id in seen:
            errors.append(
                PolicyError(
                    f"duplicate rule id (first at rules[{seen[rs.id]}])",
                    doc.locate((*base, "id")),
                    key=_dotted((*base, "id")),
                    rule=rs.id,
                )
            )
        seen.setdefault(rs.id, i)
        actions = tuple(sorted(actions_tax.keys)) if rs.actions == "any" else rs.actions
        purposes = None if rs.purposes == "any" else rs.purposes
        categories = None if rs.data.categories == "any" else rs.data.categories
        origins = None if rs.data.origins == "any" else rs.data.origins
        _check_keys(doc, actions_tax, _listed(rs.actions), (*base, "actions"), rs.id, errors)
        _check_keys(doc, taxonomies.purposes, purposes, (*base, "purposes"), rs.id, errors)
        _check_keys(
            doc, taxonomies.categories, categories, (*base, "data", "categories"), rs.id, errors
        )
        for k, origin in enumerate(origins or ()):
            if origin not in KNOWN_ORIGINS:
                errors.append(_origin_error(doc, origin, (*base, "data", "origins", k), rs.id))
        when = tuple(_zoned(c, zone) for c in rs.when)
        _check_conditions(doc, when, (*base, "when"), rs.id, errors)
        unless = _zoned(rs.unless, zone) if isinstance(rs.unless, Unless) else None
        unless_conditions = (
            tuple(_zoned(c, zone) for c in rs.unless) if isinstance(rs.unless, tuple) else ()
        )
        if isinstance(rs.unless, tuple) and not rs.unless:
            errors.append(
                PolicyError(
                    "an 'unless' needs at least one condition",
                    doc.locate((*base, "unless")),
                    key=_dotted((*base, "unless")),
                    rule=rs.id,
                )
            )
        _check_conditions(doc, unless_conditions, (*base, "unless"), rs.id, errors)
        loc = doc.locate(base)
        unknown_added = (
            unknown_origin == "fail_closed"
            and rs.effect == "deny"
            and bool(origins)  # an empty list matches nothing, and keeps matching nothing
            and UNKNOWN not in (origins or ())
        )
        if unknown_added and origins is not None:
            origins = (*origins, UNKNOWN)
        rules.append(
            Rule(
                id=rs.id,
                instrument_id=inst.id,
                effect=rs.effect,
                actions=frozenset(actions),
                purposes=purposes,
                apps=Selector.parse(rs.apps),
                controllers=Selector.parse(rs.controllers),
                recipients=Selector.parse(rs.recipients),
                categories=categories,
                origins=frozenset(origins) if origins is not None else None,
                unless=unless,
                description=rs.description,
                location=str(loc),
                obligations=rs.obligations,
                mode=rs.mode,
                when=when,
                unless_conditions=unless_conditions,
                unknown_added=unknown_added,
            )
        )
    _raise(errors)
    return Bundle(
        inst,
        tuple(rules),
        doc.path,
        source.default,
        tuple(source.known_apps),
        unknown_origin=unknown_origin,
        taxonomy_extensions=own,
        locations=tuple(
            (k, str(doc.locate(("instrument", k))))
            for k in ("issued", "effective_from", "effective_until", "timezone")
            if k in doc.value.get("instrument", {})
        ),
    )


def unknown_origin_of(source: BundleSource) -> UnknownOrigin:
    """How the bundle's deny rules treat the origin ``unknown`` (no recorded origin).

    The bundle's ``unknown_origin:`` when it says; otherwise ``fail_closed``, unless one of its
    rules names ``unknown`` in ``data.origins`` itself (then the bundle already decides what a
    value of unknown origin gets, and its origins are read ``as_written``). Under
    ``fail_closed`` every ``deny`` rule (enforced or shadow) that lists origins also matches a
    value whose label holds ``unknown``: the value may come from one of those origins (fail
    closed, issue 4). Permit rules never gain ``unknown``."""
    if source.unknown_origin is not None:
        return source.unknown_origin
    for rs in source.rules:
        if isinstance(rs.data.origins, tuple) and UNKNOWN in rs.data.origins:
            return "as_written"
    return "fail_closed"


_Z = TypeVar("_Z", FieldCondition | ConsentCondition, Unless)


def _zoned(cond: _Z, zone: str | None) -> _Z:
    """``cond`` with the bundle's ``zone`` when it names none itself (consents carry no days)."""
    if zone is None or isinstance(cond, ConsentCondition) or cond.timezone is not None:
        return cond
    return cond.model_copy(update={"timezone": zone})


def _listed(values: tuple[str, ...] | str | None) -> tuple[str, ...] | None:
    return None if values is None or isinstance(values, str) else values


def _check_conditions(
    doc: SourceDoc,
    conditions: tuple[FieldCondition | ConsentCondition, ...],
    path: Path,
    rule_id: str,
    errors: list[PolicyError],
) -> None:
    """Contradictory ranges on one field (``before`` a day not after ``on_or_after``)."""
    for i, cond in enumerate(conditions):
        if not isinstance(cond, FieldCondition):
            continue
        if (
            cond.before is not None
            and cond.on_or_after is not None
            and cond.before <= cond.on_or_after
        ) or (cond.at_least is not None and cond.below is not None and cond.below <= cond.at_least):
            errors.append(
                PolicyError(
                    f"condition on '{cond.field}' can never hold (empty range); "
                    "hint: swap the bounds or drop one",
                    doc.locate((*path, i)),
                    key=_dotted((*path, i)),
                    rule=rule_id,
                )
            )


def load_bundle(path: str | FsPath) -> Bundle:
    """Load one bundle file; errors as :func:`load_bundle_text`, plus unreadable files."""
    p = FsPath(path)
    return load_bundle_text(_read(p), str(p))


def load_policy_dir(path: str | FsPath) -> PolicySet:
    """Load every ``*.yaml`` / ``*.yml`` bundle of a folder (or one file) into a :class:`PolicySet`.

    Taxonomy extensions of all bundles are resolved together: a bundle may hang a key below one
    another bundle of the folder declares, and every rule is checked against the set's
    vocabularies (``PolicySet.taxonomy``). Instrument ids must be unique across the set. All files
    are checked before anything is returned, so a broken file never yields a partial set.
    Errors (:class:`PolicyError` / :class:`PolicyErrors`) come sorted by file:line:col, every
    stage at once (impossible dates, schema, taxonomy keys, ids).
    """
    return load_policy_dirs([path])


def load_policy_dirs(paths: Sequence[str | FsPath]) -> PolicySet:
    """Load the bundles of several folders and/or files as one :class:`PolicySet` (the union;
    a file reached twice is loaded once), with the checks and errors of :func:`load_policy_dir`
    across all of them (instrument ids unique across every folder). ``policy diff A B C`` and
    ``--plus`` use this to compare A with "B and C together"."""
    if not paths:
        raise PolicyError("no policy folder or file given")
    files: list[FsPath] = []
    seen: set[FsPath] = set()
    for path in paths:
        p = FsPath(path)
        if not p.exists():
            raise PolicyError(f"no such policy file or folder: {p}")
        found = sorted([*p.glob("*.yaml"), *p.glob("*.yml")]) if p.is_dir() else [p]
        if not found:
            raise PolicyError(f"no policy bundles (*.yaml) in {p}")
        for f in found:
            if f.resolve() not in seen:
                seen.add(f.resolve())
                files.append(f)
    parsed: list[_Parsed] = []
    errors: list[PolicyError] = []
    for f in files:
        try:
            parsed.append(_parse(_read(f), str(f)))
        except PolicyErrors as exc:
            errors.extend(exc.errors)
        except PolicyError as exc:
            errors.append(exc)
    bundles = _build_set(parsed, errors)
    ids: dict[str, str] = {}
    for b in bundles:
        if b.instrument.id in ids:
            errors.append(
                PolicyError(
                    f"instrument id '{b.instrument.id}' also defined in {ids[b.instrument.id]}",
                    None,
                    key="instrument.id",
                )
            )
        ids[b.instrument.id] = b.path or "?"
    _raise(errors)
    return PolicySet.of(bundles)


def _build_set(parsed: Sequence[_Parsed], errors: list[PolicyError]) -> list[Bundle]:
    """Resolve the extensions of ``parsed`` together, then check each bundle; problems are
    appended to ``errors`` (extension errors under the file that declares them)."""
    decls: list[Declaration] = []
    owner: list[int] = []
    for n, item in enumerate(parsed):
        for d in _declarations(item):
            decls.append(d)
            owner.append(n)
    taxonomies, resolved, ext_errors = resolve_extensions(decls, BUILTIN_TAXONOMIES)
    by_file: dict[str, list[PolicyError]] = {}
    for err in ext_errors:
        by_file.setdefault(err.location.path if err.location else "", []).append(err)
    bundles: list[Bundle] = []
    for n, item in enumerate(parsed):
        if item.source is None:
            errors.extend(item.errors)
            errors.extend(_raw_rule_errors(item.doc, taxonomies))
            continue
        own = tuple(sorted((k for i, k in resolved.items() if owner[i] == n), key=_depth))
        try:
            bundles.append(_build(item, taxonomies, own, by_file.pop(item.doc.path, [])))
        except PolicyErrors as exc:
            errors.extend(exc.errors)
        except PolicyError as exc:
            errors.append(exc)
    for rest in by_file.values():
        errors.extend(rest)
    return bundles


def _read(p: FsPath) -> str:
    try:
        return p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read policy file: {exc}") from None

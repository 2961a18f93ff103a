"""Static analysis of policy sets: rule traces, rules that can never fire, exact diffs, ``can``.

The request domain is finite up to equivalence: two values of an axis (two purposes, two apps,
...) are equivalent when every rule of the compared sets treats them alike (same bitmask in the
:class:`~provguard.decide.compiled.CompiledPolicy` index), and time is cut into the validity
segments of the instruments. Enumerating one representative per class of every axis (origins: every
non-empty set of origin classes) and per segment therefore covers every request, so :func:`diff`
and :func:`can` are exact over targets and time. Grant first-use / grant times are cut at the days
conditions compare them with and the grant status takes its three values, so those are enumerated
exactly too (while the domain stays under :data:`MAX_CONTEXT_REQUESTS`). Scopes, subject and
context attributes and consent records are not finite: they are evaluated absent (the fail-closed
default) and every answer a rule reading them took part in is flagged. :meth:`DiffResult.compact`
merges the changed classes into a few rows (docs/policy-language.md).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from provguard.decide.compiled import CompiledPolicy, hier_mask
from provguard.decide.conditions import (
    consent_holds,
    describe_held,
    field_holds,
    holds,
)
from provguard.decide.model import ConsentRecord, Decision, Request
from provguard.decide.reference import (
    ENDED_GRANT_STATUSES,
    decide,
    keys_match,
    rule_exception,
)
from provguard.policy.model import (
    ConsentCondition,
    FieldCondition,
    PolicySet,
    Rule,
    Selector,
    day_machine,
    day_text,
)
from provguard.taxonomy import BUILTIN_TAXONOMIES, Taxonomies, covers

OTHER = "(other)"
MAX_ORIGIN_CLASSES = 8  # 255 origin sets
#: grant-context bins are enumerated only while the whole domain stays below this many requests
MAX_CONTEXT_REQUESTS = 200_000


# --- explain ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleTrace:
    """Why one rule did or did not take part in a decision.

    ``status``: ``not_in_force`` | ``no_match`` | ``condition_failed`` | ``applied`` |
    ``excepted`` | ``shadow``; ``detail``: the first axis or condition that failed, or what held.
    """

    instrument_id: str
    rule_id: str
    effect: str
    status: str
    detail: str
    location: str | None = None


def _selector_why(name: str, sel: Selector, value: str | None) -> str:
    shown = value if value is not None else "none"
    return f"{name} '{shown}' is not in {sel.describe()}"


def _unmatched(what: str, key: str | None, rule: Rule, targets: tuple[str, ...]) -> str:
    """Why a purpose / category misses a rule's keys; a deny's keys also match their ancestors
    (:func:`provguard.decide.reference.key_matches`), so its message says the key is not above
    them either."""
    text = f"{what} '{key or 'none'}' is not covered by {', '.join(targets)}"
    if rule.effect != "deny" or key is None:
        return text
    return text + f" and is not above {'it' if len(targets) == 1 else 'any of them'}"


def _axis_failure(rule: Rule, req: Request) -> str | None:
    if req.action not in rule.actions:
        return f"action '{req.action}' is not in {', '.join(sorted(rule.actions))}"
    if not keys_match(rule.effect, rule.purposes, req.purpose):
        assert rule.purposes is not None
        return _unmatched("purpose", req.purpose, rule, rule.purposes)
    if not rule.apps.matches(req.app):
        return _selector_why("app", rule.apps, req.app)
    if rule.controllers.constrained and not rule.controllers.matches(req.controller):
        return _selector_why("controller", rule.controllers, req.controller)
    if rule.recipients.constrained and not rule.recipients.matches(req.recipient):
        return _selector_why("recipient", rule.recipients, req.recipient)
    if not keys_match(rule.effect, rule.categories, req.category):
        assert rule.categories is not None
        return _unmatched("category", req.category, rule, rule.categories)
    if rule.origins is not None and not (rule.origins & req.origins):
        return (
            f"origins {', '.join(sorted(req.origins))} do not overlap "
            f"{', '.join(sorted(rule.origins))}"
        )
    return None


def explain_rules(policy: PolicySet, req: Request) -> list[RuleTrace]:
    """One :class:`RuleTrace` per rule of ``policy`` for ``req``, in bundle order."""
    out: list[RuleTrace] = []
    for bundle in policy.bundles:
        inst = bundle.instrument
        live = inst.in_force(req.at, policy.events)
        for rule in bundle.rules:

            def add(status: str, detail: str, rule: Rule = rule, iid: str = inst.id) -> None:
                out.append(RuleTrace(iid, rule.id, rule.effect, status, detail, rule.location))

            if not live:
                add(
                    "not_in_force",
                    f"instrument not in force at {req.at.isoformat()}: {inst.validity_text()}",
                )
                continue
            failure = _axis_failure(rule, req)
            if failure is not None:
                add("no_match", failure)
                continue
            failed = [c for c in rule.when if not holds(c, req)]
            if failed:
                add(
                    "condition_failed",
                    "when: " + "; ".join(c.describe() for c in failed) + " does not hold",
                )
                continue
            held = "; ".join(describe_held(c, req) for c in rule.when)
            exception = rule_exception(rule, req) if rule.effect == "deny" else None
            if rule.mode == "shadow":
                verdict = (
                    "would deny"
                    if rule.effect == "deny" and exception is None
                    else ("would not deny")
                )
                add("shadow", f"shadow mode, {verdict}" + (f" (when {held})" if held else ""))
            elif exception is not None:
                add("excepted", f"matches, but exception holds: {exception}")
            else:
                unmet = ""
                if rule.has_exception:
                    unmet = "; exception does not hold"
                add("applied", "matches every axis" + (f"; when {held}" if held else "") + unmet)
    return out


# --- lint: rules that can never fire ----------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """A rule (or instrument) that can never fire, or may not fire as meant. ``kind``:
    ``empty_target`` | ``contradictory_conditions`` | ``validity_never_starts`` | ``shadowed`` |
    ``redundant`` | ``unknown_app`` (an app a rule names that no bundle's ``known_apps`` lists,
    or, with no ``known_apps`` anywhere, a name one or two letters from another app's) |
    ``effective_before_issued`` (an instrument said to take effect before it was issued)."""

    kind: str
    instrument_id: str
    rule_id: str | None
    message: str
    hint: str
    location: str | None = None


def _covers_selector(big: Selector, small: Selector, *, none_matters: bool) -> bool:
    """True when every value ``small`` matches, ``big`` matches too."""
    if not big.constrained:
        return True
    if none_matters and not small.constrained:
        return False
    if small.values is not None:
        return all(big.matches(v) for v in small.values if v not in small.excluded)
    if big.values is not None:
        return False
    return set(big.excluded) <= set(small.excluded)


def _covers_keys(
    big: tuple[str, ...] | None,
    small: tuple[str, ...] | None,
    big_effect: str = "permit",
    small_effect: str = "permit",
) -> bool:
    """True when every key ``small``'s rule matches, ``big``'s rule matches (a sufficient test,
    whatever the taxonomy). A deny's key ``s`` matches its ancestors and descendants
    (:func:`provguard.decide.reference.key_matches`): a deny key ``b`` covering ``s`` matches
    all of them (they lie on ``b``'s branch); a permit key must then be the root of ``s``."""
    if big is None:
        return True
    if small is None:
        return False
    if small_effect == "deny" and big_effect != "deny":
        return all(any(b == s.split(".")[0] for b in big) for s in small)
    return all(any(covers(b, s) for b in big) for s in small)


def rule_covers(big: Rule, small: Rule) -> bool:
    """True when every request ``small`` targets is targeted by ``big`` (conditions ignored;
    purposes and categories matched as each rule's effect says). A sound test: False may also
    mean "not provably, whatever taxonomy extensions a set adds"."""
    return (
        small.actions <= big.actions
        and _covers_keys(big.purposes, small.purposes, big.effect, small.effect)
        and _covers_keys(big.categories, small.categories, big.effect, small.effect)
        and _covers_selector(big.apps, small.apps, none_matters=False)
        and _covers_selector(big.controllers, small.controllers, none_matters=True)
        and _covers_selector(big.recipients, small.recipients, none_matters=True)
        and (big.origins is None or (small.origins is not None and small.origins <= big.origins))
    )


def _contradictions(conds: Iterable[object]) -> list[str]:
    lo: dict[str, datetime] = {}
    hi: dict[str, datetime] = {}
    allowed: dict[str, set[str]] = {}
    banned: dict[str, set[str]] = {}
    out: list[str] = []
    for c in conds:
        if not isinstance(c, FieldCondition):
            continue
        if c.on_or_after is not None:
            t = c.cut(c.on_or_after)
            lo[c.field] = max(lo.get(c.field, t), t)
        if c.before is not None:
            t = c.cut(c.before)
            hi[c.field] = min(hi.get(c.field, t), t)
        values = set(c.in_ or ()) | ({c.equals} if isinstance(c.equals, str) else set())
        if values:
            allowed[c.field] = allowed.get(c.field, values) & values
        banned.setdefault(c.field, set()).update(c.not_in or ())
    for f, low in lo.items():
        if f in hi and hi[f] <= low:
            out.append(f"'{f}' must be on or after {day_text(low)} and before {day_text(hi[f])}")
    for f, vals in allowed.items():
        if not vals - banned.get(f, set()):
            out.append(f"no value of '{f}' satisfies every condition on it")
    return out


def _app_findings(policy: PolicySet) -> list[Finding]:
    """``unknown_app`` findings: a misspelt app makes a rule silently never fire."""
    import difflib

    declared = {a for b in policy.bundles for a in b.known_apps}
    named = {a for b in policy.bundles for a in b.apps()}
    out: list[Finding] = []
    pairs: set[frozenset[str]] = set()
    for b in policy.bundles:
        for r in b.rules:
            for sel in (r.apps, r.recipients):
                for app in sorted({*(sel.values or ()), *sel.excluded}):
                    if declared:
                        if app in declared:
                            continue
                        close = difflib.get_close_matches(app, sorted(declared), n=1)
                        why = f"app '{app}' is not in any bundle's known_apps"
                        hint = f"did you mean '{close[0]}'?" if close else "add it to known_apps"
                    else:
                        others = sorted(named - {app})
                        close = difflib.get_close_matches(app, others, n=1, cutoff=0.8)
                        if not close or frozenset((app, close[0])) in pairs:
                            continue
                        pairs.add(frozenset((app, close[0])))
                        why = f"apps '{app}' and '{close[0]}' differ by a letter or two"
                        hint = "one is probably misspelt (or list both in known_apps)"
                    out.append(Finding("unknown_app", b.instrument.id, r.id, why, hint, r.location))
    return out


def lint(policy: PolicySet) -> list[Finding]:
    """Rules that can never fire, with a fix hint each (see :class:`Finding`)."""
    findings: list[Finding] = []
    spans: dict[str, tuple[date, date | None]] = {}
    for b in policy.bundles:
        inst = b.instrument
        start, end = inst.validity_bounds(policy.events)
        spans[inst.id] = (start, end)
        if inst.issued is not None and inst.effective_from < inst.issued:
            findings.append(
                Finding(
                    "effective_before_issued",
                    inst.id,
                    None,
                    f"effective_from {inst.effective_from} is before issued {inst.issued}: "
                    "the instrument would bind conduct before it existed",
                    "check both dates (a retroactive instrument is rare; say so in a comment)",
                    b.location_of("effective_from"),
                )
            )
        if end is not None and end <= start:
            findings.append(
                Finding(
                    "validity_never_starts",
                    inst.id,
                    None,
                    f"ends on {end} but starts on {start}: none of its rules ever applies",
                    "check effective_from and the recorded end event's date",
                    b.path,
                )
            )
        for r in b.rules:
            empty = [
                name
                for name, value in (
                    ("purposes", r.purposes),
                    ("data.categories", r.categories),
                    ("data.origins", r.origins),
                    ("apps", r.apps.values),
                    ("controllers", r.controllers.values),
                    ("recipients", r.recipients.values),
                )
                if value is not None and len(value) == 0
            ]
            if empty:
                findings.append(
                    Finding(
                        "empty_target",
                        inst.id,
                        r.id,
                        f"empty list for {', '.join(empty)}: the rule matches no request",
                        "list at least one value, or drop the key to mean any",
                        r.location,
                    )
                )
            for problem in _contradictions(r.when):
                findings.append(
                    Finding(
                        "contradictory_conditions",
                        inst.id,
                        r.id,
                        f"'when' can never hold: {problem}",
                        "fix the bounds or split the rule",
                        r.location,
                    )
                )
    findings.extend(_app_findings(policy))
    rules = [(b.instrument.id, r) for b in policy.bundles for r in b.rules if r.mode == "enforce"]

    def outlives(big: str, small: str) -> bool:
        (s1, e1), (s2, e2) = spans[big], spans[small]
        return s1 <= s2 and (e1 is None or (e2 is not None and e2 <= e1))

    for iid, r in rules:
        for jid, d in rules:
            if d is r or d.dynamic or not outlives(jid, iid) or not rule_covers(d, r):
                continue
            if r.effect == "permit" and d.effect == "deny":
                findings.append(
                    Finding(
                        "shadowed",
                        iid,
                        r.id,
                        f"every request it permits is denied by rule '{d.id}' ({jid}), "
                        "which is in force whenever it is: it never decides anything",
                        f"narrow '{d.id}' or add an exception (unless) to it",
                        r.location,
                    )
                )
                break
            if (
                r.effect == d.effect
                and not r.obligations
                and rule_covers(r, d) is False
                and iid == jid
            ):
                findings.append(
                    Finding(
                        "redundant",
                        iid,
                        r.id,
                        f"covered by rule '{d.id}' with the same effect in the same instrument",
                        "drop it, or keep it only for its description",
                        r.location,
                    )
                )
                break
    return findings


# --- the finite domain --------------------------------------------------------------------------


def _classes(
    keys: Iterable[str | None], signature: dict[str | None, tuple[object, ...]]
) -> list[list[str | None]]:
    groups: dict[tuple[object, ...], list[str | None]] = {}
    for k in keys:
        groups.setdefault(signature[k], []).append(k)
    return list(groups.values())


#: a request shape as consent witnesses see it: (has a recipient, has a purpose)
Shape = tuple[bool, bool]
SHAPES: tuple[Shape, ...] = ((False, False), (False, True), (True, False), (True, True))
Probe = Callable[[Request], bool]
CONSENT_NAMES = ("recipient", "purpose", "method", "categories")
#: at most this many distinct (separate, names) consent requirements are enumerated exactly
MAX_CONSENT_KEYS = 6
#: at most this many scopes / set members one field's ``contains`` conditions name
MAX_CONTAINS = 6


@dataclass(frozen=True)
class ContextBin:
    """One bin of a context axis: every request whose context falls in it decides alike.

    ``value``: what the representative request carries (a time, a status, a scope set, an
    attribute mapping, or a :class:`ConsentWitness`; None = absent); ``machine``: its JSON form;
    ``label``: its display; ``shapes``: for consent bins, the request shapes (has recipient, has
    purpose) the witness is built for (None = every shape).
    """

    value: object
    machine: object
    label: str
    shapes: frozenset[Shape] | None = None
    #: per part of the axis (:attr:`ContextAxis.parts`), the index of this bin's value
    parts: tuple[int, ...] = (0,)

    def applies(self, shape: Shape) -> bool:
        return self.shapes is None or shape in self.shapes


@dataclass
class ContextAxis:
    """A finite partition of one part of the request context (module docstring).

    ``probes``: the conditions of the compared sets that read this part; two requests with the
    same probe results decide alike, and every achievable probe result has a bin (for every
    request shape).
    """

    name: str
    bins: list[ContextBin]
    probes: list[Probe] = field(default_factory=list)
    #: the parts a rule can read separately (the attribute names of subject / context, else the
    #: axis name); each bin has one value index per part
    parts: tuple[str, ...] = ()
    #: per part, the display of each value index
    part_labels: list[list[str]] = field(default_factory=list)

    def applicable(self, shape: Shape) -> tuple[int, ...]:
        return tuple(i for i, b in enumerate(self.bins) if b.applies(shape))

    def signature(self, req: Request) -> tuple[bool, ...]:
        return tuple(p(req) for p in self.probes)


@dataclass(frozen=True)
class ConsentWitness:
    """Consent records a representative request carries, built for that request: each record is
    ``(state, separate, names)``; its categories / purposes / recipient are the request's own (so
    it covers the request), it states exactly ``names`` (``categories`` always), and it is active
    (given at the request time) or withdrawn (given a second before, withdrawn at the request
    time)."""

    records: tuple[tuple[str, bool, frozenset[str]], ...] = ()

    def build(
        self, category: str, purpose: str | None, recipient: str | None, at: datetime, any_p: str
    ) -> tuple[ConsentRecord, ...]:
        out: list[ConsentRecord] = []
        for i, (state, sep, names) in enumerate(self.records):
            active = state == "active"
            out.append(
                ConsentRecord(
                    f"witness-{i + 1}",
                    frozenset({category}),
                    frozenset({purpose or any_p}) if "purpose" in names else frozenset(),
                    recipient=(recipient or "other-app") if "recipient" in names else None,
                    method="stated" if "method" in names else None,
                    separate=sep,
                    given_at=at if active else at - timedelta(seconds=1),
                    withdrawn_at=None if active else at,
                )
            )
        return tuple(out)

    def label(self) -> str:
        if not self.records:
            return "no consent"
        parts = []
        for state, sep, names in self.records:
            shown = ",".join(n for n in CONSENT_NAMES if n in names)
            kind = ("separate " if sep else "") + ("withdrawn " if state == "withdrawn" else "")
            parts.append(f"{kind}consent naming {shown}")
        return " + ".join(parts)

    def machine(self) -> object:
        if not self.records:
            return None
        return [
            {
                "state": state,
                "separate": sep,
                "names": [n for n in CONSENT_NAMES if n in names],
            }
            for state, sep, names in self.records
        ]


@dataclass
class _Domain:
    actions: list[list[str | None]]
    purposes: list[list[str | None]]
    categories: list[list[str | None]]
    apps: list[list[str | None]]
    controllers: list[list[str | None]]
    recipients: list[list[str | None]]
    origin_sets: list[tuple[frozenset[str], str]]
    times: list[datetime]
    exact: bool = True
    #: one :class:`ContextAxis` per name of :data:`CONTEXT_AXES`; bin 0 is "absent"
    contexts: list[ContextAxis] = field(default_factory=list)
    context_enumerated: bool = True
    #: the vocabularies of every compared set (built in plus their taxonomy extensions)
    taxonomy: Taxonomies = BUILTIN_TAXONOMIES
    #: (representative, members) per origin class
    origin_classes: list[tuple[str, list[str | None]]] = field(default_factory=list)
    #: why the analysis is not exact (empty when it is)
    why_inexact: list[str] = field(default_factory=list)
    #: :func:`_choices` per (request shape, context parts read)
    choice_cache: dict[tuple[Shape, frozenset[tuple[int, str]]], list[list[tuple[int, ...]]]] = (
        field(default_factory=dict)
    )


CONTEXT_FIELDS = (
    "grant_first_used_by_recipient_at",
    "grant_granted_at",
    "grant_status",
    "grant_scopes",
    "subject",
    "context",
    "consents",
)
CONTEXT_AXES = (
    "first_used",
    "granted",
    "grant_status",
    "scopes",
    "subject",
    "context",
    "consent",
)
_FIELD_AXIS = {
    "grant.first_used_by_recipient_at": 0,
    "grant.granted_at": 1,
    "grant.status": 2,
    "grant.scopes": 3,
}
_ABSENT = ContextBin(None, None, "absent")
_MISSING = object()
_EMPTY: dict[str, object] = {
    "grant_first_used_by_recipient_at": None,
    "grant_granted_at": None,
    "grant_status": None,
    "grant_scopes": None,
    "subject": {},
    "context": {},
}
_NO_CONSENT = ContextBin(ConsentWitness(), None, "no consent")


def _cond_axis(cond: object) -> int:
    if isinstance(cond, ConsentCondition):
        return 6
    assert isinstance(cond, FieldCondition)
    if cond.field in _FIELD_AXIS:
        return _FIELD_AXIS[cond.field]
    return 4 if cond.field.startswith("subject.") else 5


def rule_context_axes(rule: Rule) -> frozenset[int]:
    """Indexes into :data:`CONTEXT_AXES` of the context parts ``rule``'s conditions read."""
    return frozenset(j for j, _ in rule_context_parts(rule))


def rule_context_parts(rule: Rule) -> frozenset[tuple[int, str]]:
    """The context parts ``rule``'s conditions read: (index into :data:`CONTEXT_AXES`, part)
    where part is the attribute name for subject / context (``subject.age``) and the axis name
    otherwise."""
    out: set[tuple[int, str]] = set()
    for c in (*rule.when, *rule.unless_conditions):
        j = _cond_axis(c)
        out.add((j, c.field if j in (4, 5) and isinstance(c, FieldCondition) else CONTEXT_AXES[j]))
    if rule.unless is not None:
        if rule.unless.grant_first_used_by_recipient_before is not None:
            out.add((0, CONTEXT_AXES[0]))
        if rule.unless.grant_granted_before is not None:
            out.add((1, CONTEXT_AXES[1]))
        out.add((2, CONTEXT_AXES[2]))  # a revoked / expired grant is never excepted
    return frozenset(out)


def _all_conditions(policies: list[PolicySet]) -> list[object]:
    seen: dict[str, object] = {}
    for ps in policies:
        for _, rule in ps.rules():
            for c in (*rule.when, *rule.unless_conditions):
                seen.setdefault(repr(c), c)
    return list(seen.values())


def _grant_context(policies: list[PolicySet]) -> list[list[ContextBin]]:
    """The bins of the grant fields that conditions read: each time field cut at every day a
    condition compares it with (a bin is represented by its first instant; the first bin by the
    day before the first cut), the grant status by its three values; a field no condition reads
    has the single bin "absent" (conditions read nothing else of it)."""
    cuts: dict[str, set[datetime]] = {
        "grant_first_used_by_recipient_at": set(),
        "grant_granted_at": set(),
    }
    reads: set[str] = set()
    for ps in policies:
        for _, rule in ps.rules():
            if rule.unless is not None:
                for d, name in (
                    (
                        rule.unless.grant_first_used_by_recipient_before,
                        "grant_first_used_by_recipient_at",
                    ),
                    (rule.unless.grant_granted_before, "grant_granted_at"),
                ):
                    if d is not None:
                        cuts[name].add(rule.unless.cut(d))
                        reads.add(name)
                reads.add("grant_status")  # a revoked / expired grant is never excepted
            for cond in (*rule.when, *rule.unless_conditions):
                if not isinstance(cond, FieldCondition):
                    continue
                fname = {
                    "grant.first_used_by_recipient_at": "grant_first_used_by_recipient_at",
                    "grant.granted_at": "grant_granted_at",
                    "grant.status": "grant_status",
                }.get(cond.field)
                if fname is None:
                    continue
                reads.add(fname)
                for d in (cond.before, cond.on_or_after):
                    if d is not None and fname in cuts:
                        cuts[fname].add(cond.cut(d))
    out: list[list[ContextBin]] = []
    for name in CONTEXT_FIELDS[:3]:
        bins = [_ABSENT]
        if name in reads and name == "grant_status":
            bins += [ContextBin(v, v, v) for v in ("active", "revoked", "expired")]
        elif name in reads:
            days = sorted(cuts[name])
            if not days:
                bins.append(ContextBin(datetime(2000, 1, 1, tzinfo=UTC), "present", "present"))
            else:
                # each cut an instant (local midnight in its rule's zone); a bin is shown by
                # the days that bound it (day_text: "2019-03-20 Asia/Shanghai" when zoned)
                first = days[0]
                bins.append(
                    ContextBin(
                        first - timedelta(days=1),
                        f"[,{day_machine(first)})",
                        f"before {day_text(first)}",
                    )
                )
                for k, d in enumerate(days):
                    end = day_text(days[k + 1]) if k + 1 < len(days) else ""
                    end_m = day_machine(days[k + 1]) if k + 1 < len(days) else ""
                    bins.append(
                        ContextBin(
                            d,
                            f"[{day_machine(d)},{end_m})",
                            f"{day_text(d)} to {end}" if end else f"from {day_text(d)}",
                        )
                    )
        out.append(bins)
    return out


_PROBE_AT = datetime(2000, 1, 1, tzinfo=UTC)


def _probe_request(**kw: Any) -> Request:
    return Request("probe", "store", "user", frozenset({"unknown"}), _PROBE_AT, **kw)


def _machine(v: object) -> object:
    if isinstance(v, frozenset):
        return sorted(v)
    if isinstance(v, date):
        return v.isoformat()
    return v


def _shown(v: object) -> str:
    if isinstance(v, frozenset):
        return "{" + ", ".join(sorted(v)) + "}"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else repr(v)
    if isinstance(v, date):
        return v.isoformat()
    return repr(v)


def _field_candidates(name: str, conds: list[FieldCondition]) -> list[object]:
    """Values of field ``name`` that realise every combination of its conditions' outcomes:
    absent, each constant, a string outside them, numbers at and between the thresholds, days at
    the cuts and a time inside each cut day, every subset of the ``contains`` members, and a value
    of no operator's type (raises :class:`ValueError` past :data:`MAX_CONTAINS`)."""
    strs: set[str] = set()
    nums: set[float] = set()
    days: set[date] = set()
    cuts: set[datetime] = set()
    members: set[str] = set()
    for c in conds:
        eq = c.equals
        if isinstance(eq, str):
            strs.add(eq)
        elif isinstance(eq, bool):
            pass
        elif isinstance(eq, int | float):
            nums.add(float(eq))
        elif isinstance(eq, date):
            days.add(eq)
        strs.update(c.in_ or ())
        strs.update(c.not_in or ())
        days.update(d for d in (c.before, c.on_or_after) if d is not None)
        cuts.update(c.cut(d) for d in (c.before, c.on_or_after) if d is not None)
        nums.update(n for n in (c.at_least, c.below) if n is not None)
        if c.contains is not None:
            members.add(c.contains)
    if len(members) > MAX_CONTAINS:
        raise ValueError(f"'{name}' is tested for {len(members)} members")
    subsets: list[object] = [
        frozenset(s)
        for k in range(len(members) + 1)
        for s in itertools.combinations(sorted(members), k)
    ]
    if name == "grant.scopes":
        return [_MISSING, *subsets]
    other = "(other)"
    while other in strs:
        other += "~"
    out: list[object] = [_MISSING, *sorted(strs), other, True, False]
    ns = sorted(nums)
    if ns:
        out.append(ns[0] - 1)
        for i, n in enumerate(ns):
            out.append(n)
            out.append((n + ns[i + 1]) / 2 if i + 1 < len(ns) else n + 1)
    ds = sorted(days)
    if ds:
        # date values (read in each condition's zone, so they order like the cut days) ...
        out.append(ds[0] - timedelta(days=1))
        out.extend(ds)
    ts = sorted(cuts)
    if ts:
        # ... and times: one before every cut, every cut instant and one inside each gap (cuts
        # of different zones interleave), so every ordering a time can have is realised
        out.append(ts[0] - timedelta(days=2))
        for i, t in enumerate(ts):
            out.append(t)
            nxt = ts[i + 1] if i + 1 < len(ts) else t + timedelta(days=1)
            out.append(t + (nxt - t) / 2)
    out.extend(subsets)
    return out


def _field_axis(
    axis: str, conds: list[FieldCondition]
) -> tuple[list[ContextBin], list[Probe], tuple[str, ...], list[list[str]]]:
    """Bins of the subject, context or scopes axis: per field, its candidate values deduplicated
    by the outcomes of the field's conditions; the axis is the product over fields."""
    by_field: dict[str, list[FieldCondition]] = {}
    for c in conds:
        by_field.setdefault(c.field, []).append(c)
    per_field: list[tuple[str, list[object]]] = []
    shown_of: list[list[str]] = []
    for name in sorted(by_field):
        fconds = by_field[name]
        has_bool = any(isinstance(c.equals, bool) for c in fconds)
        has_set = any(c.contains is not None for c in fconds)
        has_str = any(
            isinstance(c.equals, str) or c.in_ is not None or c.not_in is not None for c in fconds
        )
        order: dict[tuple[bool, ...], int] = {}
        kept: list[object] = []
        alike: list[list[str]] = []
        for v in _field_candidates(name, fconds):
            req = _with_field(name, v)
            sig = tuple(field_holds(c, req) for c in fconds)
            if sig not in order:
                order[sig] = len(kept)
                kept.append(v)
                alike.append([])
            elif not (
                (isinstance(v, bool) and not has_bool)
                or (isinstance(v, frozenset) and not v and not has_set)
                or (isinstance(v, str) and not has_str)
            ):
                # a value of a type some condition reads that falls in an earlier bin
                alike[order[sig]].append(_shown(v))
        per_field.append((name, kept))
        shown_of.append(
            [
                ("absent" if v is _MISSING else _shown(v))
                + (f" (or {', '.join(more)})" if more else "")
                for v, more in zip(kept, alike, strict=True)
            ]
        )
    bins: list[ContextBin] = []
    for parts in itertools.product(*(range(len(vals)) for _, vals in per_field)):
        combo = [vals[k] for (_, vals), k in zip(per_field, parts, strict=True)]
        present = [(n, v) for (n, _), v in zip(per_field, combo, strict=True) if v is not _MISSING]
        if axis == "scopes":
            value: object = None if not present else present[0][1]
            machine: object = None if not present else _machine(present[0][1])
        else:
            value = {n.split(".", 1)[1]: v for n, v in present} or None
            machine = {n.split(".", 1)[1]: _machine(v) for n, v in present} or None
        shown = [
            _part_label(n, shown_of[f][k])
            for f, ((n, _), k) in enumerate(zip(per_field, parts, strict=True))
            if combo[f] is not _MISSING or shown_of[f][k] != "absent"
        ]
        bins.append(ContextBin(value, machine, "; ".join(shown) or "absent", parts=parts))
    probes: list[Probe] = [functools.partial(field_holds, c) for c in conds]
    names = tuple(n for n, _ in per_field)
    if axis == "scopes" or not names:
        bins = [dataclasses.replace(b, parts=(i,)) for i, b in enumerate(bins)]
        return bins, probes, (axis,), [[b.label for b in bins]]
    return bins, probes, names, shown_of


def _part_label(name: str, value_label: str) -> str:
    return (
        f"{name} {value_label}" if value_label.startswith("absent") else f"{name} = {value_label}"
    )


def _with_field(name: str, v: object) -> Request:
    if name == "grant.scopes":
        return _probe_request(grant_scopes=None if v is _MISSING else v)
    attrs = {} if v is _MISSING else {name.split(".", 1)[1]: v}
    if name.startswith("subject."):
        return _probe_request(subject=attrs)
    return _probe_request(context=attrs)


def _consent_axis(conds: list[ConsentCondition]) -> tuple[list[ContextBin], list[Probe]]:
    """Consent bins: per request shape, every outcome of the consent conditions is realised by a
    witness (module docstring); one bin per distinct witness, tagged with its shapes."""
    if not conds:
        return [_NO_CONSENT], []
    keys = sorted(
        {(c.consent.separate, frozenset(c.consent.names)) for c in conds},
        key=lambda k: (k[0], len(k[1]), sorted(k[1])),
    )
    if len(keys) > MAX_CONSENT_KEYS:
        raise ValueError(f"{len(keys)} distinct consent requirements")
    act = {
        (c.consent.separate, frozenset(c.consent.names))
        for c in conds
        if c.consent.state == "active"
    }
    wdn = {
        (c.consent.separate, frozenset(c.consent.names))
        for c in conds
        if c.consent.state == "withdrawn"
    }
    used = frozenset().union(*(k[1] for k in keys))
    seps = (True, False) if any(k[0] for k in keys) else (True,)
    witnesses: dict[ConsentWitness, set[Shape]] = {ConsentWitness(): set(SHAPES)}
    for shape in SHAPES:
        forced = frozenset(
            {"categories"}
            | ({"recipient"} if shape[0] else set())
            | ({"purpose"} if shape[1] else set())
        )
        free = sorted(used - forced)
        gens: dict[frozenset[tuple[bool, frozenset[str]]], tuple[bool, frozenset[str]]] = {}
        for k in range(len(free) + 1):
            for extra in itertools.combinations(free, k):
                names = forced | frozenset(extra)
                for s in seps:
                    sat = frozenset(key for key in keys if (s or not key[0]) and key[1] <= names)
                    gens.setdefault(sat, (s, names))

        def closure(
            gens: dict[frozenset[tuple[bool, frozenset[str]]], tuple[bool, frozenset[str]]],
        ) -> dict[frozenset[tuple[bool, frozenset[str]]], tuple[tuple[bool, frozenset[str]], ...]]:
            out: dict[
                frozenset[tuple[bool, frozenset[str]]], tuple[tuple[bool, frozenset[str]], ...]
            ] = {frozenset(): ()}
            for sat, t in gens.items():
                for have, recs in list(out.items()):
                    out.setdefault(have | sat, (*recs, t))
            return out

        configs = closure(gens)
        seen: set[tuple[frozenset[object], frozenset[object]]] = set()
        for a_set, a_recs in configs.items():
            for w_set, w_recs in configs.items():
                sig = (frozenset(a_set & act), frozenset((w_set - a_set) & wdn))
                if sig in seen:
                    continue
                seen.add(sig)
                w = ConsentWitness(
                    tuple(("active", s, n) for s, n in a_recs)
                    + tuple(("withdrawn", s, n) for s, n in w_recs)
                )
                witnesses.setdefault(w, set()).add(shape)
    bins = [
        ContextBin(w, w.machine(), w.label(), None if len(sh) == len(SHAPES) else frozenset(sh))
        for w, sh in witnesses.items()
    ]
    probes: list[Probe] = [functools.partial(consent_holds, c) for c in conds]
    return bins, probes


def _context_axes(policies: list[PolicySet], why: list[str]) -> list[ContextAxis]:
    grant = _grant_context(policies)
    conds = _all_conditions(policies)
    axes: list[ContextAxis] = []
    for j, name in enumerate(CONTEXT_AXES):
        mine = [c for c in conds if _cond_axis(c) == j]
        probes: list[Probe]
        parts: tuple[str, ...] = (name,)
        labels: list[list[str]] | None = None
        try:
            if j < 3:
                bins = grant[j]
                probes = [functools.partial(holds, c) for c in mine]  # type: ignore[arg-type]
                probes += _legacy_probes(policies, j)
            elif j < 6:
                bins, probes, parts, labels = _field_axis(
                    name, [c for c in mine if isinstance(c, FieldCondition)]
                )
            else:
                bins, probes = _consent_axis([c for c in mine if isinstance(c, ConsentCondition)])
        except ValueError as exc:
            why.append(f"{name} not enumerated ({exc}); evaluated absent")
            bins, probes, parts = [_NO_CONSENT if j == 6 else _ABSENT], [], (name,)
            labels = None
        if labels is None:
            bins = [dataclasses.replace(b, parts=(i,)) for i, b in enumerate(bins)]
            labels = [[b.label for b in bins]]
        axes.append(ContextAxis(name, bins, probes, parts, labels))
    return axes


def _legacy_probes(policies: list[PolicySet], j: int) -> list[Probe]:
    """What the grant-time exceptions (``unless: {grant_first_used_by_recipient_before |
    grant_granted_before: D}``) read of grant axis ``j`` (0 first use, 1 grant time, 2 status):
    one "before the cut" probe per cut day on a time axis, and on the status axis one probe
    "the grant has ended" (:data:`~provguard.decide.reference.ENDED_GRANT_STATUSES`: a revoked
    or expired grant is never excepted), so that :meth:`DiffResult.locate` puts a revoked
    request in the revoked bin and not in the absent one, whose exception holds."""
    if j == 2:
        if any(rule.unless is not None for ps in policies for _, rule in ps.rules()):
            return [_grant_ended]
        return []
    cuts: set[datetime] = set()
    for ps in policies:
        for _, rule in ps.rules():
            if rule.unless is None:
                continue
            d = (
                rule.unless.grant_first_used_by_recipient_before
                if j == 0
                else rule.unless.grant_granted_before
            )
            if d is not None:
                cuts.add(rule.unless.cut(d))
    attr = CONTEXT_FIELDS[j]

    def before(cut: datetime, req: Request) -> bool:
        t = getattr(req, attr)
        return t is not None and t < cut

    return [functools.partial(before, c) for c in sorted(cuts)]


def _grant_ended(req: Request) -> bool:
    return req.grant_status in ENDED_GRANT_STATUSES


def _domain(
    compiled: list[CompiledPolicy], *, fixed: dict[str, list[str | None]] | None = None
) -> _Domain:
    """The finite request domain of ``compiled`` (see the module docstring)."""
    fixed = fixed or {}
    contexts_why: list[str] = []
    contexts = _context_axes([c.policy for c in compiled], contexts_why)
    # consent witnesses differ by whether the request has a recipient / a purpose: keep the
    # absent value in a class of its own on those axes when consents are read
    split_none = len(contexts[6].bins) > 1

    def sel_axis(attr: str, other_attr: str, with_none: bool) -> list[list[str | None]]:
        named: set[str | None] = set()
        for c in compiled:
            named.update(k for k in getattr(c, attr) if k is not None)
        keys: list[str | None] = [*sorted(n for n in named if n is not None), OTHER]
        if with_none:
            keys.append(None)
        sig: dict[str | None, tuple[object, ...]] = {
            k: (
                *(
                    getattr(c, attr).get(k, getattr(c, other_attr))
                    if k != OTHER
                    else getattr(c, other_attr)
                    for c in compiled
                ),
                split_none and attr == "_recipient" and k is None,
            )
            for k in keys
        }
        return _classes(keys, sig)

    def key_mask(c: CompiledPolicy, attr: str, k: str | None) -> int:
        # a key only another set's taxonomy extension adds: see hier_mask
        index: dict[str | None, int] = getattr(c, attr)
        if attr == "_action":
            return index.get(k, 0)
        return hier_mask(index, k, getattr(c, f"{attr}_down"))

    def key_axis(attr: str, keys: Iterable[str | None]) -> list[list[str | None]]:
        ks = list(keys)
        sig: dict[str | None, tuple[object, ...]] = {
            k: (
                *(key_mask(c, attr, k) for c in compiled),
                split_none and attr == "_purpose" and k is None,
            )
            for k in ks
        }
        return _classes(ks, sig)

    def union_keys(which: str) -> set[str]:
        return set().union(*(getattr(c.policy.taxonomy, which).keys for c in compiled))

    origins: set[str] = set()
    for c in compiled:
        origins.update(c._origin)
    okeys: list[str | None] = [*sorted(origins), OTHER]
    osig: dict[str | None, tuple[object, ...]] = {
        k: tuple(
            c._origin.get(str(k), c._origin_other) if k != OTHER else c._origin_other
            for c in compiled
        )
        for k in okeys
    }
    oclasses = _classes(okeys, osig)
    exact = len(oclasses) <= MAX_ORIGIN_CLASSES
    why = list(contexts_why)
    if not exact:
        why.append(
            f"{len(oclasses)} origin classes (more than {MAX_ORIGIN_CLASSES}): single origins only"
        )
    reps = [(str(cls[0]) if cls[0] != OTHER else "apple", cls) for cls in oclasses]
    origin_sets: list[tuple[frozenset[str], str]] = []
    sizes = range(1, len(reps) + 1) if exact else range(1, 2)
    for size in sizes:
        for combo in itertools.combinations(reps, size):
            origin_sets.append(
                (
                    frozenset(str(r) for r, _ in combo),
                    " + ".join(_show(cls) for _, cls in combo),
                )
            )
    bounds: set[datetime] = set()
    for c in compiled:
        bounds.update(c._bound_labels.values())  # local midnights (labels show the zone)
    times = [datetime(1, 1, 2, tzinfo=UTC), *sorted(bounds)]
    dom = _Domain(
        actions=key_axis("_action", sorted(union_keys("actions"))),
        purposes=key_axis("_purpose", [None, *sorted(union_keys("purposes"))]),
        categories=key_axis("_category", sorted(union_keys("categories"))),
        apps=sel_axis("_app", "_app_other", False),
        controllers=sel_axis("_controller", "_controller_other", True),
        recipients=sel_axis("_recipient", "_recipient_other", True),
        origin_sets=origin_sets,
        times=times,
        exact=exact and not contexts_why,
        contexts=contexts,
        taxonomy=BUILTIN_TAXONOMIES.extended(
            k for c in compiled for b in c.policy.bundles for k in b.taxonomy_extensions
        ),
        origin_classes=reps,
        why_inexact=why,
    )
    for name, values in fixed.items():
        setattr(dom, name, [[v] for v in values])
    return dom


def _absent_contexts() -> list[ContextAxis]:
    return [
        ContextAxis(n, [_NO_CONSENT if n == "consent" else _ABSENT], [], (n,)) for n in CONTEXT_AXES
    ]


def _show(cls: list[str | None]) -> str:
    first = "none" if cls[0] is None else str(cls[0])
    return first if len(cls) == 1 else f"{first} (+{len(cls) - 1})"


AXES = (
    "from",
    "action",
    "purpose",
    "category",
    "app",
    "controller",
    "recipient",
    "origins",
    *CONTEXT_AXES,
)


def _context_kwargs(
    dom: _Domain,
    bins: Iterable[ContextBin],
    category: str,
    purpose: str | None,
    recipient: str | None,
    at: datetime,
) -> dict[str, Any]:
    """Request keyword arguments carrying ``bins`` (one per context axis)."""
    out: dict[str, Any] = {}
    for name, b in zip(CONTEXT_FIELDS, bins, strict=True):
        if isinstance(b.value, ConsentWitness):
            if b.value.records:
                out[name] = b.value.build(
                    category, purpose, recipient, at, min(dom.taxonomy.purposes.keys)
                )
        elif b.value is not None:
            out[name] = b.value
    return out


@dataclass
class _Combo:
    """One combination of target-axis classes and a validity segment, before origins and
    context: its request maker, display, class indexes and the context axes its candidate rules
    read."""

    make: Callable[..., Request]
    shown: dict[str, str]
    index: tuple[int, ...]
    shape: Shape
    category: str
    purpose: str | None
    recipient: str | None
    at: datetime
    reads: frozenset[tuple[int, str]]


def _rule_reads(cp: CompiledPolicy) -> list[frozenset[tuple[int, str]]]:
    return [rule_context_parts(cr.rule) for cr in cp._crules]


def _combos(
    dom: _Domain,
    compiled: list[CompiledPolicy],
    keep: Callable[[Request], bool] | None = None,
    *,
    only: tuple[int, ...] | None = None,
) -> list[_Combo]:
    """Every combination of target classes and segment (``keep(r)``, r = the request with every
    origin class, may skip one), with the context axes the candidate rules of ``compiled`` read
    for any origin set; ``only``: just the combination with these class indexes."""
    every = frozenset().union(*(o for o, _ in dom.origin_sets)) if dom.origin_sets else None
    reads_of = [_rule_reads(cp) for cp in compiled]
    ranges = [
        range(len(x))
        for x in (dom.actions, dom.purposes, dom.categories, dom.apps, dom.controllers)
    ]
    out: list[_Combo] = []
    if only is not None:
        ranges = [range(i, i + 1) for i in only[1:6]]
    for t_i, t in enumerate(dom.times):
        if only is not None and t_i != only[0]:
            continue
        for i_a, i_p, i_c, i_app, i_ctrl, i_rec in itertools.product(
            *ranges, range(len(dom.recipients)) if only is None else range(only[6], only[6] + 1)
        ):
            action, purpose, category = dom.actions[i_a], dom.purposes[i_p], dom.categories[i_c]
            app, ctrl, recip = dom.apps[i_app], dom.controllers[i_ctrl], dom.recipients[i_rec]
            # a class is represented by one member: when that member cannot form a valid
            # request (no purpose for use/derive/display, no recipient for transfer), take
            # another member of the same class, which decides identically by construction
            picked: tuple[str | None, str | None, list[str | None]] | None = None
            for a in action:
                p, rc = purpose[0], recip
                if a in ("use", "derive", "display") and p is None:
                    p = next((x for x in purpose if x is not None), None)
                    if p is None:
                        continue
                if a == "transfer" and rc[0] is None:
                    other = [x for x in rc if x is not None]
                    if not other:
                        continue
                    rc = [other[0], *[x for x in rc if x != other[0]]]
                picked = (a, p, rc)
                break
            if picked is None:
                continue
            a, p, recip = picked
            recipient = (
                None if recip[0] is None else ("other-app" if recip[0] == OTHER else recip[0])
            )
            make = functools.partial(
                Request,
                taxonomy=dom.taxonomy,
                app=str(app[0]) if app[0] != OTHER else "other-app",
                action=str(a),
                category=str(category[0]),
                at=t,
                purpose=p,
                recipient=recipient,
                controller=None
                if ctrl[0] is None
                else ("other-controller" if ctrl[0] == OTHER else ctrl[0]),
            )
            reads: set[tuple[int, str]] = set()
            if every is not None and dom.origin_sets:
                probe = make(origins=every)
                if keep is not None and not keep(probe):
                    continue
                for cp, rr in zip(compiled, reads_of, strict=True):
                    m = cp.candidates(probe, cp.segment(t))
                    while m:
                        low = m & -m
                        reads |= rr[low.bit_length() - 1]
                        m ^= low
            out.append(
                _Combo(
                    make,
                    {
                        "from": day_text(t) if t.year > 1 else "(start)",
                        "action": _show(action),
                        "purpose": _show(purpose),
                        "category": _show(category),
                        "app": _show(app),
                        "controller": _show(ctrl),
                        "recipient": _show(recip),
                    },
                    (t_i, i_a, i_p, i_c, i_app, i_ctrl, i_rec),
                    (recipient is not None, p is not None),
                    str(category[0]),
                    p,
                    recipient,
                    t,
                    frozenset(reads),
                )
            )
    return out


def _choices(dom: _Domain, combo: _Combo) -> list[list[tuple[int, ...]]]:
    """Per context axis, the bin groups to decide: the applicable bins grouped by their values on
    the parts the combination's rules read (one group of every applicable bin when they read
    none of the axis); the bins of a group decide alike, the first represents it."""
    key = (combo.shape, combo.reads)
    cached = dom.choice_cache.get(key)
    if cached is not None:
        return cached
    out: list[list[tuple[int, ...]]] = []
    dom.choice_cache[key] = out
    for j, ax in enumerate(dom.contexts):
        pos = [k for k, part in enumerate(ax.parts) if (j, part) in combo.reads]
        groups: dict[tuple[int, ...], list[int]] = {}
        for b in ax.applicable(combo.shape):
            groups.setdefault(tuple(ax.bins[b].parts[k] for k in pos), []).append(b)
        out.append([tuple(g) for g in groups.values()])
    return out


def _decisions(dom: _Domain, combos: list[_Combo]) -> int:
    n = 0
    for combo in combos:
        k = len(dom.origin_sets)
        for ch in _choices(dom, combo):
            k *= len(ch)
        n += k
    return n


def _requests(
    dom: _Domain, combos: list[_Combo]
) -> Iterator[tuple[Request, _Combo, int, tuple[tuple[int, ...], ...]]]:
    """Every request to decide: the request (origin set and first bin of each context group),
    its combination, origin-set index, and per context axis the bins it stands for."""
    for combo in combos:
        choices = _choices(dom, combo)
        for o_i, (origin_set, _) in enumerate(dom.origin_sets):
            for groups in itertools.product(*choices):
                bins = [ax.bins[g[0]] for ax, g in zip(dom.contexts, groups, strict=True)]
                extra = _context_kwargs(
                    dom, bins, combo.category, combo.purpose, combo.recipient, combo.at
                )
                yield combo.make(origins=origin_set, **extra), combo, o_i, groups


def _prepare(
    compiled: list[CompiledPolicy],
    keep: Callable[[Request], bool] | None = None,
    fixed: dict[str, list[str | None]] | None = None,
    origin: str | None = None,
) -> tuple[_Domain, list[_Combo]]:
    """The domain and its combinations; falls back to absent context (``exact`` False, with the
    reason) when enumerating it would take more than :data:`MAX_CONTEXT_REQUESTS` decisions."""
    dom = _domain(compiled, fixed=fixed)
    if origin is not None:
        dom.origin_sets = [(frozenset({origin}), origin)]
    combos = _combos(dom, compiled, keep)
    if any(len(ax.bins) > 1 for ax in dom.contexts):
        n = _decisions(dom, combos)
        if n > MAX_CONTEXT_REQUESTS:
            dom.contexts = _absent_contexts()
            dom.choice_cache = {}
            dom.context_enumerated = False
            dom.exact = False
            dom.why_inexact.append(
                f"request context not enumerated: {n} requests exceed MAX_CONTEXT_REQUESTS "
                f"({MAX_CONTEXT_REQUESTS}); grant fields, scopes, subject, context and consents "
                "evaluated absent, rows of rules with conditions marked context_dependent"
            )
            combos = _combos(dom, compiled, keep)
    return dom, combos


def _verdict(d: Decision) -> str:
    rules = ",".join(r.rule_id for r in d.determining)
    label = d.effect + (" (excepted)" if d.excepted else "")
    return f"{label} [{rules}]" if rules else label


#: an obligation as ``diff`` compares it: (kind, strategy, within seconds, target), without the
#: rule that attached it
ObligationKey = tuple[str, str | None, int | None, str | None]


@dataclass(frozen=True)
class Verdict:
    """A decision reduced to what ``diff`` compares: effect, excepted, determining rule ids, and
    the obligations attached (as :data:`ObligationKey`, sorted)."""

    effect: str
    excepted: bool
    rules: tuple[str, ...]
    obligations: tuple[ObligationKey, ...] = ()

    @classmethod
    def of(cls, d: Decision) -> Verdict:
        obligations = sorted(
            {(o.kind, o.strategy, o.within_seconds, o.target) for o in d.obligations},
            key=repr,
        )
        return cls(
            d.effect, d.excepted, tuple(r.rule_id for r in d.determining), tuple(obligations)
        )

    def same_outcome(self, other: Verdict) -> bool:
        """True when ``other`` has the same effect, exception status and obligations (only the
        deciding rules differ: "same outcome, different rule")."""
        return (self.effect, self.excepted, self.obligations) == (
            other.effect,
            other.excepted,
            other.obligations,
        )

    def text(self) -> str:
        label = self.effect + (" (excepted)" if self.excepted else "")
        return f"{label} [{','.join(self.rules)}]" if self.rules else label

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "effect": self.effect,
            "excepted": self.excepted,
            "rules": list(self.rules),
        }
        if self.obligations:
            out["obligations"] = [
                {
                    k: v
                    for k, v in zip(
                        ("kind", "strategy", "within_seconds", "target"), o, strict=True
                    )
                    if v is not None
                }
                for o in self.obligations
            ]
        return out


@dataclass(frozen=True)
class DiffRow:
    """One class of requests whose decision differs between two policy sets.

    ``request``: display strings per axis (a class shows its first member and ``(+n)``);
    ``before`` / ``after``: display verdicts; ``index``: the class index per axis of
    :data:`AXES` into the diff's domain; ``verdicts``: the machine form of before / after.
    """

    request: dict[str, str]
    before: str
    after: str
    context_dependent: bool
    index: tuple[int, ...] = ()
    verdicts: tuple[Verdict, Verdict] | None = None


@dataclass(frozen=True)
class DiffGroup:
    """Request classes that change the same way, merged into one row of a compact table.

    ``values``: per axis of :data:`AXES`, the sorted class indexes the group covers, or None when
    it covers every class of that axis; ``count``: the request classes in the group.
    """

    values: tuple[tuple[int, ...] | None, ...]
    before: Verdict
    after: Verdict
    context_dependent: bool
    count: int

    @property
    def rule_only(self) -> bool:
        """True when only the deciding rule changes (same effect, exception and obligations)."""
        return self.before.same_outcome(self.after)


@dataclass
class DiffResult:
    """The classes whose decision changes. ``cubes``: the changes as found (a set of class
    indexes per axis of :data:`AXES`, the verdicts before / after, context_dependent: every
    class in the product changes that way); ``rows``: the same, one :class:`DiffRow` per class
    (built on first use); ``changed``: how many classes; ``requests_checked``: how many classes
    were checked (requests decided once per group of classes that decide alike)."""

    cubes: list[tuple[tuple[frozenset[int], ...], Verdict, Verdict, bool]] = field(
        default_factory=list
    )
    requests_checked: int = 0
    exact: bool = True
    domain: _Domain | None = None
    _rows: list[DiffRow] | None = None

    @property
    def changed(self) -> int:
        """Changed request classes: :attr:`changed_outcome` + :attr:`changed_rule_only`."""
        return self.changed_outcome + self.changed_rule_only

    def _count(self, rule_only: bool) -> int:
        total = 0
        for cube, before, after, _ in self.cubes:
            if before.same_outcome(after) is not rule_only:
                continue
            n = 1
            for v in cube:
                n *= len(v)
            total += n
        return total

    @property
    def changed_outcome(self) -> int:
        """Classes whose effect, exception status or obligations change."""
        return self._count(False)

    @property
    def changed_rule_only(self) -> int:
        """Classes with the same outcome (effect, exception, obligations) decided by another
        rule ("same outcome, different rule")."""
        return self._count(True)

    @property
    def rows(self) -> list[DiffRow]:
        if self._rows is None:
            self._rows = [
                DiffRow(self._shown(idx), before.text(), after.text(), ctx, idx, (before, after))
                for cube, before, after, ctx in self.cubes
                for idx in itertools.product(*(sorted(v) for v in cube))
            ]
        return self._rows

    def _shown(self, idx: tuple[int, ...]) -> dict[str, str]:
        dom = self.domain
        assert dom is not None
        out: dict[str, str] = {}
        for axis, i in zip(AXES, idx, strict=True):
            if axis == "from":
                t = dom.times[i]
                out[axis] = day_text(t) if t.year > 1 else "(start)"
            elif axis == "origins":
                out[axis] = dom.origin_sets[i][1]
            elif axis in CONTEXT_AXES:
                out[axis] = dom.contexts[CONTEXT_AXES.index(axis)].bins[i].label
            else:
                out[axis] = _show(getattr(dom, _DOMAIN_ATTR[axis])[i])
        return out

    def axis_members(self, axis: str, i: int) -> list[str | None]:
        """The values of class ``i`` of ``axis`` (``(other)`` = any value no rule names; None =
        absent; for ``from``: the first day of the validity segment, None = before every start;
        for ``origins``: the origin classes' first members)."""
        dom = self.domain
        assert dom is not None
        if axis == "from":
            t = dom.times[i]
            return [day_machine(t) if t.year > 1 else None]
        if axis == "origins":
            origins: list[str | None] = [o for o in sorted(dom.origin_sets[i][0])]
            return origins
        if axis in CONTEXT_AXES:
            return [dom.contexts[CONTEXT_AXES.index(axis)].bins[i].machine]  # type: ignore[list-item]
        return list(getattr(dom, _DOMAIN_ATTR[axis])[i])

    def axis_size(self, axis: str) -> int:
        dom = self.domain
        assert dom is not None
        if axis == "from":
            return len(dom.times)
        if axis == "origins":
            return len(dom.origin_sets)
        if axis in CONTEXT_AXES:
            return len(dom.contexts[CONTEXT_AXES.index(axis)].bins)
        return len(getattr(dom, _DOMAIN_ATTR[axis]))

    def representative(self, idx: tuple[int, ...]) -> Request | None:
        """The request that represents class ``idx`` (per axis of :data:`AXES`): the one
        :func:`diff` decided for it (with the consent records, attributes and grant fields of its
        context bins), or None when no request has that index (a use without purpose, a
        transfer without recipient, a consent witness of another request shape)."""
        dom = self.domain
        assert dom is not None
        c = idx[:_I_ORIGINS]
        for combo in _combos(dom, [], None, only=c):
            if not self.is_class(idx):
                return None
            bins = [ax.bins[b] for ax, b in zip(dom.contexts, idx[_I_ORIGINS + 1 :], strict=True)]
            extra = _context_kwargs(
                dom, bins, combo.category, combo.purpose, combo.recipient, combo.at
            )
            return combo.make(origins=dom.origin_sets[idx[_I_ORIGINS]][0], **extra)
        return None

    def locate(self, req: Request) -> tuple[int, ...] | None:
        """The class index per axis of :data:`AXES` of a concrete request ``req`` (any valid
        request, with any context), or None when the domain has no class for it (origin labels
        beyond single origins when ``exact`` is False). Every request of a class decides like the
        class's representative under both compared sets; its row is in :attr:`rows` exactly
        when its decision changes."""
        dom = self.domain
        assert dom is not None
        t_i = bisect_right(dom.times, req.at) - 1

        def member(classes: list[list[str | None]], value: str | None) -> int:
            for i, cls in enumerate(classes):
                if value in cls:
                    return i
            for i, cls in enumerate(classes):
                if OTHER in cls:
                    return i
            raise ValueError(f"no class for {value!r}")

        reps: set[str] = set()
        for o in req.origins:
            rep = next(
                (r for r, cls in dom.origin_classes if o in cls),
                next(r for r, cls in dom.origin_classes if OTHER in cls),
            )
            reps.add(rep)
        o_i = next((i for i, (s, _) in enumerate(dom.origin_sets) if s == reps), None)
        if o_i is None:
            return None
        shape = (req.recipient is not None, req.purpose is not None)
        ctx: list[int] = []
        for j, ax in enumerate(dom.contexts):
            want = ax.signature(req)
            found = None
            for b in ax.applicable(shape):
                bins = [_ABSENT] * len(dom.contexts)
                bins[j] = ax.bins[b]
                kw = _context_kwargs(dom, bins, req.category, req.purpose, req.recipient, req.at)
                field_name = CONTEXT_FIELDS[j]
                witness = dataclasses.replace(
                    req,
                    grant_facts="recorded",  # a bin's representative, not the caller's word
                    **{
                        field_name: kw.get(
                            field_name, () if field_name == "consents" else _EMPTY[field_name]
                        )
                    },
                )
                if ax.signature(witness) == want:
                    found = b
                    break
            if found is None:
                return None
            ctx.append(found)
        return (
            t_i,
            member(dom.actions, req.action),
            member(dom.purposes, req.purpose),
            member(dom.categories, req.category),
            member(dom.apps, req.app),
            member(dom.controllers, req.controller),
            member(dom.recipients, req.recipient),
            o_i,
            *ctx,
        )

    def _shape(self, i_purpose: int, i_recipient: int) -> Shape:
        dom = self.domain
        assert dom is not None
        return (
            any(x is not None for x in dom.recipients[i_recipient]),
            any(x is not None for x in dom.purposes[i_purpose]),
        )

    def is_class(self, idx: tuple[int, ...]) -> bool:
        """False for an index no request has: a consent witness built for requests of another
        shape (with / without recipient, purpose) than the index's purpose and recipient."""
        dom = self.domain
        assert dom is not None
        shape = self._shape(idx[_I_PURPOSE], idx[_I_RECIPIENT])
        return dom.contexts[-1].bins[idx[_I_CONSENT]].applies(shape)

    def _group_shapes(self, values: tuple[tuple[int, ...] | None, ...]) -> set[Shape]:
        ps = values[_I_PURPOSE] or range(self.axis_size("purpose"))
        rs = values[_I_RECIPIENT] or range(self.axis_size("recipient"))
        return {self._shape(p, r) for p in ps for r in rs}

    def compact(self) -> list[DiffGroup]:
        """The changed classes as few rows: rows with the same before / after verdicts are merged
        along one axis at a time while they differ only in that axis (repeated until nothing
        merges), and an axis covering all its classes becomes None ("any"). On the consent axis,
        witnesses of other request shapes (no request has them, :meth:`is_class`) are added
        before merging so that rows of different shapes merge; ``count`` counts real classes."""
        dom = self.domain
        assert dom is not None
        consent = dom.contexts[-1]
        n_consent = len(consent.bins)
        by_change: dict[tuple[Verdict, Verdict, bool], list[tuple[frozenset[int], ...]]] = {}
        for cube, before, after, ctx in self.cubes:
            if any(b.shapes is not None for b in consent.bins):
                shapes = {self._shape(p, r) for p in cube[_I_PURPOSE] for r in cube[_I_RECIPIENT]}
                phantom = {
                    b
                    for b in range(n_consent)
                    if not any(consent.bins[b].applies(sh) for sh in shapes)
                }
                cube = (*cube[:_I_CONSENT], cube[_I_CONSENT] | phantom)
            by_change.setdefault((before, after, ctx), []).append(cube)
        groups: list[DiffGroup] = []
        for (before, after, ctx), cubes in by_change.items():
            merged = _merge(cubes)
            for cube in merged:
                values = tuple(
                    None if len(v) == self.axis_size(AXES[j]) else tuple(sorted(v))
                    for j, v in enumerate(cube)
                )
                other = 1
                for j, v in enumerate(cube):
                    if j not in (_I_PURPOSE, _I_RECIPIENT, _I_CONSENT):
                        other *= len(v)
                real = sum(
                    sum(1 for b in cube[_I_CONSENT] if consent.bins[b].applies(self._shape(p, r)))
                    for p in cube[_I_PURPOSE]
                    for r in cube[_I_RECIPIENT]
                )
                groups.append(DiffGroup(values, before, after, ctx, other * real))
        groups.sort(key=lambda g: (g.rule_only, -g.count, g.before.text(), g.after.text()))
        return groups

    def show(
        self,
        axis: str,
        values: tuple[int, ...] | None,
        group: tuple[tuple[int, ...] | None, ...] | None = None,
    ) -> str:
        """Display of a group's values on ``axis``: ``any``, a list of classes, or ``any except``
        the missing classes when that is shorter. Context axes: ``group`` (the group's values on
        every axis) leaves out consent witnesses no request of the group has; an attribute axis
        whose bins are every combination of some values per attribute shows those per attribute
        (``context.x = 'y'``; an attribute taking every value is left out)."""
        if values is None:
            return "any"
        size = self.axis_size(axis)
        missing = [i for i in range(size) if i not in values]

        def one(i: int) -> str:
            members = self.axis_members(axis, i)
            if axis == "origins":
                return "+".join(str(m) for m in members)
            first = "none" if members[0] is None else str(members[0])
            if axis == "from":
                assert self.domain is not None
                t = self.domain.times[i]
                first = day_text(t) if t.year > 1 else "(start)"
            if axis in CONTEXT_AXES:
                assert self.domain is not None
                return self.domain.contexts[CONTEXT_AXES.index(axis)].bins[i].label
            return first if len(members) == 1 else f"{first} (+{len(members) - 1})"

        if axis in CONTEXT_AXES:
            assert self.domain is not None
            ax = self.domain.contexts[CONTEXT_AXES.index(axis)]
            if axis == "consent" and group is not None:
                shapes = self._group_shapes(group)
                real = [b for b in values if any(ax.bins[b].applies(sh) for sh in shapes)]
                every = {b for sh in shapes for b in ax.applicable(sh)}
                if set(real) >= every:
                    return "any"
                return ", ".join(one(i) for i in real)
            factored = _factor(ax, values)
            if factored is not None:
                return factored
        if len(missing) < len(values) and axis not in ("from", "origins", *CONTEXT_AXES):
            return "any except " + ", ".join(one(i) for i in missing)
        return ", ".join(one(i) for i in values)

    def as_json(self, *, full: bool = False) -> dict[str, object]:
        """Machine form: per row the member values of every axis (lists; None = absent,
        ``(other)`` = a value no rule names), the verdicts before and after, and whether a rule
        with conditions took part. ``full``: one row per class; else the compact groups."""

        def axis_values(axis: str, idx: tuple[int, ...] | None) -> object:
            if idx is None:
                return "any"
            if axis == "origins":
                return [self.axis_members(axis, i) for i in idx]
            if axis in CONTEXT_AXES:
                return [m for i in idx for m in self.axis_members(axis, i)]
            return sorted(
                {m for i in idx for m in self.axis_members(axis, i)},
                key=lambda m: (m is None, str(m)),
            )

        rows: list[dict[str, object]] = []
        if full:
            for r in self.rows:
                assert r.verdicts is not None
                rows.append(
                    {
                        **{a: axis_values(a, (r.index[j],)) for j, a in enumerate(AXES)},
                        "before": r.verdicts[0].as_dict(),
                        "after": r.verdicts[1].as_dict(),
                        "kind": _kind(r.verdicts[0], r.verdicts[1]),
                        "context_dependent": r.context_dependent,
                        "classes": 1,
                    }
                )
        else:
            assert self.domain is not None
            consent = self.domain.contexts[-1]
            for g in self.compact():
                values = list(g.values)
                if values[_I_CONSENT] is not None:
                    # leave out witnesses of request shapes the group has none of
                    shapes = self._group_shapes(g.values)
                    values[_I_CONSENT] = tuple(
                        b
                        for b in values[_I_CONSENT] or ()
                        if any(consent.bins[b].applies(sh) for sh in shapes)
                    )
                rows.append(
                    {
                        **{a: axis_values(a, values[j]) for j, a in enumerate(AXES)},
                        "before": g.before.as_dict(),
                        "after": g.after.as_dict(),
                        "kind": _kind(g.before, g.after),
                        "context_dependent": g.context_dependent,
                        "classes": g.count,
                    }
                )
        return {
            "checked": self.requests_checked,
            "changed": self.changed,
            "changed_outcome": self.changed_outcome,
            "changed_rule_only": self.changed_rule_only,
            "exact": self.exact,
            "grant_context_enumerated": self.domain.context_enumerated if self.domain else True,
            "why_inexact": list(self.domain.why_inexact) if self.domain else [],
            "rows": rows,
        }


def _kind(before: Verdict, after: Verdict) -> str:
    """``outcome`` (effect, exception or obligations change) or ``rule_only``."""
    return "rule_only" if before.same_outcome(after) else "outcome"


_I_PURPOSE = AXES.index("purpose")
_I_ORIGINS = AXES.index("origins")
_I_RECIPIENT = AXES.index("recipient")
_I_CONSENT = AXES.index("consent")


def _factor(ax: ContextAxis, values: tuple[int, ...]) -> str | None:
    """``values`` of a multi-part axis as per-part value sets when they are exactly their
    product, else None."""
    if len(ax.parts) < 2 or len(values) < 2:
        return None
    per_part: list[set[int]] = [set() for _ in ax.parts]
    for b in values:
        for k, v in enumerate(ax.bins[b].parts):
            per_part[k].add(v)
    n = 1
    for vs in per_part:
        n *= len(vs)
    if n != len(set(values)):
        return None
    sizes = [len({b.parts[k] for b in ax.bins}) for k in range(len(ax.parts))]
    shown: list[str] = []
    for k, (name, vs) in enumerate(zip(ax.parts, per_part, strict=True)):
        if len(vs) == sizes[k]:
            continue
        labels = [ax.part_labels[k][v] for v in sorted(vs)]
        shown.append(
            _part_label(name, labels[0]) if len(labels) == 1 else f"{name} in {', '.join(labels)}"
        )
    return "; ".join(shown) or "any"


_DOMAIN_ATTR = {
    "action": "actions",
    "purpose": "purposes",
    "category": "categories",
    "app": "apps",
    "controller": "controllers",
    "recipient": "recipients",
}


def _merge(cubes: list[tuple[frozenset[int], ...]]) -> list[tuple[frozenset[int], ...]]:
    """Merge cubes (a set of class indexes per axis) that differ in one axis only, axis by axis,
    until no merge happens. The union of the result is the union of the input."""
    current = list(dict.fromkeys(cubes))
    while True:
        changed = False
        for j in range(len(current[0]) if current else 0):
            buckets: dict[tuple[frozenset[int], ...], set[int]] = {}
            order: list[tuple[frozenset[int], ...]] = []
            for c in current:
                rest = c[:j] + c[j + 1 :]
                if rest not in buckets:
                    buckets[rest] = set()
                    order.append(rest)
                buckets[rest].update(c[j])
            if len(order) < len(current):
                changed = True
                current = [(*rest[:j], frozenset(buckets[rest]), *rest[j:]) for rest in order]
        if not changed:
            return current


def diff(a: PolicySet, b: PolicySet) -> DiffResult:
    """Every class of requests whose effect or determining rules differ between ``a`` and ``b``.

    Exact over targets, time and request context (see the module docstring). ``exact`` is False,
    with the reasons in ``domain.why_inexact``, when there are more than
    :data:`MAX_ORIGIN_CLASSES` origin classes (then single origins are enumerated), when the
    context would take more than :data:`MAX_CONTEXT_REQUESTS` decisions (then it is evaluated
    absent and rows of rules with conditions are flagged ``context_dependent``), or when one
    part of the context is too large to partition (:data:`MAX_CONSENT_KEYS`,
    :data:`MAX_CONTAINS`).
    """
    ca, cb = CompiledPolicy(a), CompiledPolicy(b)
    defaults = any(bd.default != "not_applicable" for ps in (a, b) for bd in ps.bundles)

    def keep(r: Request) -> bool:
        # no candidate rule in either set for any origin: both are not_applicable throughout
        return defaults or bool(
            ca.candidates(r, ca.segment(r.at)) | cb.candidates(r, cb.segment(r.at))
        )

    dom, combos = _prepare([ca, cb], keep)
    out = DiffResult(exact=dom.exact, domain=dom)
    # rules reading a part of the context that is not enumerated (evaluated absent)
    open_axes = {j for j, ax in enumerate(dom.contexts) if len(ax.bins) == 1 and ax.probes}
    if not dom.context_enumerated:
        open_axes = set(range(len(CONTEXT_AXES)))
    dyn = {r.id for ps in (a, b) for _, r in ps.rules() if rule_context_axes(r) & open_axes}
    cache: dict[tuple[object, ...], tuple[Verdict, Verdict, bool]] = {}
    sets: dict[tuple[int, ...], frozenset[int]] = {}
    origin_sets = [frozenset({i}) for i in range(len(dom.origin_sets))]
    for combo in combos:
        choices = _choices(dom, combo)
        head = tuple(frozenset({i}) for i in combo.index)
        per_origin = 1
        for ch in choices:
            per_origin *= sum(len(g) for g in ch)
        for o_i, (origin_set, _) in enumerate(dom.origin_sets):
            out.requests_checked += per_origin
            base = combo.make(origins=origin_set)
            sa, sb = ca.segment(base.at), cb.segment(base.at)
            masks = (ca.candidates(base, sa), cb.candidates(base, sb), sa, sb)
            for groups in itertools.product(*choices):
                # the verdicts depend on the request only through the candidate rules, the
                # segment and the context bins (witnesses cover the request by construction)
                key = (*masks, *(g[0] for g in groups))
                got = cache.get(key)
                if got is None:
                    bins = [ax.bins[g[0]] for ax, g in zip(dom.contexts, groups, strict=True)]
                    extra = _context_kwargs(
                        dom, bins, combo.category, combo.purpose, combo.recipient, combo.at
                    )
                    req = dataclasses.replace(base, **extra) if extra else base
                    da, db = ca.decide(req), cb.decide(req)
                    ctx = any(r.rule_id in dyn for r in (*da.reasons, *db.reasons))
                    got = cache[key] = (Verdict.of(da), Verdict.of(db), ctx)
                va, vb, ctx = got
                if va != vb:
                    tail = tuple(sets.setdefault(g, frozenset(g)) for g in groups)
                    out.cubes.append(((*head, origin_sets[o_i], *tail), va, vb, ctx))
    return out


@dataclass(frozen=True)
class CanRow:
    """One class of a ``can`` query: ``request`` = display per axis (``any`` on a context
    column the deciding rules do not read), the decision as text, whether it is allowed, and
    ``witness``: the representative request decided (carrying the consent records, attributes
    and grant fields of the class)."""

    request: dict[str, str]
    verdict: str
    allowed: bool
    witness: Request | None = None


def can(
    policy: PolicySet,
    *,
    app: str,
    category: str,
    origin: str,
    purpose: str,
    action: str = "use",
) -> list[CanRow]:
    """Every class of ``action`` requests by ``app`` on ``category`` of ``origin`` for
    ``purpose`` (over controllers, recipient classes for a transfer, time, and every bin of the
    context the rules read: grant fields, scopes, subject / context attributes, consent
    witnesses), with its decision. The app can use the data when some row is ``allowed``; that
    row's ``witness`` is a request showing how."""
    cp = CompiledPolicy(policy)
    fixed: dict[str, list[str | None]] = {
        "apps": [app],
        "categories": [category],
        "purposes": [purpose],
        "actions": [action],
    }
    if action != "transfer":
        fixed["recipients"] = [None]
    dom, combos = _prepare([cp], fixed=fixed, origin=origin)
    rows: list[CanRow] = []
    seen: set[tuple[str, ...]] = set()
    for req, combo, _o, groups in _requests(dom, combos):
        d = cp.decide(req)
        shown = dict(combo.shown)
        shown["origins"] = origin
        for j, (ax, g) in enumerate(zip(dom.contexts, groups, strict=True)):
            shown[CONTEXT_AXES[j]] = ax.bins[g[0]].label if len(g) == 1 else "any"
        key = (
            shown["from"],
            shown["controller"],
            shown["recipient"],
            *(shown[a] for a in CONTEXT_AXES),
            _verdict(d),
        )
        if key in seen:
            continue
        seen.add(key)
        rows.append(CanRow(shown, _verdict(d), d.allowed, req))
    return rows


def decision_with_traces(policy: PolicySet, req: Request) -> tuple[Decision, list[RuleTrace]]:
    """The reference decision and every rule's trace."""
    return decide(policy, req), explain_rules(policy, req)

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

import functools
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from provguard.decide.compiled import CompiledPolicy, hier_mask
from provguard.decide.conditions import describe_held, holds
from provguard.decide.model import Decision, Request
from provguard.decide.reference import decide, rule_exception
from provguard.policy.model import FieldCondition, PolicySet, Rule, Selector
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


def _axis_failure(rule: Rule, req: Request) -> str | None:
    if req.action not in rule.actions:
        return f"action '{req.action}' is not in {', '.join(sorted(rule.actions))}"
    if rule.purposes is not None and (
        req.purpose is None or not any(covers(p, req.purpose) for p in rule.purposes)
    ):
        return f"purpose '{req.purpose or 'none'}' is not covered by {', '.join(rule.purposes)}"
    if not rule.apps.matches(req.app):
        return _selector_why("app", rule.apps, req.app)
    if rule.controllers.constrained and not rule.controllers.matches(req.controller):
        return _selector_why("controller", rule.controllers, req.controller)
    if rule.recipients.constrained and not rule.recipients.matches(req.recipient):
        return _selector_why("recipient", rule.recipients, req.recipient)
    if rule.categories is not None and not any(covers(c, req.category) for c in rule.categories):
        return f"category '{req.category}' is not covered by {', '.join(rule.categories)}"
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
    """A rule (or instrument) that can never fire. ``kind``: ``empty_target`` |
    ``contradictory_conditions`` | ``validity_never_starts`` | ``shadowed`` | ``redundant``."""

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


def _covers_keys(big: tuple[str, ...] | None, small: tuple[str, ...] | None) -> bool:
    if big is None:
        return True
    if small is None:
        return False
    return all(any(covers(b, s) for b in big) for s in small)


def rule_covers(big: Rule, small: Rule) -> bool:
    """True when every request ``small`` targets is targeted by ``big`` (conditions ignored)."""
    return (
        small.actions <= big.actions
        and _covers_keys(big.purposes, small.purposes)
        and _covers_keys(big.categories, small.categories)
        and _covers_selector(big.apps, small.apps, none_matters=False)
        and _covers_selector(big.controllers, small.controllers, none_matters=True)
        and _covers_selector(big.recipients, small.recipients, none_matters=True)
        and (big.origins is None or (small.origins is not None and small.origins <= big.origins))
    )


def _contradictions(conds: Iterable[object]) -> list[str]:
    lo: dict[str, date] = {}
    hi: dict[str, date] = {}
    allowed: dict[str, set[str]] = {}
    banned: dict[str, set[str]] = {}
    out: list[str] = []
    for c in conds:
        if not isinstance(c, FieldCondition):
            continue
        if c.on_or_after is not None:
            lo[c.field] = max(lo.get(c.field, c.on_or_after), c.on_or_after)
        if c.before is not None:
            hi[c.field] = min(hi.get(c.field, c.before), c.before)
        values = set(c.in_ or ()) | ({c.equals} if isinstance(c.equals, str) else set())
        if values:
            allowed[c.field] = allowed.get(c.field, values) & values
        banned.setdefault(c.field, set()).update(c.not_in or ())
    for f, low in lo.items():
        if f in hi and hi[f] <= low:
            out.append(f"'{f}' must be on or after {low} and before {hi[f]}")
    for f, vals in allowed.items():
        if not vals - banned.get(f, set()):
            out.append(f"no value of '{f}' satisfies every condition on it")
    return out


def lint(policy: PolicySet) -> list[Finding]:
    """Rules that can never fire, with a fix hint each (see :class:`Finding`)."""
    findings: list[Finding] = []
    spans: dict[str, tuple[date, date | None]] = {}
    for b in policy.bundles:
        inst = b.instrument
        start, end = inst.validity_bounds(policy.events)
        spans[inst.id] = (start, end)
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
    keys: Iterable[str | None], signature: dict[str | None, tuple[int, ...]]
) -> list[list[str | None]]:
    groups: dict[tuple[int, ...], list[str | None]] = {}
    for k in keys:
        groups.setdefault(signature[k], []).append(k)
    return list(groups.values())


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
    #: grant context enumerated exactly: per field of :class:`Request` in :data:`CONTEXT_FIELDS`,
    #: (value, machine value, display) per bin; the first bin is "absent"
    contexts: list[list[tuple[object, str | None, str]]] = field(default_factory=list)
    context_enumerated: bool = True
    #: the vocabularies of every compared set (built in plus their taxonomy extensions)
    taxonomy: Taxonomies = BUILTIN_TAXONOMIES


CONTEXT_FIELDS = ("grant_first_used_by_recipient_at", "grant_granted_at", "grant_status")
_CONTEXT_AXES = ("first_used", "granted", "grant_status")
_ABSENT: tuple[object, str | None, str] = (None, None, "absent")


def _grant_context(policies: list[PolicySet]) -> list[list[tuple[object, str | None, str]]]:
    """The bins of the grant fields that conditions read: each time field cut at every day a
    condition compares it with (a bin is represented by its first instant; the first bin by the
    day before the first cut), the grant status by its three values; a field no condition reads
    has the single bin "absent" (conditions read nothing else of it)."""
    cuts: dict[str, set[date]] = {
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
                        cuts[name].add(d)
                        reads.add(name)
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
                        cuts[fname].add(d)
    out: list[list[tuple[object, str | None, str]]] = []
    for name in CONTEXT_FIELDS:
        bins = [_ABSENT]
        if name in reads and name == "grant_status":
            bins += [(v, v, v) for v in ("active", "revoked", "expired")]
        elif name in reads:
            days = sorted(cuts[name])
            if not days:
                bins.append((datetime(2000, 1, 1, tzinfo=UTC), "present", "present"))
            else:
                first = days[0]
                bins.append(
                    (
                        datetime(first.year, first.month, first.day, tzinfo=UTC)
                        - timedelta(days=1),
                        f"[,{first.isoformat()})",
                        f"before {first.isoformat()}",
                    )
                )
                for k, d in enumerate(days):
                    end = days[k + 1].isoformat() if k + 1 < len(days) else ""
                    bins.append(
                        (
                            datetime(d.year, d.month, d.day, tzinfo=UTC),
                            f"[{d.isoformat()},{end})",
                            f"{d.isoformat()} to {end}" if end else f"from {d.isoformat()}",
                        )
                    )
        out.append(bins)
    return out


def _domain(
    compiled: list[CompiledPolicy], *, fixed: dict[str, list[str | None]] | None = None
) -> _Domain:
    """The finite request domain of ``compiled`` (see the module docstring)."""
    fixed = fixed or {}

    def sel_axis(attr: str, other_attr: str, with_none: bool) -> list[list[str | None]]:
        named: set[str | None] = set()
        for c in compiled:
            named.update(k for k in getattr(c, attr) if k is not None)
        keys: list[str | None] = [*sorted(n for n in named if n is not None), OTHER]
        if with_none:
            keys.append(None)
        sig = {
            k: tuple(
                getattr(c, attr).get(k, getattr(c, other_attr))
                if k != OTHER
                else getattr(c, other_attr)
                for c in compiled
            )
            for k in keys
        }
        return _classes(keys, sig)

    def key_mask(c: CompiledPolicy, attr: str, k: str | None) -> int:
        # a key only another set's taxonomy extension adds: see hier_mask
        index: dict[str | None, int] = getattr(c, attr)
        return index.get(k, 0) if attr == "_action" else hier_mask(index, k)

    def key_axis(attr: str, keys: Iterable[str | None]) -> list[list[str | None]]:
        ks = list(keys)
        sig = {k: tuple(key_mask(c, attr, k) for c in compiled) for k in ks}
        return _classes(ks, sig)

    def union_keys(which: str) -> set[str]:
        return set().union(*(getattr(c.policy.taxonomy, which).keys for c in compiled))

    origins: set[str] = set()
    for c in compiled:
        origins.update(c._origin)
    okeys: list[str | None] = [*sorted(origins), OTHER]
    osig = {
        k: tuple(
            c._origin.get(str(k), c._origin_other) if k != OTHER else c._origin_other
            for c in compiled
        )
        for k in okeys
    }
    oclasses = _classes(okeys, osig)
    exact = len(oclasses) <= MAX_ORIGIN_CLASSES
    reps = [(cls[0] if cls[0] != OTHER else "apple", cls) for cls in oclasses]
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
        bounds.update(c._bounds)
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
        exact=exact,
        contexts=_grant_context([c.policy for c in compiled]),
        taxonomy=BUILTIN_TAXONOMIES.extended(
            k for c in compiled for b in c.policy.bundles for k in b.taxonomy_extensions
        ),
    )
    for name, values in fixed.items():
        setattr(dom, name, [[v] for v in values])
    base = len(dom.times) * len(dom.origin_sets)
    for axis in (dom.actions, dom.purposes, dom.categories, dom.apps, dom.controllers):
        base *= len(axis)
    base *= len(dom.recipients)
    multiplier = 1
    for bins in dom.contexts:
        multiplier *= len(bins)
    if multiplier > 1 and base * multiplier > MAX_CONTEXT_REQUESTS:
        dom.contexts = [[_ABSENT] for _ in CONTEXT_FIELDS]
        dom.context_enumerated = False
    return dom


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
    *_CONTEXT_AXES,
)


def _requests(
    dom: _Domain, keep: Callable[[Request], bool] | None = None
) -> Iterator[tuple[Request, dict[str, str], tuple[int, ...]]]:
    """Every request of the domain, its display and its class index per axis (:data:`AXES`);
    ``keep(r)`` (r = the request with every origin class) may skip all origin sets of a
    combination at once."""
    every = frozenset().union(*(o for o, _ in dom.origin_sets)) if dom.origin_sets else None
    ranges = [
        range(len(x))
        for x in (dom.actions, dom.purposes, dom.categories, dom.apps, dom.controllers)
    ]
    for t_i, t in enumerate(dom.times):
        for i_a, i_p, i_c, i_app, i_ctrl, i_rec in itertools.product(
            *ranges, range(len(dom.recipients))
        ):
            action, purpose, category = dom.actions[i_a], dom.purposes[i_p], dom.categories[i_c]
            app, ctrl, recip = dom.apps[i_app], dom.controllers[i_ctrl], dom.recipients[i_rec]
            a, p = action[0], purpose[0]
            # a class is represented by one member: when that member cannot form a valid
            # request (no purpose for use/derive/display, no recipient for transfer), take
            # another member of the same class, which decides identically by construction
            if a in ("use", "derive", "display") and p is None:
                p = next((x for x in purpose if x is not None), None)
                if p is None:
                    continue
            if a == "transfer" and recip[0] is None:
                other = [x for x in recip if x is not None]
                if not other:
                    continue
                recip = [other[0], *[x for x in recip if x != other[0]]]
            # every request of this combination differs only in its origins
            make = functools.partial(
                Request,
                taxonomy=dom.taxonomy,
                app=str(app[0]) if app[0] != OTHER else "other-app",
                action=str(a),
                category=str(category[0]),
                at=t,
                purpose=p,
                recipient=None
                if recip[0] is None
                else ("other-app" if recip[0] == OTHER else recip[0]),
                controller=None
                if ctrl[0] is None
                else ("other-controller" if ctrl[0] == OTHER else ctrl[0]),
            )
            if keep is not None and every and dom.origin_sets and not keep(make(origins=every)):
                continue
            contexts = dom.contexts or [[_ABSENT] for _ in CONTEXT_FIELDS]
            for (o_i, (origin_set, oshow)), c_idx in itertools.product(
                enumerate(dom.origin_sets), itertools.product(*(range(len(c)) for c in contexts))
            ):
                extra: dict[str, Any] = {
                    name: contexts[j][c_idx[j]][0]
                    for j, name in enumerate(CONTEXT_FIELDS)
                    if contexts[j][c_idx[j]][0] is not None
                }
                req = make(origins=origin_set, **extra)
                yield (
                    req,
                    {
                        "from": t.date().isoformat() if t.year > 1 else "(start)",
                        "action": _show(action),
                        "purpose": _show(purpose),
                        "category": _show(category),
                        "app": _show(app),
                        "controller": _show(ctrl),
                        "recipient": _show(recip),
                        "origins": oshow,
                        **{ax: contexts[j][c_idx[j]][2] for j, ax in enumerate(_CONTEXT_AXES)},
                    },
                    (t_i, i_a, i_p, i_c, i_app, i_ctrl, i_rec, o_i, *c_idx),
                )


def _verdict(d: Decision) -> str:
    rules = ",".join(r.rule_id for r in d.determining)
    label = d.effect + (" (excepted)" if d.excepted else "")
    return f"{label} [{rules}]" if rules else label


@dataclass(frozen=True)
class Verdict:
    """A decision reduced to what ``diff`` compares: effect, excepted, determining rule ids."""

    effect: str
    excepted: bool
    rules: tuple[str, ...]

    @classmethod
    def of(cls, d: Decision) -> Verdict:
        return cls(d.effect, d.excepted, tuple(r.rule_id for r in d.determining))

    def text(self) -> str:
        label = self.effect + (" (excepted)" if self.excepted else "")
        return f"{label} [{','.join(self.rules)}]" if self.rules else label

    def as_dict(self) -> dict[str, object]:
        return {"effect": self.effect, "excepted": self.excepted, "rules": list(self.rules)}


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


@dataclass
class DiffResult:
    rows: list[DiffRow] = field(default_factory=list)
    requests_checked: int = 0
    exact: bool = True
    domain: _Domain | None = None

    def axis_members(self, axis: str, i: int) -> list[str | None]:
        """The values of class ``i`` of ``axis`` (``(other)`` = any value no rule names; None =
        absent; for ``from``: the first day of the validity segment, None = before every start;
        for ``origins``: the origin classes' first members)."""
        dom = self.domain
        assert dom is not None
        if axis == "from":
            t = dom.times[i]
            return [t.date().isoformat() if t.year > 1 else None]
        if axis == "origins":
            origins: list[str | None] = [o for o in sorted(dom.origin_sets[i][0])]
            return origins
        if axis in _CONTEXT_AXES:
            return [dom.contexts[_CONTEXT_AXES.index(axis)][i][1]]
        return list(getattr(dom, _DOMAIN_ATTR[axis])[i])

    def axis_size(self, axis: str) -> int:
        dom = self.domain
        assert dom is not None
        if axis == "from":
            return len(dom.times)
        if axis == "origins":
            return len(dom.origin_sets)
        if axis in _CONTEXT_AXES:
            return len(dom.contexts[_CONTEXT_AXES.index(axis)])
        return len(getattr(dom, _DOMAIN_ATTR[axis]))

    def compact(self) -> list[DiffGroup]:
        """The changed classes as few rows: rows with the same before / after verdicts are merged
        along one axis at a time while they differ only in that axis (repeated until nothing
        merges), and an axis covering all its classes becomes None ("any")."""
        by_change: dict[tuple[Verdict, Verdict, bool], list[tuple[frozenset[int], ...]]] = {}
        for r in self.rows:
            assert r.verdicts is not None
            key = (r.verdicts[0], r.verdicts[1], r.context_dependent)
            by_change.setdefault(key, []).append(tuple(frozenset({i}) for i in r.index))
        groups: list[DiffGroup] = []
        for (before, after, ctx), cubes in by_change.items():
            merged = _merge(cubes)
            for cube in merged:
                values = tuple(
                    None if len(v) == self.axis_size(AXES[j]) else tuple(sorted(v))
                    for j, v in enumerate(cube)
                )
                count = 1
                for v in cube:
                    count *= len(v)
                groups.append(DiffGroup(values, before, after, ctx, count))
        groups.sort(key=lambda g: (-g.count, g.before.text(), g.after.text()))
        return groups

    def show(self, axis: str, values: tuple[int, ...] | None) -> str:
        """Display of a group's values on ``axis``: ``any``, a list of classes, or ``any except``
        the missing classes when that is shorter."""
        if values is None:
            return "any"
        size = self.axis_size(axis)
        missing = [i for i in range(size) if i not in values]

        def one(i: int) -> str:
            members = self.axis_members(axis, i)
            if axis == "origins":
                return "+".join(str(m) for m in members)
            first = "none" if members[0] is None else str(members[0])
            if axis == "from" and members[0] is None:
                first = "(start)"
            if axis in _CONTEXT_AXES:
                assert self.domain is not None
                return self.domain.contexts[_CONTEXT_AXES.index(axis)][i][2]
            return first if len(members) == 1 else f"{first} (+{len(members) - 1})"

        if len(missing) < len(values) and axis not in ("from", "origins", *_CONTEXT_AXES):
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
                        "context_dependent": r.context_dependent,
                        "classes": 1,
                    }
                )
        else:
            for g in self.compact():
                rows.append(
                    {
                        **{a: axis_values(a, g.values[j]) for j, a in enumerate(AXES)},
                        "before": g.before.as_dict(),
                        "after": g.after.as_dict(),
                        "context_dependent": g.context_dependent,
                        "classes": g.count,
                    }
                )
        return {
            "checked": self.requests_checked,
            "changed": len(self.rows),
            "exact": self.exact,
            "grant_context_enumerated": self.domain.context_enumerated if self.domain else True,
            "rows": rows,
        }


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

    Exact over targets and time (see the module docstring); ``exact`` is False only when there are
    more than :data:`MAX_ORIGIN_CLASSES` origin classes (then single origins are enumerated).
    """
    ca, cb = CompiledPolicy(a), CompiledPolicy(b)
    dom = _domain([ca, cb])
    out = DiffResult(exact=dom.exact, domain=dom)
    # grant times and status are enumerated; a rule reading anything else is approximate
    dyn = {
        r.id
        for ps in (a, b)
        for _, r in ps.rules()
        if _reads_open_context(r) or (r.dynamic and not dom.context_enumerated)
    }
    defaults = any(bd.default != "not_applicable" for ps in (a, b) for bd in ps.bundles)

    def keep(r: Request) -> bool:
        # no candidate rule in either set for any origin: both are not_applicable throughout
        return defaults or bool(
            ca.candidates(r, ca.segment(r.at)) | cb.candidates(r, cb.segment(r.at))
        )

    for req, shown, idx in _requests(dom, keep):
        out.requests_checked += 1
        da, db = ca.decide(req), cb.decide(req)
        va, vb = Verdict.of(da), Verdict.of(db)
        if va != vb:
            ctx = any(r.rule_id in dyn for r in (*da.reasons, *db.reasons))
            out.rows.append(DiffRow(shown, va.text(), vb.text(), ctx, idx, (va, vb)))
    return out


@dataclass(frozen=True)
class CanRow:
    request: dict[str, str]
    verdict: str
    allowed: bool


def _reads_open_context(rule: Rule) -> bool:
    """True when a condition of ``rule`` reads context :func:`diff` does not enumerate (scopes,
    subject, context attributes, consents)."""
    return any(
        not isinstance(c, FieldCondition)
        or c.field not in ("grant.first_used_by_recipient_at", "grant.granted_at", "grant.status")
        for c in (*rule.when, *rule.unless_conditions)
    )


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
    ``purpose`` (over controllers, recipient classes for a transfer, time, and the grant
    context conditions read), with its decision. The app can use the data when some row is
    ``allowed``."""
    cp = CompiledPolicy(policy)
    fixed: dict[str, list[str | None]] = {
        "apps": [app],
        "categories": [category],
        "purposes": [purpose],
        "actions": [action],
    }
    if action != "transfer":
        fixed["recipients"] = [None]
    dom = _domain([cp], fixed=fixed)
    dom.origin_sets = [(frozenset({origin}), origin)]
    rows: list[CanRow] = []
    seen: set[tuple[str, ...]] = set()
    for req, shown, _idx in _requests(dom):
        d = cp.decide(req)
        key = (
            shown["from"],
            shown["controller"],
            shown["recipient"],
            *(shown[a] for a in _CONTEXT_AXES),
            _verdict(d),
        )
        if key in seen:
            continue
        seen.add(key)
        rows.append(CanRow(shown, _verdict(d), d.allowed))
    return rows


def decision_with_traces(policy: PolicySet, req: Request) -> tuple[Decision, list[RuleTrace]]:
    """The reference decision and every rule's trace."""
    return decide(policy, req), explain_rules(policy, req)

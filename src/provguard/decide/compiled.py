"""The compiled decision index: a decision in a few dictionary lookups.

Compilation turns a :class:`PolicySet` into one bitmask (a Python int, bit ``i`` = rule ``i`` in
bundle order) per value of every target axis (action, purpose, data category, app, controller,
recipient, origin) and per validity segment (the time line cut at every instrument's start and end
day). A request's candidate rules are the AND of its axes' masks; the result for each distinct
request shape ``(action, app, controller, recipient, purpose, category, origins, segment)`` is
kept as a *plan*. The purpose and category masks follow the reference's effect-dependent
hierarchy (:func:`provguard.decide.reference.key_matches`): the mask of a key holds the permits
whose keys cover it and the denies whose keys cover it *or lie below it*, so the plan key (which
holds the exact purpose and category) memoises ancestor requests apart from their descendants.
A decision is then: one ``bisect`` for the segment, one dict lookup for the plan,
and either the precomputed answer (rules without conditions) or an evaluation of the few
candidate rules that carry ``when`` / ``unless`` conditions. The cost of a decision does not grow
with the number of rules, only with the number of rules that match.

:func:`provguard.decide.reference.decide` states the semantics; property tests check that
:meth:`CompiledPolicy.decide` gives the same effect, reasons, obligations and shadow reasons.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from datetime import UTC, datetime

from provguard.decide.conditions import holds
from provguard.decide.model import Decision, Effect, Obligation, Reason, Request
from provguard.decide.reference import (
    default_reason,
    rule_exception,
    rule_obligations,
    rule_why,
    shadow_reason,
)
from provguard.policy.model import Bundle, PolicySet, Rule, Selector
from provguard.taxonomy.keys import ancestors

_EPOCH = datetime(1, 1, 1, tzinfo=UTC)
MAX_PLANS = 1 << 18  # distinct request shapes kept; the cache is emptied when it is full


@dataclass(frozen=True)
class _CRule:
    rule: Rule
    instrument_id: str
    bundle: int
    applied: Reason
    obligations: tuple[Obligation, ...]
    shadow: Reason


@dataclass(frozen=True)
class _Group:
    """The candidate rules of one bundle in force, and its default reason (or None)."""

    rules: tuple[_CRule, ...]
    default: Reason | None


@dataclass(frozen=True)
class _Plan:
    static: bool
    groups: tuple[_Group, ...]
    effect: Effect
    reasons: tuple[Reason, ...]
    obligations: tuple[Obligation, ...]
    shadow: tuple[Reason, ...]


def _evaluate(
    groups: tuple[_Group, ...], req: Request
) -> tuple[Effect, tuple[Reason, ...], tuple[Obligation, ...], tuple[Reason, ...]]:
    denies: list[Reason] = []
    permits: list[Reason] = []
    shadow: list[Reason] = []
    deny_ob: list[Obligation] = []
    permit_ob: list[Obligation] = []
    for group in groups:
        matched = False
        for cr in group.rules:
            rule = cr.rule
            if rule.when and not all(holds(c, req) for c in rule.when):
                continue
            exception = (
                rule_exception(rule, req) if rule.effect == "deny" and rule.has_exception else None
            )
            if rule.mode == "shadow":
                if rule.effect == "deny" and exception is None:
                    shadow.append(cr.shadow)
                continue
            matched = True
            if exception is not None:
                permits.append(
                    Reason(
                        rule.id, cr.instrument_id, "permit", "excepted", f"exception: {exception}"
                    )
                )
            elif rule.effect == "deny":
                denies.append(cr.applied)
                deny_ob.extend(cr.obligations)
            else:
                permits.append(cr.applied)
                permit_ob.extend(cr.obligations)
        if not matched and group.default is not None:
            (denies if group.default.effect == "deny" else permits).append(group.default)
    if denies:
        return "deny", tuple(denies + permits), tuple(deny_ob), tuple(shadow)
    if permits:
        return "permit", tuple(permits), tuple(permit_ob), tuple(shadow)
    return "not_applicable", (), (), tuple(shadow)


def _mask_indexes(
    rules: list[Rule], keys: frozenset[str], attr: str, *, with_none: bool
) -> tuple[dict[str | None, int], dict[str | None, int]]:
    """Hierarchical axis (purposes, categories): ``(matching, covering)``, two maps key -> rule
    mask. ``matching``: the rules whose targets match the key
    (:func:`provguard.decide.reference.keys_match`: a deny's targets also match their
    ancestors); ``covering``: the rules whose targets cover the key, whatever their effect (the
    fallback of :func:`hier_mask` for keys this set does not know). A rule without targets on
    the axis is in both for every key (and for None when ``with_none``). A target ``t`` covers
    ``k`` iff ``t`` is one of ``k``'s ancestors (itself included); a deny's target also matches
    ``k`` when ``k`` is one of ``t``'s strict ancestors: set lookups, no string scan per pair."""
    targets: list[tuple[int, frozenset[str], frozenset[str]]] = []  # (bit, keys, strict ancestors)
    anywhere = 0
    for i, rule in enumerate(rules):
        ts: tuple[str, ...] | None = getattr(rule, attr)
        if ts is None:
            anywhere |= 1 << i
            continue
        up = (
            frozenset(a for t in ts for a in ancestors(t) if a != t)
            if rule.effect == "deny"
            else frozenset()
        )
        targets.append((1 << i, frozenset(ts), up))
    full: dict[str | None, int] = {}
    down: dict[str | None, int] = {}
    for key in keys:
        above = frozenset(ancestors(key))
        m_full = m_down = anywhere
        for bit, own, up in targets:
            if not own.isdisjoint(above):
                m_full |= bit
                m_down |= bit
            elif key in up:
                m_full |= bit
        full[key] = m_full
        down[key] = m_down
    if with_none:
        full[None] = down[None] = anywhere
    return full, down


def hier_mask(
    index: dict[str | None, int], key: str | None, down: dict[str | None, int] | None = None
) -> int:
    """The mask of a hierarchical axis for ``key``.

    A key the index does not know (a taxonomy extension of another policy set) has no
    descendant that a rule of this set names (every rule target is a key of this set, and keys
    are closed under prefixes), so exactly the rules whose targets *cover* it match it: the
    ``down`` mask (the covering map of :func:`_mask_indexes`) of its nearest known ancestor. Without
    ``down`` the full mask of that ancestor is used, which is the same only when no deny rule
    targets a key below the ancestor."""
    m = index.get(key)
    if m is not None:
        return m
    if key is None:
        return 0
    fallback = down if down is not None else index
    return next((fallback[a] for a in ancestors(key) if a in fallback), 0)


def _selector_index(
    selectors: list[Selector], *, always_if_unconstrained: bool
) -> tuple[dict[str | None, int], int]:
    """Selector axis: (value -> mask for every value a rule names, and None; mask for others)."""
    named: set[str] = set()
    for s in selectors:
        named.update(s.values or ())
        named.update(s.excluded)
    out: dict[str | None, int] = {}
    for value in [*sorted(named), None]:
        m = 0
        for i, s in enumerate(selectors):
            if (always_if_unconstrained and not s.constrained) or s.matches(value):
                m |= 1 << i
        out[value] = m
    other = 0
    for i, s in enumerate(selectors):
        # a value no rule names: only selectors without a value list match it
        if s.values is None:
            other |= 1 << i
    return out, other


class CompiledPolicy:
    """The decision index of one immutable :class:`PolicySet` (see the module docstring).

    ``decide(req)`` returns the same :class:`Decision` as the reference interpreter. Thread-safe
    for readers (the plan cache only grows, or is replaced when full).
    """

    def __init__(self, policy: PolicySet) -> None:
        self.policy = policy
        self.bundles: tuple[Bundle, ...] = policy.bundles
        crules: list[_CRule] = []
        rules: list[Rule] = []
        for b_i, bundle in enumerate(policy.bundles):
            iid = bundle.instrument.id
            for rule in bundle.rules:
                why = rule_why(rule)
                crules.append(
                    _CRule(
                        rule,
                        iid,
                        b_i,
                        Reason(rule.id, iid, rule.effect, "applied", why),
                        tuple(rule_obligations(rule, iid)),
                        shadow_reason(rule, iid),
                    )
                )
                rules.append(rule)
        self._crules = crules
        self.rule_count = len(rules)
        tax = policy.taxonomy  # built-in vocabularies plus the set's taxonomy extensions
        self._action = {
            a: sum(1 << i for i, r in enumerate(rules) if a in r.actions) for a in tax.actions.keys
        }
        # purposes / categories: a deny matches a key's descendants and ancestors, a permit its
        # descendants (reference.key_matches); the *_down masks serve keys of other sets
        self._purpose, self._purpose_down = _mask_indexes(
            rules, tax.purposes.keys, "purposes", with_none=True
        )
        self._category, self._category_down = _mask_indexes(
            rules, tax.categories.keys, "categories", with_none=False
        )
        self._app, self._app_other = _selector_index(
            [r.apps for r in rules], always_if_unconstrained=False
        )
        self._controller, self._controller_other = _selector_index(
            [r.controllers for r in rules], always_if_unconstrained=True
        )
        self._recipient, self._recipient_other = _selector_index(
            [r.recipients for r in rules], always_if_unconstrained=True
        )
        origins: set[str] = set()
        for r in rules:
            origins.update(r.origins or ())
        any_origin = sum(1 << i for i, r in enumerate(rules) if r.origins is None)
        self._origin_other = any_origin
        self._origin = {
            o: any_origin
            | sum(1 << i for i, r in enumerate(rules) if r.origins is not None and o in r.origins)
            for o in origins
        }
        # validity segments: the time line cut at every start and end day
        # (instants: local midnights in each instrument's zone)
        cuts: set[datetime] = set()
        for bundle in policy.bundles:
            start, end = bundle.instrument.validity_instants(policy.events)
            cuts.add(start)
            if end is not None:
                cuts.add(end)
        # compared in UTC on the hot path (an aware datetime in another zone costs a utcoffset
        # call per comparison); ``_bound_labels`` keeps each as its zone's local midnight
        self._bounds: list[datetime] = sorted({c.astimezone(UTC) for c in cuts})
        self._bound_labels: dict[datetime, datetime] = {c.astimezone(UTC): c for c in cuts}
        days = self._bounds
        self._segment_rules: list[int] = []
        self._segment_bundles: list[tuple[int, ...]] = []
        for seg in range(len(days) + 1):
            t = _EPOCH if seg == 0 else self._bounds[seg - 1]
            live = tuple(
                b_i
                for b_i, b in enumerate(policy.bundles)
                if b.instrument.in_force(t, policy.events)
            )
            self._segment_bundles.append(live)
            live_set = set(live)
            self._segment_rules.append(
                sum(1 << i for i, cr in enumerate(crules) if cr.bundle in live_set)
            )
        self._defaults: dict[int, Reason] = {
            b_i: default_reason(b)
            for b_i, b in enumerate(policy.bundles)
            if b.default != "not_applicable"
        }
        self._plans: dict[tuple[object, ...], _Plan] = {}
        self._batch_index: object | None = None  # dense tables for decide_batch, built on use

    # --- the hot path -----------------------------------------------------------------------

    def segment(self, at: datetime) -> int:
        """The validity segment ``at`` falls in (0 = before every instrument's start)."""
        return bisect_right(self._bounds, at)

    def decide(self, req: Request) -> Decision:
        """Decide ``req``; same result as :func:`provguard.decide.reference.decide`."""
        seg = bisect_right(self._bounds, req.at)
        key = (
            req.action,
            req.app,
            req.controller,
            req.recipient,
            req.purpose,
            req.category,
            req.origins,
            seg,
        )
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plan(req, seg)
            if len(self._plans) >= MAX_PLANS:
                self._plans = {}
            self._plans[key] = plan
        if plan.static:
            return Decision(plan.effect, req, plan.reasons, plan.obligations, plan.shadow)
        effect, reasons, obligations, shadow = _evaluate(plan.groups, req)
        return Decision(effect, req, reasons, obligations, shadow)

    # --- building plans -------------------------------------------------------------------------

    def candidates(self, req: Request, seg: int) -> int:
        """The bitmask of rules whose target covers ``req`` and whose instrument is in force."""
        m = self._action.get(req.action, 0) & self._segment_rules[seg]
        m &= hier_mask(self._purpose, req.purpose, self._purpose_down)
        m &= hier_mask(self._category, req.category, self._category_down)
        m &= self._app.get(req.app, self._app_other)
        m &= self._controller.get(req.controller, self._controller_other)
        m &= self._recipient.get(req.recipient, self._recipient_other)
        o = 0
        for origin in req.origins:
            o |= self._origin.get(origin, self._origin_other)
        return m & o

    def _plan(self, req: Request, seg: int) -> _Plan:
        m = self.candidates(req, seg)
        by_bundle: dict[int, list[_CRule]] = {}
        while m:
            low = m & -m
            cr = self._crules[low.bit_length() - 1]
            by_bundle.setdefault(cr.bundle, []).append(cr)
            m ^= low
        groups: list[_Group] = []
        for b_i in self._segment_bundles[seg]:
            members = by_bundle.get(b_i, [])
            default = self._defaults.get(b_i)
            if members or default is not None:
                groups.append(_Group(tuple(members), default))
        frozen = tuple(groups)
        static = not any(cr.rule.dynamic for g in frozen for cr in g.rules)
        if static:
            effect, reasons, obligations, shadow = _evaluate(frozen, req)
            return _Plan(True, frozen, effect, reasons, obligations, shadow)
        return _Plan(False, frozen, "not_applicable", (), (), ())

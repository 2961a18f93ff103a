"""The policy, bound to one query (app, action, purpose, time), compiled to per-origin bitmasks.

Under the reference semantics of :func:`provguard.decide.decide` a rule matches a set of origins
iff it matches one of them (``origins`` overlap), so the deny rules hitting a row whose label is
the mask ``M`` are exactly the union, over the origins ``o`` in ``M``, of those hitting ``{o}``.
Deciding each (category, single origin) once therefore gives, for every deny rule, its
*forbidden mask* ``F``; a row is denied by the rule iff ``M & F != 0``. A label ``M = 0`` (no
recorded origin) is decided as ``{unknown}`` (fail closed).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from provguard.decide import Decision, Request, decide
from provguard.policy.model import PolicySet
from provguard.provenance import UNKNOWN, OriginRegistry
from provguard.sqlgen.errors import QueryError
from provguard.sqlgen.keyed import resolve_hash_key

#: Mask strategies, strongest first: a row hit by several rules gets the strongest one.
STRATEGIES: tuple[str, ...] = ("nullify", "placeholder", "redact", "hash")


def strongest(strategies: Iterable[str]) -> str | None:
    """The strongest of ``strategies`` in :data:`STRATEGIES` order, or None if empty."""
    present = set(strategies)
    for s in STRATEGIES:
        if s in present:
            return s
    return None


@dataclass(frozen=True)
class ColumnVerdict:
    """What the policy says about a value of some categories, per origin bit.

    ``masks``: strategy -> mask of origins whose rows get that strategy (strongest rule wins).
    ``refused``: rule id -> mask of origins it denies with no mask obligation (the query must be
    refused when any is non-zero). ``denied``: union of every deny (used for row filters).
    ``mask_rules``: rule id -> mask of origins it denies with a mask obligation (the rules behind
    ``masks``, named in refusals).
    """

    masks: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    denied: int = 0
    mask_rules: dict[str, int] = field(default_factory=dict)

    def nullified(self) -> ColumnVerdict:
        """This verdict for a *derived* output (not a bare protected column): every masked
        origin gets ``nullify``, whatever strategy its rules name. ``hash``/``redact``/
        ``placeholder`` are defined on a stored value only; on an expression they leak it
        (``substr(handle, k)`` redacted shows the k-th character; ``'guess' || substr(handle,
        1, 0)`` hashed is HMAC('guess'), an equality oracle)."""
        masked = 0
        for m in self.masks.values():
            masked |= m
        if not masked or set(self.masks) == {"nullify"}:
            return self
        return ColumnVerdict({"nullify": masked}, self.refused, self.denied, self.mask_rules)

    @property
    def clear(self) -> bool:
        return self.denied == 0


#: the action every query performs whatever it declares: reading values is a ``use``
READ_ACTION = "use"
#: the action a ``CREATE TABLE AS`` performs on top of reading: it keeps the values
STORE_ACTION = "store"


class QueryPolicy:
    """The decision point's answers for one query: ``app`` doing ``action`` for ``purpose`` at
    ``at`` (timezone-aware), optionally as ``controller``. Decisions are memoised per
    (action, category, origin); :attr:`decisions` counts PDP calls.

    **Actions checked** (:attr:`actions`): a query reads values, so it is always a ``use``
    whatever ``action`` it declares; the declared action (``display``, ``store``, ``derive``...)
    is checked too, and the stricter answer wins: a value denied under any checked action is
    denied (refused or masked as that rule says, and the refusal names the rule). A ``CREATE
    TABLE AS`` also stores what it reads (:meth:`with_actions` adds ``store``; the rewrite does
    it). ``extra_actions`` adds more actions to check. ``hash_key``: the deployment's key
    of the keyed ``hash`` mask (:mod:`provguard.sqlgen.keyed`; default ``$PROVGUARD_HASH_KEY``);
    ``hash_key_source`` names where the key came from in that error (e.g. ``"$MY_KEY"``);
    a key under 16 bytes raises :class:`~provguard.sqlgen.errors.QueryError` when a ``hash``
    mask needs it (:attr:`hash_key`), not before."""

    def __init__(
        self,
        policy: PolicySet,
        registry: OriginRegistry,
        *,
        app: str,
        purpose: str | None,
        at: datetime,
        action: str = "use",
        controller: str | None = None,
        hash_key: bytes | str | None = None,
        hash_key_source: str | None = None,
        extra_actions: Iterable[str] = (),
    ) -> None:
        self.policy = policy
        self.registry = registry
        self.app = app
        self.purpose = purpose
        self.at = at
        self.action = action
        #: every action a value is checked under: ``use``, the declared one, then the extras
        self.actions: tuple[str, ...] = tuple(dict.fromkeys((READ_ACTION, action, *extra_actions)))
        self.controller = controller
        # a bad key (too short) is an error only when a ``hash`` mask is emitted (hash_key)
        self._hash_key: bytes | None = None
        self._hash_key_error: QueryError | None = None
        try:
            self._hash_key = resolve_hash_key(hash_key, source=hash_key_source)
        except QueryError as exc:
            self._hash_key_error = exc
        self._memo: dict[tuple[str, str, frozenset[str]], Decision] = {}
        self._verdicts: dict[tuple[tuple[str, ...], frozenset[str]], ColumnVerdict] = {}
        self.decisions = 0

    def with_actions(self, *actions: str) -> QueryPolicy:
        """This policy also checking ``actions`` (e.g. ``store`` for ``CREATE TABLE AS``);
        ``self`` when it already checks them all. The copy shares the decision memo and the
        hash key (same app, purpose, time and policy)."""
        wanted = tuple(dict.fromkeys((*self.actions, *actions)))
        if wanted == self.actions:
            return self
        other = copy.copy(self)
        other.actions = wanted
        return other

    @property
    def hash_key(self) -> bytes | None:
        """The HMAC key of the ``hash`` mask (``hash_key`` or ``$PROVGUARD_HASH_KEY``; None:
        unset). Raises :class:`~provguard.sqlgen.errors.QueryError` (PG160) if the configured
        key is shorter than :data:`~provguard.sqlgen.keyed.MIN_KEY_BYTES` bytes: the rewrite
        reads it only when it emits a ``hash`` mask, so queries that need none still run."""
        if self._hash_key_error is not None:
            raise self._hash_key_error
        return self._hash_key

    def decide(self, category: str, origins: frozenset[str], action: str | None = None) -> Decision:
        """The PDP's decision for a value of ``category`` labelled ``origins`` under ``action``
        (default: the declared :attr:`action`; RequestError for unknown taxonomy keys)."""
        act = self.action if action is None else action
        key = (act, category, origins)
        d = self._memo.get(key)
        if d is None:
            d = decide(
                self.policy,
                Request(
                    app=self.app,
                    action=act,
                    category=category,
                    origins=origins,
                    at=self.at,
                    purpose=self.purpose,
                    controller=self.controller,
                ),
            )
            self.decisions += 1
            self._memo[key] = d
        return d

    def verdict(self, categories: Iterable[str]) -> ColumnVerdict:
        """The compiled verdict for a value depending on all of ``categories``."""
        cats = frozenset(categories)
        vkey = (self.actions, cats)
        cached = self._verdicts.get(vkey)
        if cached is not None:
            return cached
        per_rule: dict[str, int] = {}
        rule_strategy: dict[str, str | None] = {}
        for action in self.actions:
            for category in sorted(cats):
                for bit, name in enumerate(self.registry.names):
                    d = self.decide(category, frozenset({name}), action)
                    if d.effect != "deny":
                        continue
                    for reason in d.determining:
                        per_rule[reason.rule_id] = per_rule.get(reason.rule_id, 0) | (1 << bit)
                        s = strongest(
                            o.strategy
                            for o in d.obligations
                            if o.kind == "mask" and o.rule_id == reason.rule_id and o.strategy
                        )
                        rule_strategy[reason.rule_id] = s
        masks: dict[str, int] = {}
        refused: dict[str, int] = {}
        mask_rules: dict[str, int] = {}
        denied = 0
        for rule_id, m in per_rule.items():
            denied |= m
            s = rule_strategy[rule_id]
            if s is None:
                refused[rule_id] = m
            else:
                masks[s] = masks.get(s, 0) | m
                mask_rules[rule_id] = m
        v = ColumnVerdict(masks, refused, denied, mask_rules)
        self._verdicts[vkey] = v
        return v

    def row_strategy(
        self, categories: Iterable[str], mask: int, *, derived: bool = False
    ) -> tuple[str, str | None]:
        """The reference answer for one cell, straight from the PDP (no compiled masks):
        ``("clear", None)``, ``("mask", strategy)`` or ``("refuse", None)``. Used by the
        differential tests; ``mask`` 0 is decided as ``{unknown}``; every action of
        :attr:`actions` is checked (the stricter answer wins). ``derived``: the cell is not a
        bare protected column (an expression, aggregate, window...), so any mask is ``nullify``
        (:meth:`ColumnVerdict.nullified`)."""
        origins = self.registry.names_of(mask) if mask else frozenset({UNKNOWN})
        strategies: list[str] = []
        for action in self.actions:
            for category in sorted(set(categories)):
                d = self.decide(category, origins, action)
                if d.effect != "deny":
                    continue
                for reason in d.determining:
                    s = strongest(
                        o.strategy
                        for o in d.obligations
                        if o.kind == "mask" and o.rule_id == reason.rule_id and o.strategy
                    )
                    if s is None:
                        return ("refuse", None)
                    strategies.append(s)
        s = strongest(strategies)
        if s is None:
            return ("clear", None)
        return ("mask", "nullify" if derived else s)

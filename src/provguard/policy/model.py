"""The typed policy AST.

A :class:`Bundle` is one :class:`Instrument` and its :class:`Rule` list; a :class:`PolicySet` is the
bundles in force plus the instrument events recorded so far (``final_judgment`` on a date, ...).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Effect = Literal["deny", "permit"]
InstrumentKind = Literal[
    "court_order.preliminary_injunction",
    "court_order.judgment",
    "platform_terms",
    "statute",
    "regulation",
    "consent",
    "contract",
    "internal_policy",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NotList(_Strict):
    """``{not: [a, b]}``: any value except these."""

    not_: tuple[str, ...] = Field(alias="not", min_length=1)


class Selector(_Strict):
    """Which values a rule targets on one axis: any of ``values``, or anything but ``excluded``.

    Written in YAML as a list (``[douyin]``), as ``{not: [douyin]}``, or omitted (= any).
    """

    values: tuple[str, ...] | None = None
    excluded: tuple[str, ...] = ()

    @classmethod
    def parse(cls, raw: object) -> Selector:
        if raw is None or raw == "any":
            return cls()
        if isinstance(raw, NotList):
            return cls(excluded=raw.not_)
        if isinstance(raw, (list, tuple)):
            return cls(values=tuple(raw))
        raise TypeError(f"not a selector: {raw!r}")

    def matches(self, value: str | None) -> bool:
        if value is None:
            return self.values is None and not self.excluded
        if self.values is not None and value not in self.values:
            return False
        return value not in self.excluded

    def describe(self) -> str:
        if self.values is not None:
            return ", ".join(self.values)
        if self.excluded:
            return "any except " + ", ".join(self.excluded)
        return "any"


class EventEnd(_Strict):
    """Validity that ends when a named event is recorded (``final_judgment``)."""

    event: str = Field(min_length=1, pattern=r"^[a-z][a-z0-9_]*$")


class Instrument(_Strict):
    """The source of a restriction, with citation and validity (dates: calendar days, UTC)."""

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    kind: InstrumentKind
    title: str | None = None
    issuer: str = Field(min_length=1)
    citation: str | None = None
    parties: tuple[str, ...] = ()
    issued: date | None = None
    effective_from: date
    effective_until: date | EventEnd | None = None
    url: str | None = None

    def in_force(self, at: datetime, events: Mapping[tuple[str, str], date]) -> bool:
        """True when the instrument applies at ``at`` given the recorded ``events``."""
        day = at.date()
        if day < self.effective_from:
            return False
        until = self.effective_until
        if isinstance(until, date):
            return day < until
        if isinstance(until, EventEnd):
            ended = events.get((self.id, until.event))
            return ended is None or day < ended
        return True

    def validity_text(self) -> str:
        until = self.effective_until
        if isinstance(until, EventEnd):
            end = f"until the event '{until.event}'"
        elif until is not None:
            end = f"until {until.isoformat()} (exclusive)"
        else:
            end = "with no end"
        return f"from {self.effective_from.isoformat()} {end}"


class DataTarget(_Strict):
    """What data a rule covers: data categories (hierarchical) and origins (any overlap)."""

    categories: tuple[str, ...] | None = None
    origins: tuple[str, ...] | None = None


class Unless(_Strict):
    """An exception written into the instrument: when it holds, the rule does not deny.

    ``grant_first_used_by_recipient_before``: the recipient app first used the grant before this
    day (accounts that had already logged in before the order).
    ``grant_granted_before``: the grant itself was given before this day.
    """

    grant_first_used_by_recipient_before: date | None = None
    grant_granted_before: date | None = None

    @model_validator(mode="after")
    def _one_condition(self) -> Unless:
        if self.grant_first_used_by_recipient_before is None and self.grant_granted_before is None:
            raise ValueError("an 'unless' needs at least one condition")
        return self


class ObligationSource(_Strict):
    """An obligation a rule attaches to its decision, as written.

    ``kind``: ``mask`` (an enforcement point must mask the value with ``strategy`` instead of
    refusing: ``nullify`` | ``hash`` | ``redact`` | ``placeholder``), ``purge`` (delete within
    ``within``, an ISO-8601 duration such as ``P30D``), ``notify`` (tell ``target``, e.g.
    ``data_subject``), ``log`` (record with ``level``).
    """

    kind: Literal["mask", "purge", "notify", "log"]
    strategy: Literal["nullify", "hash", "redact", "placeholder"] | None = None
    within: str | None = Field(
        default=None, pattern=r"^P(?:\d+D)?(?:T(?:\d+H)?(?:\d+M)?(?:\d+S)?)?$"
    )
    target: str | None = None
    level: str | None = None

    @model_validator(mode="after")
    def _fields_for_kind(self) -> ObligationSource:
        if self.kind == "mask" and self.strategy is None:
            raise ValueError("a mask obligation needs a strategy")
        if self.kind == "purge" and self.within is None:
            raise ValueError("a purge obligation needs 'within' (ISO-8601 duration, e.g. P30D)")
        return self


class RuleSource(_Strict):
    """A rule as written (selectors still raw); see :class:`Rule` for the checked form."""

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    effect: Effect
    description: str | None = None
    actions: tuple[str, ...] = Field(min_length=1)
    purposes: tuple[str, ...] | None = None
    apps: tuple[str, ...] | NotList | None = None
    controllers: tuple[str, ...] | NotList | None = None
    recipients: tuple[str, ...] | NotList | None = None
    data: DataTarget = DataTarget()
    unless: Unless | None = None
    obligations: tuple[ObligationSource, ...] = ()


class BundleSource(_Strict):
    instrument: Instrument
    rules: tuple[RuleSource, ...] = Field(min_length=1)


@dataclass(frozen=True)
class Rule:
    """One checked rule of an instrument."""

    id: str
    instrument_id: str
    effect: Effect
    actions: frozenset[str]
    purposes: tuple[str, ...] | None
    apps: Selector
    controllers: Selector
    recipients: Selector
    categories: tuple[str, ...] | None
    origins: frozenset[str] | None
    unless: Unless | None
    description: str | None = None
    location: str | None = None  # file:line:col of the rule, for explanations
    obligations: tuple[ObligationSource, ...] = ()

    def summary(self) -> str:
        parts = [
            self.effect,
            "/".join(sorted(self.actions)),
            f"purposes: {', '.join(self.purposes) if self.purposes else 'any'}",
            f"apps: {self.apps.describe()}",
        ]
        if self.recipients.values is not None or self.recipients.excluded:
            parts.append(f"recipients: {self.recipients.describe()}")
        parts.append(f"data: {', '.join(self.categories) if self.categories else 'any'}")
        parts.append(f"origins: {', '.join(sorted(self.origins)) if self.origins else 'any'}")
        if self.unless is not None:
            conds = self.unless.model_dump(exclude_none=True)
            parts.append("unless " + ", ".join(f"{k} {v}" for k, v in conds.items()))
        return "; ".join(parts)


@dataclass(frozen=True)
class Bundle:
    instrument: Instrument
    rules: tuple[Rule, ...]
    path: str | None = None


@dataclass(frozen=True)
class PolicySet:
    """Bundles plus recorded instrument events; immutable, so a failed reload cannot corrupt it."""

    bundles: tuple[Bundle, ...]
    events: Mapping[tuple[str, str], date] = field(default_factory=dict)

    @classmethod
    def of(cls, bundles: Iterable[Bundle]) -> PolicySet:
        return cls(tuple(bundles))

    def with_event(self, instrument_id: str, event: str, on: date) -> PolicySet:
        events = dict(self.events)
        events[(instrument_id, event)] = on
        return PolicySet(self.bundles, events)

    def rules(self) -> Iterable[tuple[Instrument, Rule]]:
        for bundle in self.bundles:
            for rule in bundle.rules:
                yield bundle.instrument, rule

    def instrument(self, instrument_id: str) -> Instrument:
        for bundle in self.bundles:
            if bundle.instrument.id == instrument_id:
                return bundle.instrument
        raise KeyError(instrument_id)

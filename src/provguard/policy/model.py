"""The typed policy AST.

A :class:`Bundle` is one :class:`Instrument` and its :class:`Rule` list; a :class:`PolicySet` is the
bundles in force plus the instrument events recorded so far (``final_judgment`` on a date, ...).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, tzinfo
from functools import cached_property, lru_cache
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from provguard.provenance.origins import UNKNOWN as UNKNOWN_ORIGIN
from provguard.taxonomy import BUILTIN_TAXONOMIES, ExtensionKey, Taxonomies

Effect = Literal["deny", "permit"]
DefaultEffect = Literal["deny", "permit", "not_applicable"]
#: how a bundle's deny rules treat a value whose provenance label holds ``unknown`` (no recorded
#: origin): ``fail_closed`` -- it may be from any origin a deny rule names, so such a rule also
#: matches it; ``as_written`` -- origins match exactly as listed
UnknownOrigin = Literal["fail_closed", "as_written"]
Mode = Literal["enforce", "shadow"]
InstrumentKind = Literal[
    "court_order",
    "court_order.preliminary_injunction",
    "court_order.judgment",
    "court_order.ruling",
    "platform_terms",
    "platform_terms.developer_agreement",
    "statute",
    "regulation",
    "regulatory_guidance",
    "consent",
    "consent_record",
    "contract",
    "internal_policy",
]
#: the instrument kinds, for help texts and checks
INSTRUMENT_KINDS: tuple[str, ...] = InstrumentKind.__args__  # type: ignore[attr-defined]


@lru_cache(maxsize=512)
def zone_of(name: str | None) -> tzinfo:
    """The :class:`~datetime.tzinfo` of an IANA zone name (``None`` and ``"UTC"`` give
    :data:`datetime.UTC`). Raises :class:`ValueError` for a name the IANA database (the system's,
    or the ``tzdata`` package) does not know; the loader turns that into a located error."""
    if name is None or name == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(_zone_problem(name)) from None


@lru_cache(maxsize=1)
def _zone_names() -> tuple[str, ...]:
    return tuple(sorted(available_timezones() | {"UTC"}))


def _zone_problem(name: str) -> str:
    names = _zone_names()
    folded = {n.lower(): n for n in names}
    close = [folded[name.lower()]] if name.lower() in folded else []
    close = close or difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else "an IANA name such as Asia/Shanghai or UTC"
    return f"unknown time zone '{name}' (IANA names, e.g. Asia/Shanghai); hint: {hint}"


def _check_zone(name: str) -> str:
    zone_of(name)
    return name


#: a YAML ``timezone:`` value: an IANA zone name, checked when the bundle loads
ZoneName = Annotated[str, AfterValidator(_check_zone)]


def day_start(d: date, zone: str | None = None) -> datetime:
    """The first instant of calendar day ``d`` in ``zone`` (local midnight; ``None`` = UTC).

    The result is an aware datetime in ``zone`` (compare it with any aware datetime; it is the
    same instant as its UTC conversion). On a day whose midnight a daylight-saving change skips,
    it is the instant :mod:`zoneinfo` gives for 00:00 with ``fold=0`` (the pre-transition offset).
    Raises :class:`ValueError` for an unknown zone name.
    """
    return datetime(d.year, d.month, d.day, tzinfo=zone_of(zone))


def day_text(t: datetime) -> str:
    """How a day boundary (from :func:`day_start`) is shown: ``2019-03-20`` for UTC midnight,
    ``2019-03-20 Asia/Shanghai`` for local midnight in a named zone, else the ISO instant."""
    local = t.timetz()
    if local.hour == local.minute == local.second == local.microsecond == 0:
        if t.utcoffset() == UTC.utcoffset(None) and not isinstance(t.tzinfo, ZoneInfo):
            return t.date().isoformat()
        key = getattr(t.tzinfo, "key", None)
        if key is not None:
            return f"{t.date().isoformat()} {key}"
    return t.isoformat()


def day_machine(t: datetime) -> str:
    """The JSON form of a day boundary: ``2019-03-20`` for UTC midnight, else the ISO instant
    with its offset (``2019-03-20T00:00:00+08:00``)."""
    text = day_text(t)
    return text if len(text) == 10 else t.isoformat()


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

    @property
    def constrained(self) -> bool:
        """False for ``any`` (the selector matches every value, and a missing one)."""
        return self.values is not None or bool(self.excluded)

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
    """The source of a restriction, with citation and validity.

    Dates are calendar days in ``timezone`` (an IANA name; ``None`` = UTC): ``effective_from``
    starts at local midnight, ``effective_until`` and a recorded end event end at local midnight
    of their day. The loader sets ``timezone`` from the bundle's top-level ``timezone:`` when the
    instrument does not name one.
    """

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
    timezone: ZoneName | None = None

    @property
    def zone(self) -> tzinfo:
        """The zone its dates are days of (UTC when none is declared)."""
        return zone_of(self.timezone)

    def in_force(self, at: datetime, events: Mapping[tuple[str, str], date]) -> bool:
        """True when the instrument applies at ``at`` given the recorded ``events``.

        Compares instants: from local midnight of ``effective_from`` (in :attr:`timezone`) to
        local midnight of the end day (exclusive). A naive ``at`` is read as UTC.
        """
        t = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
        start, end = self.validity_instants(events)
        return start <= t and (end is None or t < end)

    def validity_instants(
        self, events: Mapping[tuple[str, str], date]
    ) -> tuple[datetime, datetime | None]:
        """``(first instant in force, first instant no longer in force or None)``: the
        :meth:`validity_bounds` days at local midnight in :attr:`timezone`."""
        start, end = self.validity_bounds(events)
        return (
            day_start(start, self.timezone),
            day_start(end, self.timezone) if end is not None else None,
        )

    def validity_bounds(self, events: Mapping[tuple[str, str], date]) -> tuple[date, date | None]:
        """``(first day, first day no longer in force or None)`` given the recorded ``events``."""
        until = self.effective_until
        if isinstance(until, EventEnd):
            return self.effective_from, events.get((self.id, until.event))
        return self.effective_from, until

    def validity_text(self) -> str:
        until = self.effective_until
        if isinstance(until, EventEnd):
            end = f"until the event '{until.event}'"
        elif until is not None:
            end = f"until {until.isoformat()} (exclusive)"
        else:
            end = "with no end"
        zone = f" ({self.timezone} days)" if self.timezone not in (None, "UTC") else ""
        return f"from {self.effective_from.isoformat()} {end}{zone}"


class DataTarget(_Strict):
    """What data a rule covers: data categories (hierarchical) and origins (any overlap)."""

    categories: tuple[str, ...] | Literal["any"] | None = None
    origins: tuple[str, ...] | Literal["any"] | None = None


class Unless(_Strict):
    """An exception written into the instrument: when it holds, the rule does not deny.

    ``grant_first_used_by_recipient_before``: the recipient app first used the grant before this
    day (accounts that had already logged in before the order).
    ``grant_granted_before``: the grant itself was given before this day.
    "Before day D" means before local midnight of D in :attr:`timezone` (UTC by default).
    """

    grant_first_used_by_recipient_before: date | None = None
    grant_granted_before: date | None = None
    #: the zone whose local midnight the days mean (the loader fills in the bundle's; None = UTC)
    timezone: ZoneName | None = None

    def cut(self, d: date) -> datetime:
        """Local midnight of ``d`` in :attr:`timezone`."""
        return day_start(d, self.timezone)

    @model_validator(mode="after")
    def _one_condition(self) -> Unless:
        if self.grant_first_used_by_recipient_before is None and self.grant_granted_before is None:
            raise ValueError("an 'unless' needs at least one condition")
        return self


GRANT_TIME_FIELDS = ("grant.granted_at", "grant.first_used_by_recipient_at")
GRANT_STATUSES = ("active", "revoked", "expired")
_FIELD_PATTERN = (
    r"^(grant\.(granted_at|first_used_by_recipient_at|status|scopes)"
    r"|(subject|context)\.[a-z_][a-z0-9_]*)$"
)
_OPERATORS = (
    "equals",
    "in_",
    "not_in",
    "before",
    "on_or_after",
    "at_least",
    "below",
    "contains",
    "exists",
)
_ALLOWED_OPS: dict[str, frozenset[str]] = {
    "grant.granted_at": frozenset({"before", "on_or_after", "exists"}),
    "grant.first_used_by_recipient_at": frozenset({"before", "on_or_after", "exists"}),
    "grant.status": frozenset({"equals", "in_", "not_in", "exists"}),
    "grant.scopes": frozenset({"contains", "exists"}),
}

Scalar = bool | int | float | date | str


class FieldCondition(_Strict):
    """A typed test of one request field; every operator given must hold (and at least one is).

    ``field``: ``grant.granted_at`` / ``grant.first_used_by_recipient_at`` (times; ``before`` /
    ``on_or_after`` a calendar day, whose start is local midnight in :attr:`timezone`, UTC by
    default; ``exists``), ``grant.status`` (``active`` | ``revoked`` |
    ``expired``; ``equals`` / ``in`` / ``not_in`` / ``exists``), ``grant.scopes`` (``contains`` a
    scope, ``exists``), ``subject.NAME`` and ``context.NAME`` (attributes of the data subject and
    of the request: every operator; numbers with ``at_least`` / ``below``). A missing or mistyped
    value makes every operator false except ``exists: false`` (fail closed).
    """

    field: str

    @field_validator("field")
    @classmethod
    def _known_field(cls, value: str) -> str:
        if not re.match(_FIELD_PATTERN, value):
            raise ValueError(
                f"unknown condition field '{value}'; fields: grant.granted_at, "
                "grant.first_used_by_recipient_at, grant.status, grant.scopes, subject.NAME, "
                "context.NAME"
            )
        return value

    equals: bool | int | float | date | str | None = None
    in_: tuple[str, ...] | None = Field(default=None, alias="in", min_length=1)
    not_in: tuple[str, ...] | None = Field(default=None, min_length=1)
    before: date | None = None
    on_or_after: date | None = None
    at_least: float | None = None
    below: float | None = None
    contains: str | None = None
    exists: bool | None = None
    #: the zone whose local midnight ``before`` / ``on_or_after`` days (and date values) mean;
    #: the loader fills in the bundle's when the condition names none (None = UTC)
    timezone: ZoneName | None = None

    def cut(self, d: date) -> datetime:
        """Local midnight of ``d`` in :attr:`timezone`."""
        return day_start(d, self.timezone)

    @model_validator(mode="after")
    def _operators(self) -> FieldCondition:
        given = [op for op in _OPERATORS if getattr(self, op) is not None]
        if not given:
            raise ValueError(
                "a condition needs an operator: equals, in, not_in, before, on_or_after, "
                "at_least, below, contains or exists"
            )
        allowed = _ALLOWED_OPS.get(self.field)
        if allowed is not None:
            bad = [op.rstrip("_") for op in given if op not in allowed]
            if bad:
                raise ValueError(
                    f"field '{self.field}' does not take {', '.join(bad)}; it takes "
                    + ", ".join(sorted(op.rstrip("_") for op in allowed))
                )
        if self.field == "grant.status":
            for value in (self.equals, *(self.in_ or ()), *(self.not_in or ())):
                if value is not None and value not in GRANT_STATUSES:
                    raise ValueError(
                        f"grant.status is one of {', '.join(GRANT_STATUSES)}, not {value!r}"
                    )
        return self

    def operators(self) -> dict[str, Any]:
        """The operators given, by their YAML names (``in`` not ``in_``)."""
        return {
            op.rstrip("_"): getattr(self, op) for op in _OPERATORS if getattr(self, op) is not None
        }

    def describe(self) -> str:
        parts = []
        for op, value in self.operators().items():
            shown = ", ".join(value) if isinstance(value, tuple) else str(value)
            parts.append(f"{self.field} {op.replace('_', ' ')} {shown}")
        zone = f" ({self.timezone})" if self.timezone not in (None, "UTC") else ""
        return " and ".join(parts) + zone


class ConsentRequirement(_Strict):
    """What a consent record in the request must say.

    ``state: active``: a consent given at or before the request time and not withdrawn by then,
    covering the request (its categories cover the request category; its purposes cover the
    request purpose when there is one; its recipient is the request recipient when there is one);
    ``separate``: it must be a separate consent (PIPL Art. 23, 29); ``names``: fields the record
    must state (``recipient``, ``purpose``, ``method``, ``categories``).
    ``state: withdrawn``: no active covering consent, and a covering one was withdrawn at or
    before the request time (PIPL Art. 15).
    """

    state: Literal["active", "withdrawn"] = "active"
    separate: bool = False
    names: tuple[Literal["recipient", "purpose", "method", "categories"], ...] = ()

    def describe(self) -> str:
        what = "a separate consent" if self.separate else "a consent"
        named = f" naming {', '.join(self.names)}" if self.names else ""
        return f"{what}{named} is {self.state}"


class ConsentCondition(_Strict):
    """``{consent: {...}}``: a condition on the consent records carried by the request."""

    consent: ConsentRequirement

    def describe(self) -> str:
        return self.consent.describe()


def _condition_tag(raw: Any) -> str:
    if isinstance(raw, dict):
        return "ConsentCondition" if "consent" in raw else "FieldCondition"
    return "ConsentCondition" if isinstance(raw, ConsentCondition) else "FieldCondition"


Condition = Annotated[
    Annotated[FieldCondition, Tag("FieldCondition")]
    | Annotated[ConsentCondition, Tag("ConsentCondition")],
    Discriminator(_condition_tag),
]


def _unless_tag(raw: Any) -> str:
    return "ConditionList" if isinstance(raw, list | tuple) else "Unless"


UnlessSource = Annotated[
    Annotated[Unless, Tag("Unless")] | Annotated[tuple[Condition, ...], Tag("ConditionList")],
    Discriminator(_unless_tag),
]


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
    mode: Mode = "enforce"
    description: str | None = None
    actions: Annotated[tuple[str, ...], Field(min_length=1)] | Literal["any"]
    purposes: tuple[str, ...] | Literal["any"] | None = None
    apps: tuple[str, ...] | NotList | Literal["any"] | None = None
    controllers: tuple[str, ...] | NotList | Literal["any"] | None = None
    recipients: tuple[str, ...] | NotList | Literal["any"] | None = None
    data: DataTarget = DataTarget()
    when: tuple[Condition, ...] = ()
    unless: UnlessSource | None = None
    obligations: tuple[ObligationSource, ...] = ()


class TaxonomyEntrySource(_Strict):
    """One taxonomy extension as written: a dotted ``key`` below an existing key, or a
    one-segment ``key`` with an explicit ``parent`` (a known key or another declaration's key).
    See :mod:`provguard.taxonomy.extension`."""

    key: str = Field(min_length=1)
    parent: str | None = Field(default=None, min_length=1)
    description: str | None = None


class TaxonomySource(_Strict):
    """``taxonomy:`` of a bundle: custom data ``categories`` and ``purposes`` it declares."""

    categories: tuple[TaxonomyEntrySource, ...] = ()
    purposes: tuple[TaxonomyEntrySource, ...] = ()


class BundleSource(_Strict):
    instrument: Instrument
    timezone: ZoneName | None = None
    taxonomy: TaxonomySource = TaxonomySource()
    default: DefaultEffect = "not_applicable"
    unknown_origin: UnknownOrigin | None = None
    known_apps: tuple[Annotated[str, Field(min_length=1)], ...] = ()
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
    mode: Mode = "enforce"
    when: tuple[FieldCondition | ConsentCondition, ...] = ()
    unless_conditions: tuple[FieldCondition | ConsentCondition, ...] = ()
    #: True when the loader added ``unknown`` to :attr:`origins` (the bundle's
    #: ``unknown_origin: fail_closed``): the rule as written did not list it
    unknown_added: bool = False

    @property
    def has_exception(self) -> bool:
        """True when the rule carries an ``unless`` (legacy keys or a condition list)."""
        return self.unless is not None or bool(self.unless_conditions)

    @property
    def dynamic(self) -> bool:
        """True when matching or the exception depends on request context beyond the target."""
        return bool(self.when) or self.has_exception

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
        if self.origins and self.unknown_added:
            written = ", ".join(sorted(self.origins - {UNKNOWN_ORIGIN}))
            parts.append(f"origins: {written} (and unknown: fail closed)")
        else:
            parts.append(f"origins: {', '.join(sorted(self.origins)) if self.origins else 'any'}")
        if self.when:
            parts.append("when " + " and ".join(c.describe() for c in self.when))
        if self.unless is not None:
            conds = self.unless.model_dump(exclude_none=True, exclude={"timezone"})
            parts.append("unless " + ", ".join(f"{k} {v}" for k, v in conds.items()))
        if self.unless_conditions:
            parts.append("unless " + " and ".join(c.describe() for c in self.unless_conditions))
        if self.mode == "shadow":
            parts.append("mode: shadow")
        return "; ".join(parts)


@dataclass(frozen=True)
class Bundle:
    """One instrument and its rules; ``default`` is the effect the instrument gives (while in force)
    to a request none of its enforced rules matches (``not_applicable``: it says nothing)."""

    instrument: Instrument
    rules: tuple[Rule, ...]
    path: str | None = None
    default: DefaultEffect = "not_applicable"
    known_apps: tuple[str, ...] = ()
    #: how the loader treated ``unknown`` in this bundle's deny rules (:data:`UnknownOrigin`;
    #: the rules' :attr:`Rule.origins` already hold the result)
    unknown_origin: UnknownOrigin = "as_written"
    #: the taxonomy keys this bundle declares (full dotted keys, parents first)
    taxonomy_extensions: tuple[ExtensionKey, ...] = ()
    #: ``(instrument key, "file:line:col")`` of the instrument's dates as written (``issued``,
    #: ``effective_from``, ``effective_until``), for warnings
    locations: tuple[tuple[str, str], ...] = ()

    def location_of(self, key: str) -> str | None:
        """``file:line:col`` of instrument key ``key`` (``effective_from``, ...), or the file."""
        return dict(self.locations).get(key, self.path)

    def apps(self) -> frozenset[str]:
        """The apps this bundle knows: its ``known_apps`` and every app its rules name (in
        ``apps`` or ``recipients``, listed or excluded)."""
        out = set(self.known_apps)
        for r in self.rules:
            for sel in (r.apps, r.recipients):
                out.update(sel.values or ())
                out.update(sel.excluded)
        return frozenset(out)


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

    def with_events(self, events: Mapping[tuple[str, str], date]) -> PolicySet:
        """A new set with ``events`` ((instrument id, event name) -> day) added."""
        merged = dict(self.events)
        merged.update(events)
        return PolicySet(self.bundles, merged)

    @cached_property
    def taxonomy(self) -> Taxonomies:
        """The vocabularies of this set: the built-in ones plus every bundle's
        ``taxonomy_extensions``. Requests decided under the set are checked against it
        (``Request(..., taxonomy=policy.taxonomy)``); without extensions it is
        :data:`~provguard.taxonomy.BUILTIN_TAXONOMIES`. Raises
        :class:`~provguard.errors.TaxonomyError` when a bundle's extension hangs below a key no
        bundle of the set declares (bundles combined by hand; the loader reports this at
        file:line:col instead)."""
        keys = [k for b in self.bundles for k in b.taxonomy_extensions]
        return BUILTIN_TAXONOMIES.extended(sorted(keys, key=lambda k: k.key.count(".")))

    def known_apps(self) -> frozenset[str]:
        """Every app a bundle of the set declares (``known_apps``) or a rule names; empty when no
        bundle says anything about apps (then any app name is as good as another)."""
        return frozenset().union(*(b.apps() for b in self.bundles))

    def rules(self) -> Iterable[tuple[Instrument, Rule]]:
        for bundle in self.bundles:
            for rule in bundle.rules:
                yield bundle.instrument, rule

    def instrument(self, instrument_id: str) -> Instrument:
        for bundle in self.bundles:
            if bundle.instrument.id == instrument_id:
                return bundle.instrument
        raise KeyError(instrument_id)

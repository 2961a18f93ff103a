"""Decision requests and decisions."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal

from provguard.errors import RequestError, TaxonomyError
from provguard.provenance.origins import KNOWN_ORIGINS
from provguard.taxonomy import BUILTIN_TAXONOMIES, Taxonomies, Taxonomy

Effect = Literal["permit", "deny", "not_applicable"]
Outcome = Literal["applied", "excepted", "shadow"]
AttrValue = bool | int | float | str | date | frozenset[str]

PURPOSE_REQUIRED = frozenset({"use", "derive", "display"})
GRANT_STATUSES = frozenset({"active", "revoked", "expired"})
GrantFacts = Literal["asserted", "recorded"]
"""Where a request's grant times come from: ``asserted`` -- the caller says so (the HTTP API's
``POST /v1/decisions``, ``provguard decide --first-used-at``): they are checked for consistency
(:func:`check_grant_times`); ``recorded`` -- read from a store of record by provguard itself
(the grant registry's token exchange, the job's transfer audit, the analysis' synthetic
witnesses): taken as stored."""


def check_grant_times(
    at: datetime,
    first_used: datetime | None,
    granted: datetime | None,
    where: str = "",
) -> None:
    """Refuse grant times that cannot all be true (docs/policy-language.md, "Grant facts").

    The recipient cannot have first used a grant before it was given
    (``grant_first_used_by_recipient_at`` < ``grant_granted_at``), nor after the time the
    request is decided at (``grant_first_used_by_recipient_at`` > ``at``: a use that has not
    happened yet). Equal instants are consistent. An absent time is not compared. All times are
    timezone-aware (compared as instants). ``where`` prefixes the message (a batch row).

    Raises :class:`RequestError` (PG140) naming both fields and their values."""
    if first_used is None:
        return
    if granted is not None and first_used < granted:
        raise RequestError(
            f"{where}'grant_first_used_by_recipient_at' ({first_used.isoformat()}) precedes "
            f"'grant_granted_at' ({granted.isoformat()}): the recipient cannot have used the "
            "grant before it was given"
        )
    if first_used > at:
        raise RequestError(
            f"{where}'grant_first_used_by_recipient_at' ({first_used.isoformat()}) lies after "
            f"'at' ({at.isoformat()}), the time the request is decided at: a first use cannot "
            "be in the future of the decision"
        )


class Attrs(Mapping[str, AttrValue]):
    """An immutable, hashable mapping of attribute name -> value (subject or request context).

    Values: bool, int, float, str, ``datetime.date``, or a frozenset of str. Raises
    :class:`RequestError` for another value type (lists must be given as frozensets).
    """

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[str, AttrValue] | None = None) -> None:
        items = dict(data or {})
        for key, value in items.items():
            if not isinstance(key, str) or not isinstance(
                value, bool | int | float | str | date | frozenset
            ):
                raise RequestError(f"attribute '{key}': unsupported value {value!r}")
        self._data = items
        self._hash = hash(frozenset(items.items()))

    def __getitem__(self, key: str) -> AttrValue:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Attrs):
            return self._data == other._data
        return isinstance(other, Mapping) and self._data == dict(other)

    def __repr__(self) -> str:
        return f"Attrs({self._data!r})"

    def as_dict(self) -> dict[str, Any]:
        return {
            k: (
                sorted(v)
                if isinstance(v, frozenset)
                else v.isoformat()
                if isinstance(v, date)
                else v
            )
            for k, v in sorted(self._data.items())
        }


@dataclass(frozen=True)
class ConsentRecord:
    """A data subject's consent as the request carries it (PIPL Art. 14, 15, 23, 29).

    ``categories`` / ``purposes``: data-category and purpose keys it covers (hierarchical);
    ``recipient``: the receiving app or handler it names (provision to others, Art. 23);
    ``method``: the processing method it names; ``separate``: given separately, not bundled with
    other terms; ``given_at`` / ``withdrawn_at``: timezone-aware times.
    """

    consent_id: str
    categories: frozenset[str]
    purposes: frozenset[str] = frozenset()
    recipient: str | None = None
    method: str | None = None
    separate: bool = False
    given_at: datetime | None = None
    withdrawn_at: datetime | None = None

    def active_at(self, at: datetime) -> bool:
        """Given at or before ``at`` and not withdrawn by then."""
        if self.given_at is None or self.given_at > at:
            return False
        return self.withdrawn_at is None or at < self.withdrawn_at

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "consent_id": self.consent_id,
            "categories": sorted(self.categories),
            "purposes": sorted(self.purposes),
            "separate": self.separate,
        }
        for name in ("recipient", "method"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        for name in ("given_at", "withdrawn_at"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.isoformat()
        return out


@dataclass(frozen=True)
class Request:
    """One question to the PDP: may ``app`` perform ``action`` on a value of ``category`` whose
    provenance label holds ``origins``, for ``purpose`` (and, for a transfer, to ``recipient``)?

    ``at`` is the (timezone-aware) time the policy is evaluated at.
    ``grant_first_used_by_recipient_at``, ``grant_granted_at``, ``grant_status`` (active / revoked
    / expired) and ``grant_scopes`` are grant context; ``subject`` and ``context`` are attributes
    of the data subject and of the request (a mapping, stored as :class:`Attrs`); ``consents`` the
    consent records that bear on the request. All of these are read by ``when`` / ``unless``
    conditions; missing context never satisfies a condition (fail closed).

    ``grant_facts`` (:data:`GrantFacts`, keyword-only, not part of the request's identity):
    ``asserted`` for grant times a caller states (HTTP API, CLI): they must be consistent
    (:func:`check_grant_times`: first use neither before the grant nor after ``at``);
    ``recorded`` (default) for times provguard read from a store of record.

    ``taxonomy``: the vocabularies ``action``, ``category`` and ``purpose`` are checked against;
    pass ``policy.taxonomy`` to use the taxonomy extensions of a policy set
    (docs/policy-language.md, "Taxonomy extensions"); ``None`` (default) = the built-in
    vocabularies. It is not part of the request's identity (equality, hash, ``as_dict``).

    Raises :class:`RequestError` for unknown taxonomy keys, a naive ``at``, a missing purpose for
    use/derive/display, a transfer without a recipient, an unknown grant status, naive times, or
    asserted grant times that contradict each other or ``at``.
    """

    app: str
    action: str
    category: str
    origins: frozenset[str]
    at: datetime
    purpose: str | None = None
    recipient: str | None = None
    controller: str | None = None
    grant_first_used_by_recipient_at: datetime | None = None
    grant_granted_at: datetime | None = None
    grant_status: str | None = None
    grant_scopes: frozenset[str] | None = None
    subject: Mapping[str, AttrValue] = field(default_factory=Attrs)
    context: Mapping[str, AttrValue] = field(default_factory=Attrs)
    consents: tuple[ConsentRecord, ...] = ()
    taxonomy: Taxonomies | None = field(default=None, compare=False, repr=False, kw_only=True)
    grant_facts: GrantFacts = field(default="recorded", compare=False, repr=False, kw_only=True)

    def __post_init__(self) -> None:
        if self.at.tzinfo is None:
            raise RequestError("request time 'at' must be timezone-aware")
        if not isinstance(self.subject, Attrs):
            object.__setattr__(self, "subject", Attrs(self.subject))
        if not isinstance(self.context, Attrs):
            object.__setattr__(self, "context", Attrs(self.context))
        if not isinstance(self.consents, tuple):
            object.__setattr__(self, "consents", tuple(self.consents))
        if self.grant_scopes is not None and not isinstance(self.grant_scopes, frozenset):
            object.__setattr__(self, "grant_scopes", frozenset(self.grant_scopes))
        if self.grant_status is not None and self.grant_status not in GRANT_STATUSES:
            raise RequestError(
                f"unknown grant status '{self.grant_status}' (active, revoked or expired)"
            )
        for name in ("grant_first_used_by_recipient_at", "grant_granted_at"):
            t = getattr(self, name)
            if t is not None and t.tzinfo is None:
                raise RequestError(f"'{name}' must be timezone-aware")
        if self.grant_facts == "asserted":
            check_grant_times(self.at, self.grant_first_used_by_recipient_at, self.grant_granted_at)
        elif self.grant_facts != "recorded":
            raise RequestError(f"grant_facts is 'asserted' or 'recorded', not {self.grant_facts!r}")
        for c in self.consents:
            for t in (c.given_at, c.withdrawn_at):
                if t is not None and t.tzinfo is None:
                    raise RequestError(f"consent '{c.consent_id}': times must be timezone-aware")
        tax = self.taxonomy if self.taxonomy is not None else BUILTIN_TAXONOMIES
        if self.action not in tax.actions:
            raise RequestError(f"unknown action '{self.action}'")
        if self.category not in tax.categories:
            raise RequestError(_unknown(tax.categories, self.category))
        if self.purpose is not None and self.purpose not in tax.purposes:
            raise RequestError(_unknown(tax.purposes, self.purpose))
        if self.action in PURPOSE_REQUIRED and self.purpose is None:
            raise RequestError(f"action '{self.action}' needs a purpose")
        if self.action == "transfer" and not self.recipient:
            raise RequestError("action 'transfer' needs a recipient")
        if not self.origins:
            raise RequestError(
                "a request needs at least one origin (use 'unknown' when none is recorded)"
            )
        unknown = sorted(o for o in self.origins if o not in KNOWN_ORIGINS)
        if unknown:
            raise RequestError(
                f"unknown origin(s) {', '.join(repr(o) for o in unknown)}; "
                f"known: {', '.join(sorted(KNOWN_ORIGINS))}"
            )

    def as_dict(self) -> dict[str, Any]:
        """The request as JSON-ready values (``taxonomy`` is left out)."""
        out: dict[str, Any] = {
            "app": self.app,
            "action": self.action,
            "category": self.category,
            "origins": sorted(self.origins),
            "at": self.at.isoformat(),
        }
        for name in ("purpose", "recipient", "controller"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        for name in ("grant_first_used_by_recipient_at", "grant_granted_at"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.isoformat()
        if self.grant_status is not None:
            out["grant_status"] = self.grant_status
        if self.grant_scopes is not None:
            out["grant_scopes"] = sorted(self.grant_scopes)
        for name in ("subject", "context"):
            attrs = getattr(self, name)
            if attrs:
                out[name] = attrs.as_dict()
        if self.consents:
            out["consents"] = [c.as_dict() for c in self.consents]
        return out


def _unknown(taxonomy: Taxonomy, key: str) -> str:
    """``unknown data category 'KEY'; known keys here: ...`` (the siblings it may be a typo of)."""
    try:
        taxonomy.check(key)
    except TaxonomyError as exc:
        return exc.message
    return f"unknown {taxonomy.name} '{key}'"


@dataclass(frozen=True)
class Reason:
    """A rule that took part in a decision: ``applied`` (its effect counted), ``excepted`` (it
    matched, but an ``unless`` exception of the instrument held, so it permits instead) or
    ``shadow`` (a rule in ``mode: shadow`` that would have denied; it counts for nothing).
    A bundle's default effect appears with ``rule_id == "(default)"``."""

    rule_id: str
    instrument_id: str
    effect: Literal["deny", "permit"]
    outcome: Outcome
    explanation: str


@dataclass(frozen=True)
class Obligation:
    """Something an enforcement point must do along with the decision, from rule ``rule_id``.

    ``kind``: ``mask`` (mask with ``strategy`` instead of refusing), ``purge`` (delete within
    ``within_seconds``), ``notify`` (tell ``target``), ``log``.
    """

    kind: Literal["mask", "purge", "notify", "log"]
    rule_id: str
    instrument_id: str
    strategy: str | None = None
    within_seconds: int | None = None
    target: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class Decision:
    """The PDP's answer. ``reasons`` lists the determining rules first (deny overrides permit).

    ``shadow``: the rules in ``mode: shadow`` that would have denied this request (outcome
    ``shadow``); they never change ``effect``, but enforcement points log them.
    """

    effect: Effect
    request: Request
    reasons: tuple[Reason, ...] = field(default=())
    obligations: tuple[Obligation, ...] = field(default=())
    shadow: tuple[Reason, ...] = field(default=())

    @property
    def shadow_denied(self) -> bool:
        """True when a shadow rule would have denied this request."""
        return bool(self.shadow)

    @property
    def allowed(self) -> bool:
        """What an enforcement point does: everything but ``deny`` proceeds."""
        return self.effect != "deny"

    @property
    def determining(self) -> tuple[Reason, ...]:
        if self.effect == "deny":
            return tuple(r for r in self.reasons if r.effect == "deny" and r.outcome == "applied")
        return self.reasons

    @property
    def excepted(self) -> bool:
        """True when the decision is a permit because an instrument's exception held
        (for example a grandfathered account)."""
        return self.effect == "permit" and any(r.outcome == "excepted" for r in self.reasons)

    def explain(self) -> str:
        lines = [
            f"{r.rule_id} ({r.instrument_id}): {r.outcome} {r.effect} - {r.explanation}"
            for r in (*self.reasons, *self.shadow)
        ]
        if not self.reasons:
            lines.insert(0, "no rule in force matches this request")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "effect": self.effect,
            "request": self.request.as_dict(),
            "reasons": [
                {
                    "rule": r.rule_id,
                    "instrument": r.instrument_id,
                    "effect": r.effect,
                    "outcome": r.outcome,
                    "explanation": r.explanation,
                }
                for r in self.reasons
            ],
            "obligations": [o.as_dict() for o in self.obligations],
            **(
                {
                    "shadow": [
                        {
                            "rule": r.rule_id,
                            "instrument": r.instrument_id,
                            "effect": r.effect,
                            "outcome": r.outcome,
                            "explanation": r.explanation,
                        }
                        for r in self.shadow
                    ]
                }
                if self.shadow
                else {}
            ),
        }

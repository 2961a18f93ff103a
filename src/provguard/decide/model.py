"""Decision requests and decisions."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from provguard.errors import RequestError
from provguard.taxonomy import ACTIONS, DATA_CATEGORIES, PURPOSES

Effect = Literal["permit", "deny", "not_applicable"]
Outcome = Literal["applied", "excepted"]

PURPOSE_REQUIRED = frozenset({"use", "derive", "display"})


@dataclass(frozen=True)
class Request:
    """One question to the PDP: may ``app`` perform ``action`` on a value of ``category`` whose
    provenance label holds ``origins``, for ``purpose`` (and, for a transfer, to ``recipient``)?

    ``at`` is the (timezone-aware) time the policy is evaluated at.
    ``grant_first_used_by_recipient_at``
    and ``grant_granted_at`` are grant context read by ``unless`` conditions.

    Raises :class:`RequestError` for unknown taxonomy keys, a naive ``at``, a missing purpose for
    use/derive/display, or a transfer without a recipient.
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

    def __post_init__(self) -> None:
        if self.at.tzinfo is None:
            raise RequestError("request time 'at' must be timezone-aware")
        if self.action not in ACTIONS:
            raise RequestError(f"unknown action '{self.action}'")
        if self.category not in DATA_CATEGORIES:
            raise RequestError(f"unknown data category '{self.category}'")
        if self.purpose is not None and self.purpose not in PURPOSES:
            raise RequestError(f"unknown purpose '{self.purpose}'")
        if self.action in PURPOSE_REQUIRED and self.purpose is None:
            raise RequestError(f"action '{self.action}' needs a purpose")
        if self.action == "transfer" and not self.recipient:
            raise RequestError("action 'transfer' needs a recipient")
        if not self.origins:
            raise RequestError(
                "a request needs at least one origin (use 'unknown' when none is recorded)"
            )

    def as_dict(self) -> dict[str, Any]:
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
        return out


@dataclass(frozen=True)
class Reason:
    """A rule that took part in a decision: ``applied`` (its effect counted) or ``excepted`` (it
    matched, but an ``unless`` exception of the instrument held, so it permits instead)."""

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
    """The PDP's answer. ``reasons`` lists the determining rules first (deny overrides permit)."""

    effect: Effect
    request: Request
    reasons: tuple[Reason, ...] = field(default=())
    obligations: tuple[Obligation, ...] = field(default=())

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
        if not self.reasons:
            return "no rule in force matches this request"
        return "\n".join(
            f"{r.rule_id} ({r.instrument_id}): {r.outcome} {r.effect} - {r.explanation}"
            for r in self.reasons
        )

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
        }

"""The audit payload of one decision (the shape the main job and the HTTP service both write).

::

    {"stage": "service", "effect": "deny", "excepted": false,
     "rules": ["no-platform-profile-in-friend-recommendation"],
     "instruments": ["cn-tj-binhai-2019-douyin-duoshan"],
     "request": Request.as_dict(), "context": {...}}

``rules`` are the determining rules (:attr:`provguard.decide.Decision.determining`);
``context`` says what the decision was about (subject ids, the client app, a request id), never
raw tokens (the log's :class:`~provguard.audit.masking.Masker` masks those if a caller slips).
:func:`tally_key` gives the report's aggregation keys of such a payload.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the audit package does not need the PDP at run time
    from provguard.decide import Decision

__all__ = ["decision_payload", "tally_keys"]


def decision_payload(
    decision: Decision, *, stage: str, context: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The audit payload of ``decision`` (see the module docstring)."""
    determining = decision.determining
    return {
        "stage": stage,
        "effect": decision.effect,
        "excepted": decision.excepted,
        "rules": [r.rule_id for r in determining],
        "instruments": sorted({r.instrument_id for r in determining}),
        "request": decision.request.as_dict(),
        "context": dict(context or {}),
    }


def tally_keys(
    payload: Mapping[str, Any],
) -> list[tuple[str | None, str, str | None, str, str]] | None:
    """``(rule, app, purpose, action, effect)`` keys a decision payload counts under (one per
    determining rule, or one with rule ``None``), or ``None`` if it is not a decision payload."""
    request = payload.get("request")
    effect = payload.get("effect")
    if not isinstance(request, Mapping) or effect not in ("permit", "deny", "not_applicable"):
        return None
    app, action = request.get("app"), request.get("action")
    if not isinstance(app, str) or not isinstance(action, str):
        return None
    purpose = request.get("purpose")
    purpose = purpose if isinstance(purpose, str) else None
    rules = payload.get("rules")
    names: list[str | None] = (
        [r for r in rules if isinstance(r, str)] if isinstance(rules, list) else []
    )
    return [(rule, app, purpose, action, str(effect)) for rule in (names or [None])]

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

from collections.abc import Iterable, Mapping
from json.encoder import encode_basestring as _quote
from typing import TYPE_CHECKING, Any

from provguard.audit.chain import canonical_payload

if TYPE_CHECKING:  # the audit package does not need the PDP at run time
    from provguard.decide import Decision, Request

__all__ = ["decision_json", "decision_payload", "tally_keys"]


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


# --------------------------------------------------------------------------------------------
# the writer's fast path: canonical JSON text of a decision payload without building it


def _flat_json(mapping: Mapping[str, Any]) -> str | None:
    """Canonical JSON of a flat mapping whose keys are ``str`` and values exactly ``str``,
    ``int``, ``bool`` or ``None``; ``None`` for anything else (the caller falls back)."""
    try:
        keys = sorted(mapping)
    except TypeError:  # keys of mixed types
        return None
    parts = []
    for key in keys:
        if type(key) is not str:
            return None
        value = mapping[key]
        kind = type(value)
        if kind is str:
            text = _quote(value)
        elif kind is int:
            text = int.__repr__(value)
        elif kind is bool:
            text = "true" if value else "false"
        elif value is None:
            text = "null"
        else:
            return None
        parts.append(_quote(key) + ":" + text)
    return "{" + ",".join(parts) + "}"


def _str_list(values: Iterable[str]) -> str:
    return "[" + ",".join([_quote(v) for v in values]) + "]"


# (app, action, category, origins, purpose, recipient, controller, grant_scopes, grant_status)
# -> the request's JSON text around its time fields; bounded, cleared when full
_REQUEST_TEXT: dict[tuple[Any, ...], tuple[str, str, str]] = {}
_REQUEST_TEXT_MAX = 4096


def _request_json(request: Request) -> str:
    """Canonical JSON of ``request.as_dict()``; the text around the time fields is cached per
    (app, action, category, origins, purpose, recipient, controller, grant scopes and status)."""
    if request.subject or request.context or request.consents:
        return canonical_payload(request.as_dict())
    key = (
        request.app,
        request.action,
        request.category,
        request.origins,
        request.purpose,
        request.recipient,
        request.controller,
        request.grant_scopes,
        request.grant_status,
    )
    parts = _REQUEST_TEXT.get(key)
    if parts is None:
        parts = _request_parts(request)
        if len(_REQUEST_TEXT) >= _REQUEST_TEXT_MAX:
            _REQUEST_TEXT.clear()
        _REQUEST_TEXT[key] = parts
    head, middle, tail = parts
    text = head + _quote(request.at.isoformat()) + middle
    first_used, granted = request.grant_first_used_by_recipient_at, request.grant_granted_at
    if first_used is not None:
        text += ',"grant_first_used_by_recipient_at":' + _quote(first_used.isoformat())
    if granted is not None:
        text += ',"grant_granted_at":' + _quote(granted.isoformat())
    return text + tail


def _request_parts(request: Request) -> tuple[str, str, str]:
    """The JSON text of a plain request before ``at``, between ``at`` and the grant times, and
    after them (keys in sorted order, as the canonical encoding writes them)."""
    head = '{"action":' + _quote(request.action) + ',"app":' + _quote(request.app) + ',"at":'
    middle = ',"category":' + _quote(request.category)
    if request.controller is not None:
        middle += ',"controller":' + _quote(request.controller)
    tail = ""
    if request.grant_scopes is not None:
        tail += ',"grant_scopes":' + _str_list(sorted(request.grant_scopes))
    if request.grant_status is not None:
        tail += ',"grant_status":' + _quote(request.grant_status)
    tail += ',"origins":' + _str_list(sorted(request.origins))
    if request.purpose is not None:
        tail += ',"purpose":' + _quote(request.purpose)
    if request.recipient is not None:
        tail += ',"recipient":' + _quote(request.recipient)
    return head, middle, tail + "}"


# id(decision.reasons) -> (that tuple, effect, text before the request, text after it). The
# PDP hands out one reasons tuple per memoised outcome, so a few entries cover a whole run; the
# tuple is kept in the value, so its id cannot be reused while it is cached.
_OUTCOME_TEXT: dict[int, tuple[tuple[Any, ...], str, str, str]] = {}
_OUTCOME_TEXT_MAX = 4096


def _outcome_text(decision: Decision) -> tuple[str, str]:
    reasons, effect = decision.reasons, decision.effect
    hit = _OUTCOME_TEXT.get(id(reasons))
    if hit is not None and hit[0] is reasons and hit[1] == effect:
        return hit[2], hit[3]
    determining = decision.determining
    before = (
        ',"effect":'
        + _quote(effect)
        + ',"excepted":'
        + ("true" if decision.excepted else "false")
        + ',"instruments":'
        + _str_list(sorted({r.instrument_id for r in determining}))
        + ',"request":'
    )
    after = ',"rules":' + _str_list([r.rule_id for r in determining]) + ',"stage":'
    if len(_OUTCOME_TEXT) >= _OUTCOME_TEXT_MAX:
        _OUTCOME_TEXT.clear()
    _OUTCOME_TEXT[id(reasons)] = (reasons, effect, before, after)
    return before, after


def decision_json(
    decision: Decision, *, stage: str, context: Mapping[str, Any] | None = None
) -> str:
    """The canonical JSON text (:func:`provguard.audit.chain.canonical_payload`) of
    ``decision_payload(decision, stage=stage, context=context)``, assembled from its parts
    without building the payload dict or decoding it again (the audit writer's hot loop; the
    text around the request is cached per outcome, i.e. per reasons tuple and effect).
    Byte-for-byte the same text (differential test: ``tests/audit/test_audit_fastpath.py``);
    parts that are not plain (request attributes or consents, a context with other value
    types) go through the generic encoder.

    Raises :class:`~provguard.errors.AuditError` where the generic encoder does (a context
    that is not JSON-encodable)."""
    ctx = "{}" if not context else _flat_json(context)
    if ctx is None:
        ctx = canonical_payload(dict(context or {}))
    before, after = _outcome_text(decision)
    return (
        '{"context":' + ctx + before + _request_json(decision.request) + after + _quote(stage) + "}"
    )

"""Errors of the HTTP service and their JSON bodies.

Codes extend the tree in :mod:`provguard.errors` (``PG5xx``: the service layer)::

    ProvguardError                PG000
    └── ServiceError              PG500  the service cannot answer
        ├── AuthenticationError   PG510  no or unknown API key (HTTP 401)
        ├── ForbiddenError        PG520  the key's app may not do this (tenant isolation; 403)
        │   └── DecisionTimeError PG521  an app key asked about another time than now (403;
        │                                only auditor keys may: ``at`` in a decision request)
        ├── NotFoundError         PG530  no such resource visible to this client app (404)
        └── NotConfiguredError    PG540  the deployment lacks what this needs, e.g. a key (409)
    InputError                    PG100
    └── KeyFileError              PG550  a bad API-key operation: duplicate key name, client app
                                         not registered, no such key (``provguard keys``)

Every error response has the body ``{"error": {"code": "PG140", "type": "RequestError",
"message": "..."}}`` (plus ``"details"`` for request-validation errors), whatever raised it --
except on the OAuth endpoints (:data:`OAUTH_PATHS`), which answer as RFC 6749 section 5.2 says
(:func:`oauth_error`): ``{"error": "<RFC error code>", "error_description": "...", "code":
"PG..."}``, HTTP 400 (401 for ``invalid_client``, with ``WWW-Authenticate``), and
``Cache-Control: no-store``.
"""

from __future__ import annotations

from typing import Any

from provguard.errors import (
    AuditError,
    InputError,
    ProvguardError,
    RequestError,
    StoreError,
)

__all__ = [
    "OAUTH_PATHS",
    "AuthenticationError",
    "DecisionTimeError",
    "ForbiddenError",
    "KeyFileError",
    "NotConfiguredError",
    "NotFoundError",
    "ServiceError",
    "error_body",
    "http_status",
    "is_audited",
    "mark_audited",
    "oauth_error",
]

_AUDITED = "provguard_audited"


def mark_audited(exc: ProvguardError) -> ProvguardError:
    """Note that the refusal ``exc`` already has its audit entry (``decision.refused``,
    ``grant.refused``, a denied transfer's ``grant.transfer``), so the app's error handler does
    not write a second (``request.rejected``). Returns ``exc``."""
    setattr(exc, _AUDITED, True)
    return exc


def is_audited(exc: BaseException) -> bool:
    """Whether :func:`mark_audited` was called on ``exc``."""
    return getattr(exc, _AUDITED, False) is True


OAUTH_PATHS = frozenset({"/v1/oauth2/token", "/v1/oauth2/revoke"})
"""Paths whose errors are RFC 6749 section 5.2 bodies (token exchange, RFC 8693; revocation,
RFC 7009 section 2.2.1), not provguard error bodies."""


class ServiceError(ProvguardError):
    code = "PG500"
    http_status = 503


class AuthenticationError(ServiceError):
    code = "PG510"
    http_status = 401


class ForbiddenError(ServiceError):
    code = "PG520"
    http_status = 403


class DecisionTimeError(ForbiddenError):
    """A client app's key sent a decision request whose ``at`` is not now (beyond the allowed
    clock skew): the policy of another time is an auditor's question (HTTP 403)."""

    code = "PG521"


class NotFoundError(ServiceError):
    code = "PG530"
    http_status = 404


class NotConfiguredError(ServiceError):
    code = "PG540"
    http_status = 409


class KeyFileError(InputError):
    code = "PG550"


def http_status(exc: ProvguardError) -> int:
    """The HTTP status of ``exc``: its ``http_status`` attribute if it has one (the grants
    module's errors do), else 422 for a bad decision request, 400 for other input errors, 503
    for store and audit failures, 500 otherwise."""
    status = getattr(exc, "http_status", None)
    if isinstance(status, int):
        return status
    if isinstance(exc, RequestError):
        return 422
    if isinstance(exc, InputError):
        return 400
    if isinstance(exc, StoreError | AuditError):
        return 503
    return 500


def error_body(
    code: str, kind: str, message: str, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """``{"error": {"code", "type", "message"[, "details"]}}``."""
    err: dict[str, Any] = {"code": code, "type": kind, "message": message}
    if details is not None:
        err["details"] = details
    return {"error": err}


def oauth_error(
    exc: ProvguardError, *, description: str | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """``(status, body, headers)`` of the RFC 6749 section 5.2 error response for ``exc``.

    The RFC error code is ``exc.oauth_error`` when set (the grants module's errors carry it),
    else by class: no or unknown API key → ``invalid_client``; a key that may not use the
    endpoint (an auditor's) → ``unauthorized_client``; a deployment without a grant registry
    → ``temporarily_unavailable`` (503); a store or audit failure → ``server_error`` (503);
    anything else → ``invalid_request``. Status: 401 for ``invalid_client`` (with
    ``WWW-Authenticate: Bearer``), 503 for the two server-side codes, 400 otherwise. The body
    is ``{"error", "error_description", "code"}`` plus ``rule`` / ``instrument`` for a transfer
    the policy denied."""
    from provguard.decide import Decision

    code = getattr(exc, "oauth_error", None)
    if not isinstance(code, str):
        if isinstance(exc, AuthenticationError):
            code = "invalid_client"
        elif isinstance(exc, ForbiddenError):
            code = "unauthorized_client"
        elif isinstance(exc, NotConfiguredError):
            code = "temporarily_unavailable"
        elif isinstance(exc, StoreError | AuditError) or http_status(exc) >= 500:
            code = "server_error"
        else:
            code = "invalid_request"
    status = {"invalid_client": 401, "temporarily_unavailable": 503, "server_error": 503}.get(
        code, 400
    )
    body: dict[str, Any] = {
        "error": code,
        "error_description": description or exc.message,
        "code": exc.code,
    }
    decision = getattr(exc, "decision", None)
    if isinstance(decision, Decision) and decision.determining:
        body["rule"] = decision.determining[0].rule_id
        body["instrument"] = decision.determining[0].instrument_id
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="provguard", error="invalid_client"'
    return status, body, headers

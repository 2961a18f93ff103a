"""Errors of the HTTP service and their JSON bodies.

Codes extend the tree in :mod:`provguard.errors` (``PG5xx``: the service layer)::

    ProvguardError                PG000
    └── ServiceError              PG500  the service cannot answer
        ├── AuthenticationError   PG510  no or unknown API key (HTTP 401)
        ├── ForbiddenError        PG520  the key's app may not do this (tenant isolation; 403)
        ├── NotFoundError         PG530  no such resource visible to this client app (404)
        └── NotConfiguredError    PG540  the deployment lacks what this needs, e.g. a key (409)

Every error response has the body ``{"error": {"code": "PG140", "type": "RequestError",
"message": "..."}}`` (plus ``"details"`` for request-validation errors), whatever raised it.
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
    "AuthenticationError",
    "ForbiddenError",
    "NotConfiguredError",
    "NotFoundError",
    "ServiceError",
    "error_body",
    "http_status",
]


class ServiceError(ProvguardError):
    code = "PG500"
    http_status = 503


class AuthenticationError(ServiceError):
    code = "PG510"
    http_status = 401


class ForbiddenError(ServiceError):
    code = "PG520"
    http_status = 403


class NotFoundError(ServiceError):
    code = "PG530"
    http_status = 404


class NotConfiguredError(ServiceError):
    code = "PG540"
    http_status = 409


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

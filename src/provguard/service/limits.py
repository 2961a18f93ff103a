"""What the HTTP service accepts: strict JSON, bounded bodies and values, auditable decisions.

A decision the service answers must leave an audit entry, and the audit log must not be a
sink for whatever a client sends. So, before any endpoint runs:

* **Body size** -- at most ``max_body_bytes`` (:data:`DEFAULT_MAX_BODY_BYTES`, 1 MiB; ``provguard
  serve --max-body-bytes``) per request (:class:`BodyLimitMiddleware`: a ``Content-Length``
  above it is refused before any byte of the body is read; a chunked body is cut off as soon as
  it passes it). The answer is 413 with code ``PG560`` (:class:`BodyTooLargeError`) in the
  service's error format, whether or not the caller sent a key (the body is never parsed).
  Starlette's own limit (``FastAPI(max_body_size=...)``) is not used: for a declared
  ``Content-Length`` over the limit it replaces the app's answer with a plain-text one.
* **Strict JSON** (:func:`strict_loads`, used by the JSON endpoints through
  :class:`StrictJSONRoute`): the body must be UTF-8 JSON (RFC 8259 section 8.1) and also
  I-JSON (RFC 7493): no ``NaN`` / ``Infinity`` / ``-Infinity`` literals (not JSON at all, RFC
  8259 section 6), no number that overflows a double (``1e400``), no integer beyond
  +/-(2**53 - 1) (RFC 7493 section 2.2), no duplicate object key (section 2.3: the service
  would otherwise silently take the last one), no unpaired surrogate escape (section 2.1).
  Such a body is answered like any other malformed body: 401 ``PG510`` without a valid key,
  else 422 ``PG140`` whose message says what was wrong and where.
* **Bounded values** (:data:`AttrValue`, :data:`AttrKey`, :data:`BoundedToken`): the values of
  a decision's ``subject``, ``context`` and ``audit_context`` are strings of at most
  :data:`MAX_VALUE_LENGTH` (256) characters, integers within +/-(2**53 - 1), finite floats or
  booleans; their keys at most :data:`MAX_KEY_LENGTH` (128) characters; ``origins`` and
  ``grant_scopes`` items at most :data:`MAX_TOKEN_LENGTH` (128). The item counts are the
  schema's (64 keys per mapping, 32 origins, 64 scopes, 1000 requests per batch).
* **Auditable before answered** (:func:`ensure_auditable`): the decision's audit payload is
  encoded with the audit writer's own canonical encoder
  (:func:`provguard.audit.records.decision_json`) and as UTF-8 before the decision is
  submitted or answered, in every ``ack`` mode; one that cannot be encoded is refused 422
  ``PG140`` and nothing of it (nor, in a batch, of any other request) is answered or logged.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import AfterValidator, StringConstraints
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from provguard.decide import Decision
from provguard.errors import AuditError, InputError, RequestError

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "MAX_KEY_LENGTH",
    "MAX_SAFE_INTEGER",
    "MAX_TOKEN_LENGTH",
    "MAX_VALUE_LENGTH",
    "AttrKey",
    "AttrValue",
    "BodyLimitMiddleware",
    "BodyTooLargeError",
    "BoundedToken",
    "StrictJSONError",
    "StrictJSONRequest",
    "StrictJSONRoute",
    "check_attr_value",
    "ensure_auditable",
    "strict_loads",
    "too_large_message",
]

DEFAULT_MAX_BODY_BYTES = 1 << 20
"""Default request-body limit of the service, bytes (1 MiB: a full 1000-request batch of
typical decisions is about 250 KB)."""

MAX_VALUE_LENGTH = 256
"""Longest string value (characters) of a decision's ``subject`` / ``context`` /
``audit_context``."""

MAX_KEY_LENGTH = 128
"""Longest key (characters) of a decision's ``subject`` / ``context`` / ``audit_context``."""

MAX_TOKEN_LENGTH = 128
"""Longest item (characters) of a decision's ``origins`` / ``grant_scopes``."""

MAX_SAFE_INTEGER = 2**53 - 1
"""Largest integer magnitude accepted in a body (RFC 7493 section 2.2: exactly representable as
an IEEE 754 double, so the audit entry's canonical JSON means the same to every reader)."""


class BodyTooLargeError(InputError):
    """A request body larger than the service's limit (HTTP 413; ``serve --max-body-bytes``)."""

    code = "PG560"
    http_status = 413


class StrictJSONError(json.JSONDecodeError):
    """A body that is not strict JSON (see the module docstring); ``msg`` says why, ``pos`` is
    the character offset (0 when the problem is not tied to one place)."""


def too_large_message(limit: int | None) -> str:
    """The message of a 413 answer for the body limit ``limit`` (bytes; ``None``: unknown)."""
    if limit is None:
        return "the request body is too large"
    return f"the request body is larger than the service's limit of {limit:,} bytes"


class _TooLarge(HTTPException):
    """Raised from ``receive`` when the body passes the limit; the app's HTTP-error handler
    answers it (413 ``PG560``)."""

    def __init__(self) -> None:
        super().__init__(status_code=413, detail="Content Too Large")


def _content_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class BodyLimitMiddleware:
    """ASGI middleware: an HTTP request body may hold at most ``max_body_bytes`` bytes.

    The body is not buffered here: ``receive`` is wrapped, so whoever reads the body (FastAPI's
    JSON/form parsing, the dashboard's login) gets a 413 :class:`~starlette.exceptions.
    HTTPException` -- at the first read when ``Content-Length`` already says too much, else
    when the bytes received pass the limit -- which the app's handler answers in its error
    format. Memory per request stays within the limit."""

    def __init__(self, app: ASGIApp, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        if max_body_bytes < 0:
            raise ValueError("max_body_bytes must be >= 0")
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = _content_length(scope)
        received = 0

        async def limited() -> Message:
            nonlocal received
            if declared is not None and declared > limit:
                raise _TooLarge()
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge()
            return message

        await self.app(scope, limited, send)


# ------------------------------------------------------------------------------ strict JSON

_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (RFC 8259 section 6): send a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number overflows a double (RFC 7493 section 2.2)")
    return value


def _safe_int(text: str) -> int:
    if len(text) < 16:  # fewer than 16 characters: within +/-(2**53 - 1) whatever they are
        return int(text)
    digits = len(text) - (text[0] == "-")
    if digits > 16:  # 2**53 - 1 has 16 digits; beyond, refuse before converting
        raise ValueError(
            f"an integer of {digits:,} digits is beyond +/-{MAX_SAFE_INTEGER} (RFC 7493 "
            "section 2.2)"
        )
    value = int(text)
    if abs(value) > MAX_SAFE_INTEGER:
        raise ValueError(f"an integer is beyond +/-{MAX_SAFE_INTEGER} (RFC 7493 section 2.2)")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):  # some key came twice: name the first
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                raise ValueError(
                    f"duplicate key {key[:64]!r} in a JSON object (RFC 7493 section 2.3): "
                    "each name may appear once"
                )
            seen.add(key)
    return out


def _check_strings(value: Any) -> None:
    """Raise ValueError for a string (or key) holding an unpaired surrogate."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise ValueError(
                    "a string holds an unpaired surrogate escape (\\uD800-\\uDFFF), which is "
                    "not Unicode text (RFC 7493 section 2.1)"
                )
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def strict_loads(body: bytes | str) -> Any:
    """The value of the JSON text ``body``, refusing what RFC 8259 / RFC 7493 (I-JSON) do not
    allow: non-UTF-8 bytes, ``NaN`` / ``Infinity`` / ``-Infinity``, numbers that overflow a
    double, integers beyond +/-(2**53 - 1), duplicate object keys, unpaired surrogates.

    Raises :class:`StrictJSONError` (a :class:`json.JSONDecodeError`) saying which, and where
    when the decoder knows."""
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StrictJSONError(
                f"the body is not UTF-8 (RFC 8259 section 8.1): byte {exc.start}", "", 0
            ) from None
    else:
        text = body
    if text.startswith("\ufeff"):
        raise StrictJSONError("the body starts with a byte order mark (RFC 8259 8.1)", text, 0)
    try:
        value = json.loads(
            text,
            parse_constant=_no_constant,
            parse_float=_finite_float,
            parse_int=_safe_int,
            object_pairs_hook=_unique_keys,
        )
        if _SURROGATE_ESCAPE.search(text):  # only such an escape can give a lone surrogate
            _check_strings(value)
    except json.JSONDecodeError as exc:
        raise StrictJSONError(exc.msg, exc.doc, exc.pos) from None
    except (ValueError, RecursionError) as exc:
        raise StrictJSONError(str(exc) or type(exc).__name__, text, 0) from None
    return value


class StrictJSONRequest(Request):
    """A request whose :meth:`json` is :func:`strict_loads` (FastAPI reads JSON bodies with
    it, so a refusal becomes its usual request-validation error)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = strict_loads(await self.body())
        return self._json


def _explained(exc: RequestValidationError) -> RequestValidationError:
    """``exc`` with FastAPI's bare "JSON decode error" messages completed by the decoder's
    reason (``ctx.error``), so the 422 says what was wrong."""
    errors = []
    changed = False
    for err in exc.errors():
        ctx = err.get("ctx")
        if err.get("type") == "json_invalid" and isinstance(ctx, dict) and ctx.get("error"):
            err = {**err, "msg": f"JSON decode error: {ctx['error']}"}
            changed = True
        errors.append(err)
    return RequestValidationError(errors, body=exc.body) if changed else exc


class StrictJSONRoute(APIRoute):
    """An :class:`~fastapi.routing.APIRoute` whose JSON body is parsed by :func:`strict_loads`
    (``APIRouter(route_class=StrictJSONRoute)``); a refused body is a
    :class:`~fastapi.exceptions.RequestValidationError` (``type: json_invalid``) whose message
    carries the reason, handled by the app's validation-error handler (401 before 422)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            try:
                return await handler(StrictJSONRequest(request.scope, request.receive))
            except RequestValidationError as exc:
                better = _explained(exc)
                if better is exc:
                    raise
                raise better from exc

        return strict_handler


# ------------------------------------------------------------------------------ bounded values


def check_attr_value(value: str | int | float | bool) -> str | int | float | bool:
    """``value`` if it is a bounded attribute value (a string of at most
    :data:`MAX_VALUE_LENGTH` characters, an integer within +/-:data:`MAX_SAFE_INTEGER`, a
    finite float, a boolean); raises ValueError otherwise (pydantic reports it as a 422)."""
    if isinstance(value, str):
        if len(value) > MAX_VALUE_LENGTH:
            raise ValueError(
                f"a string value may have at most {MAX_VALUE_LENGTH} characters "
                f"(this one has {len(value):,})"
            )
    elif isinstance(value, bool):
        pass
    elif isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise ValueError(f"an integer value must be within +/-{MAX_SAFE_INTEGER}")
    elif not math.isfinite(value):
        raise ValueError("a number must be finite (no NaN or Infinity)")
    return value


AttrValue = Annotated[str | int | float | bool, AfterValidator(check_attr_value)]
"""A ``subject`` / ``context`` / ``audit_context`` value (see :func:`check_attr_value`)."""

AttrKey = Annotated[str, StringConstraints(max_length=MAX_KEY_LENGTH)]
"""A ``subject`` / ``context`` / ``audit_context`` key: at most 128 characters."""

BoundedToken = Annotated[str, StringConstraints(max_length=MAX_TOKEN_LENGTH)]
"""An ``origins`` / ``grant_scopes`` item: at most 128 characters."""


# ------------------------------------------------------------------------------ auditable


def ensure_auditable(decision: Decision, *, stage: str, context: dict[str, Any]) -> None:
    """Encode the audit payload of ``decision`` (``stage``, ``context``) as the audit writer
    will -- :func:`provguard.audit.records.decision_json`, then UTF-8 -- and raise
    :class:`~provguard.errors.RequestError` (PG140, HTTP 422) if it cannot be: a decision
    that cannot be recorded is not answered. Cost: one canonical encoding (a few µs for a
    plain request; the writer caches the parts it shares)."""
    from provguard.audit.records import decision_json

    try:
        decision_json(decision, stage=stage, context=context).encode("utf-8")
    except (AuditError, ValueError, TypeError) as exc:
        reason = exc.message if isinstance(exc, AuditError) else str(exc)
        raise RequestError(
            f"the decision's audit entry cannot be encoded ({reason}); a decision that "
            "cannot be recorded is not answered"
        ) from None

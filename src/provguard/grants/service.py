"""The grant service: the registry, the connectors, the transfer gate and the cascade behind one
HTTP app (Starlette), plus the outbox flush to the audit log.

HTTP endpoints (all on loopback in the tests; errors are RFC 6749 section 5.2 JSON bodies
``{"error", "error_description", "code"}``, plus ``rule`` / ``instrument`` on a denied transfer;
a form or callback query naming a parameter twice is 400 ``invalid_request`` ``PG150``, RFC 6749
sections 3.1 / 3.2, checked by :func:`provguard.grants.params.single_valued` as in the provguard
service, and audited as ``grant.refused``)::

    GET  /login/{provider}/{app}/start      302 to the provider's authorization URL
    GET  /login/{provider}/{app}/callback   completes the sign-in; 200 {grant, session_token}
    POST /oauth2/token                      RFC 8693 token exchange (client_secret_post or Basic;
                                            optional ``purpose`` key, a provguard extension)
    POST /oauth2/revoke                     RFC 7009: 200 for a revoked, unknown or invalid token;
                                            401 invalid_client, 400 unauthorized_client (a token
                                            issued to another client), unsupported_token_type
    POST /link                              account linking {subject_token, purpose?}
    POST /notifications/{provider}          provider callbacks (HMAC-SHA256 signed body)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from provguard.clock import Clock, SystemClock
from provguard.errors import ProvguardError
from provguard.grants.connector import LoginConnector, refuse
from provguard.grants.errors import (
    ExpiredGrantError,
    GrantInputError,
    MalformedTokenError,
    SignatureError,
    TransferDeniedError,
    UnauthorizedClientError,
    UnknownAppError,
    UnsupportedTokenTypeError,
)
from provguard.grants.model import AuditSink
from provguard.grants.params import single_valued
from provguard.grants.revocation import RevocationCascade
from provguard.grants.transfer import TransferGate

if TYPE_CHECKING:
    from provguard.adapters.grant_store import SqlGrantStore

log = logging.getLogger("provguard.grants")

#: The audit entry kind recording an outbox row that was not appended (bad tag).
OUTBOX_REJECTED_KIND = "grant.outbox_rejected"

#: RFC 7009 section 4.1.2: the registered ``token_type_hint`` values.
TOKEN_TYPE_HINTS = ("access_token", "refresh_token")


def flush_outbox(
    store: SqlGrantStore,
    audit: AuditSink,
    *,
    audit_count: int | None = None,
    lease_seconds: float = 60.0,
) -> int:
    """Append the registry's pending events to ``audit``, each exactly once; returns how many.

    Protocol: a row is claimed (compare-and-set ``new`` -> ``sending`` with the audit log's
    current length and the claim time) before the append and marked ``sent`` after, so
    concurrent flushers (threads, or ``serve --workers N`` processes on one registry) never
    append the same row twice. A row found ``sending`` whose claim is older than
    ``lease_seconds`` (a crash between claim and ``sent``) is re-claimed and re-appended only if
    no audit entry after that position carries its ``event_id`` (needs ``audit.entries``); a
    flusher stalled for longer than the lease could still race its recoverer.

    A row whose HMAC tag does not verify (``row["authentic"]`` false: inserted into
    ``grant_outbox`` by hand, or edited, findings F3 / G11) is not appended as the registry's
    event: the flusher that claims it appends ``grant.outbox_rejected`` (its event id, kind and
    why; never its payload) and marks it ``rejected``. It does not count as sent.
    """
    sent = 0
    for row in store.outbox():
        if not row.get("authentic", False):
            if store.claim_outbox(row, audit_count, datetime.now(UTC), lease_seconds):
                audit.append(
                    OUTBOX_REJECTED_KIND,
                    {
                        "event_id": str(row["event_id"]),
                        "kind": str(row["kind"]),
                        "reason": "the outbox row's evidence tag is missing or wrong (not "
                        "written by the grant store with this key); not appended as its event",
                    },
                )
                store.mark_outbox(row["event_id"], "rejected", row["audit_hint"])
                log.warning("outbox row %s (%s) rejected: bad tag", row["event_id"], row["kind"])
            continue
        payload = {**row["payload"], "event_id": row["event_id"]}
        count = getattr(audit, "count", None)
        hint = int(count()) if callable(count) else audit_count
        recovering = row["state"] == "sending"
        if not store.claim_outbox(
            row, row["audit_hint"] if recovering else hint, datetime.now(UTC), lease_seconds
        ):
            continue  # another flusher owns it
        if recovering and _already_appended(audit, row):
            store.mark_outbox(row["event_id"], "sent", row["audit_hint"])
            continue
        audit.append(row["kind"], payload)
        store.mark_outbox(row["event_id"], "sent", row["audit_hint"] if recovering else hint)
        sent += 1
    return sent


def _already_appended(audit: AuditSink, row: Mapping[str, object]) -> bool:
    entries = getattr(audit, "entries", None)
    if entries is None:
        return False
    start = int(row["audit_hint"] or 0) + 1  # type: ignore[call-overload]
    return any(
        e.payload.get("event_id") == row["event_id"] for e in entries(kind=row["kind"], start=start)
    )


@dataclass
class GrantService:
    """Wiring of one deployment: ``connectors`` by ``(provider, app_id)``; ``notify_secrets`` by
    ``(provider, app_id)`` (the provider app secret that signs notifications)."""

    store: SqlGrantStore
    audit: AuditSink
    gate: TransferGate
    cascade: RevocationCascade
    connectors: dict[tuple[str, str], LoginConnector] = field(default_factory=dict)
    clock: Clock = field(default_factory=SystemClock)

    def flush(self) -> int:
        return flush_outbox(self.store, self.audit)

    def connector(self, provider: str, app_id: str) -> LoginConnector:
        try:
            return self.connectors[(provider, app_id)]
        except KeyError:
            raise UnknownAppError(
                f"no login configured for app '{app_id}' at '{provider}'"
            ) from None

    def handle_notification(self, provider: str, body: bytes, signature: str) -> str | None:
        """Verify and act on a provider notification; returns the revocation job id (``None``
        when the grant is unknown here: nothing to do). A notification carrying an ``event_id``
        already handled (the provider retried a delivery whose answer it did not see) returns
        the first outcome and does nothing else (table ``provider_notifications``). Raises
        :class:`SignatureError`, :class:`UnknownAppError`, :class:`MalformedTokenError` (bad
        body)."""
        try:
            event = json.loads(body)
            app_id, openid, kind = str(event["appid"]), str(event["openid"]), str(event["event"])
        except (ValueError, KeyError, TypeError):
            raise MalformedTokenError("notification body is not the expected JSON") from None
        connector = self.connector(provider, app_id)
        expected = (
            "sha256="
            + hmac.new(
                connector.credentials.secret.encode("utf-8"), body, hashlib.sha256
            ).hexdigest()
        )
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise SignatureError("notification signature does not verify")
        if kind not in ("authorization_revoked", "account_deleted"):
            raise MalformedTokenError(f"unknown notification event '{kind}'")
        event_id = str(event.get("event_id") or "")[:128]
        if event_id:
            seen = self.store.notification_seen(provider, event_id)
            if seen is not None:  # a redelivery (the platform retried): act once
                log.info("notification %s from %s already handled", event_id, provider)
                return seen or None
        grant = self.store.grant_by_openid(provider, app_id, openid)
        job = None
        if grant is not None:
            job = self.cascade.revoke(
                grant.grant_id, reason=kind, source=f"{provider}.notification"
            )
        if event_id:
            self.store.record_notification(provider, event_id, kind, self.clock.now(), job)
        self.flush()
        return job

    def revoke_token(
        self,
        token: str,
        client_id: str,
        client_secret: str,
        token_type_hint: str | None = None,
    ) -> str | None:
        """RFC 7009 section 2.1 for tokens this registry issued. Order as the RFC gives it:
        authenticate the client (:class:`UnknownAppError`, 401 ``invalid_client``), check the
        ``token_type_hint`` (only the registered ``access_token`` / ``refresh_token``, section
        4.1.2; another value is :class:`UnsupportedTokenTypeError`, ``unsupported_token_type``;
        the hint never limits the search), find the token: an unknown, malformed, expired or
        already revoked token is ignored (section 2.2: 200, nothing changes). Then verify the
        token was issued to this client: a session token of another app's grant, or a token
        exchanged to another audience, is refused with :class:`UnauthorizedClientError`
        (``unauthorized_client``) and stays valid. A token of the client's own grant revokes the
        grant (cascade); a token exchanged to the client revokes that token only. Returns the
        revocation job id when a grant was revoked."""
        self.store.authenticate_app(client_id, client_secret)
        if token_type_hint not in (None, "", *TOKEN_TYPE_HINTS):
            raise UnsupportedTokenTypeError(
                f"token_type_hint '{token_type_hint[:40]}' is not supported "
                f"(use one of {', '.join(TOKEN_TYPE_HINTS)})"
            )
        try:
            match = self.store.find_token(token, self.clock.now())
        except (MalformedTokenError, ExpiredGrantError):
            return None
        if match.kind == "exchanged":
            if match.audience != client_id:
                raise UnauthorizedClientError(
                    f"the token was not issued to client '{client_id}' (RFC 7009 section 2.1)"
                )
            self.store.revoke_token(match.token_id, self.clock.now())
            self.flush()
            return None
        if match.grant.app_id != client_id:
            raise UnauthorizedClientError(
                f"the token was not issued to client '{client_id}' (RFC 7009 section 2.1)"
            )
        job = self.cascade.revoke(match.grant.grant_id, reason="client_revoked", source="rfc7009")
        self.flush()
        return job


def _oauth_error(exc: ProvguardError) -> JSONResponse:
    status = getattr(exc, "http_status", 400)
    body: dict[str, object] = {
        "error": getattr(exc, "oauth_error", "invalid_request"),
        "error_description": exc.message,
        "code": exc.code,
    }
    if isinstance(exc, TransferDeniedError):
        top = exc.decision.determining[0]
        body.update(
            rule=top.rule_id, instrument=top.instrument_id, explanation=exc.decision.explain()
        )
    return JSONResponse(body, status_code=status, headers={"cache-control": "no-store"})


def _client_auth(request: Request, form: Mapping[str, str]) -> tuple[str, str]:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("basic "):
        try:
            cid, _, secret = base64.b64decode(auth[6:]).decode("utf-8").partition(":")
            return cid, secret
        except ValueError:
            raise UnknownAppError("malformed Basic client authentication") from None
    return form.get("client_id", ""), form.get("client_secret", "")


def create_app(service: GrantService) -> Starlette:
    """The HTTP face of ``service`` (see the module docstring)."""

    async def form_of(request: Request, door: str) -> dict[str, str]:
        """The form, each parameter once (RFC 6749 section 3.2; :func:`single_valued`); a
        repeated one is audited as refused at ``door`` and raised (400 ``invalid_request``)."""
        form = await request.form()
        try:
            return single_valued(form.multi_items())
        except GrantInputError as exc:
            refuse(service.audit, exc, door=door)
            raise

    async def start(request: Request) -> Response:
        try:
            c = service.connector(request.path_params["provider"], request.path_params["app"])
            return RedirectResponse(c.begin(), status_code=302)
        except GrantInputError as exc:
            refuse(service.audit, exc, door="login_start")
            return _oauth_error(exc)

    async def callback(request: Request) -> Response:
        try:
            c = service.connector(request.path_params["provider"], request.path_params["app"])
            import anyio.to_thread

            result = await anyio.to_thread.run_sync(c.complete, str(request.url))
            service.flush()
        except ProvguardError as exc:
            return _oauth_error(exc)
        return JSONResponse(
            {
                "grant": result.grant.grant_id,
                "session_token": result.session_token,
                "values": len(result.values),
            },
            headers={"cache-control": "no-store"},
        )

    async def token(request: Request) -> Response:
        cid = ""
        try:
            form = await form_of(request, "token_exchange")
            cid, secret = _client_auth(request, form)
            body = service.gate.exchange(form, cid, secret)
        except GrantInputError as exc:
            service.flush()
            return _oauth_error(exc)
        service.flush()
        return JSONResponse(body, headers={"cache-control": "no-store"})

    async def revoke(request: Request) -> Response:
        try:
            form = await form_of(request, "revoke")
        except GrantInputError as exc:
            return _oauth_error(exc)
        try:
            cid, secret = _client_auth(request, form)
            if not form.get("token"):
                raise GrantInputError("RFC 7009 request without 'token'")
            service.revoke_token(form["token"], cid, secret, form.get("token_type_hint"))
        except GrantInputError as exc:
            refuse(service.audit, exc, door="revoke")
            return _oauth_error(exc)
        return Response(status_code=200)

    async def link(request: Request) -> Response:
        try:
            form = await form_of(request, "account_link")
            cid, secret = _client_auth(request, form)
            result = service.gate.link(
                form.get("subject_token", ""), cid, secret, form.get("purpose")
            )
        except GrantInputError as exc:
            service.flush()
            return _oauth_error(exc)
        service.flush()
        return JSONResponse(
            {
                "linked": True,
                "grant": result.attempt.grant_id,
                "excepted": result.decision.excepted,
                "access_token": result.token,
                "expires_in": result.expires_in,
            },
            headers={"cache-control": "no-store"},
        )

    async def notification(request: Request) -> Response:
        body = await request.body()
        provider = request.path_params["provider"]
        try:
            job = service.handle_notification(
                provider, body, request.headers.get("x-sandbox-signature", "")
            )
        except GrantInputError as exc:
            refuse(service.audit, exc, door="notification", provider=provider)
            return _oauth_error(exc)
        return JSONResponse({"job": job})

    return Starlette(
        routes=[
            Route("/login/{provider}/{app}/start", start, methods=["GET"]),
            Route("/login/{provider}/{app}/callback", callback, methods=["GET"]),
            Route("/oauth2/token", token, methods=["POST"]),
            Route("/oauth2/revoke", revoke, methods=["POST"]),
            Route("/link", link, methods=["POST"]),
            Route("/notifications/{provider}", notification, methods=["POST"]),
        ]
    )

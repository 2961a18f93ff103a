"""Token exchange (RFC 8693) and revocation (RFC 7009) behind the service's API keys.

The grant registry's own HTTP face (:func:`provguard.grants.service.create_app`) authenticates a
relying party by ``client_id`` / ``client_secret``. Here the caller is authenticated by its API
key instead (the same ``X-API-Key`` as every ``/v1`` endpoint), and the key's client app *is*
the OAuth client: a ``client_id`` in the form must equal it (else 401 ``invalid_client``,
``PG520``: tenant isolation).
The registry still checks that the app is registered (401 ``PG155`` otherwise). Everything else
-- the decision on the onward transfer (PDP + PIPL Art. 23), the token issued, the revocation
cascade, the outbox to the audit log -- is the grants module's, unchanged.

=====================================  ========  ===================================================
``POST /v1/oauth2/token``              app       RFC 8693 token exchange (form body)
``POST /v1/oauth2/revoke``             app       RFC 7009 revocation (form; 200 when well formed)
``GET  /v1/revocations``               app       revocation jobs of the grants this app holds
=====================================  ========  ===================================================

Token operations of one process are serialised (``ServiceState.grants_lock``): the registry's
outbox flush is not safe to run twice at once, and each of its events must reach the audit
chain exactly once.

Errors on the two OAuth endpoints are RFC 6749 section 5.2 bodies
(:func:`provguard.service.errors.oauth_error`): ``{"error": "unsupported_grant_type",
"error_description": "...", "code": "PG150"}``, HTTP 400 (401 ``invalid_client`` without a
valid key or for a ``client_id`` other than the key's app), ``Cache-Control: no-store``; a
parameter given twice is 400 ``invalid_request`` ``PG150`` (RFC 6749 section 3.2); a
denied transfer is 400 ``invalid_target`` with ``rule`` and ``instrument`` (RFC 8693 section
2.2.2). ``GET /v1/revocations`` keeps the service's provguard error bodies.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Form, Request
from starlette.concurrency import run_in_threadpool

from provguard.adapters.grant_store import SqlGrantStore
from provguard.audit.chain import AuditEntry
from provguard.decide import Decision
from provguard.decide import Request as PdpRequest
from provguard.errors import AuditError
from provguard.grants.connector import refuse
from provguard.grants.crypto import TokenCipher
from provguard.grants.errors import GrantInputError, UnknownAppError
from provguard.grants.model import ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT
from provguard.grants.params import single_valued
from provguard.grants.revocation import RevocationCascade
from provguard.grants.service import GrantService
from provguard.grants.transfer import TransferGate
from provguard.service.app import _ERRORS, AppClient, ServiceState, State
from provguard.service.auth import Client
from provguard.service.errors import ForbiddenError, NotConfiguredError, mark_audited
from provguard.service.schemas import (
    OAuthErrorBody,
    RevocationJobView,
    RevocationResponse,
    TokenExchangeResponse,
)

_KINDS = ("tokens", "values", "derived")
_OAUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OAuthErrorBody} for code in (400, 401, 503)
}

__all__ = ["KeyAuthenticatedGrantStore", "WriterAuditSink", "open_grant_service", "tokens_api"]

# a per-process secret that only this module passes as the "client secret": the caller was
# authenticated by its API key, so the registry only checks that the app is registered
_API_KEY_AUTHENTICATED = "apikey:" + secrets.token_urlsafe(32)


class KeyAuthenticatedGrantStore(SqlGrantStore):
    """The grant registry, where a client already authenticated by an API key is accepted
    without its OAuth client secret (it must still be a registered app). Any other secret is
    checked as usual (digest, constant time)."""

    def authenticate_app(self, app_id: str, secret: str) -> str:
        if not secrets.compare_digest(secret, _API_KEY_AUTHENTICATED):
            return super().authenticate_app(app_id, secret)
        controller = self.controller_of(app_id)
        if controller is None:
            raise UnknownAppError(f"client app '{app_id}' is not registered in the grant registry")
        return controller


class WriterAuditSink:
    """The grants module's audit sink over the service's audit log: grant events go through
    the :class:`~provguard.audit.writer.AuditWriter` (same chain, same order as decisions) and
    :meth:`append` returns only once the entry is committed, so the registry's outbox marks it
    sent only when it is in the log. A dropped entry (``drop`` mode, full queue) raises
    :class:`AuditError`; the outbox keeps the event and re-sends it on the next flush."""

    def __init__(self, state: ServiceState) -> None:
        self._state = state

    def append(self, kind: str, payload: Mapping[str, object]) -> object:
        writer = self._state.writer
        if writer is None:
            return self._state.log.append(kind, payload)
        number = writer.submit(kind, dict(payload))
        if number is None:
            raise AuditError(f"the audit queue is full; the '{kind}' event stays in the outbox")
        if not writer.wait(number, timeout=30.0):
            raise AuditError(f"the audit log did not acknowledge the '{kind}' event in 30 s")
        return number

    def count(self) -> int:
        if self._state.writer is not None:
            self._state.writer.flush(timeout=30.0)
        return self._state.log.count()

    def entries(self, *, kind: str | None = None, start: int = 1) -> Iterator[AuditEntry]:
        return self._state.log.entries(kind=kind, start=start)


class _StatePdp:
    """The service's decision point as the grants module's ``Decider``."""

    def __init__(self, state: ServiceState) -> None:
        self._state = state

    def decide(self, req: PdpRequest) -> Decision:
        return self._state.decide(req)


def open_grant_service(state: ServiceState) -> GrantService:
    """The grant service of ``state.settings.grant_db`` wired to the service's PDP and audit
    log. Raises :class:`~provguard.errors.InputError` without a token key,
    :class:`~provguard.errors.StoreError` when the registry cannot be opened."""
    settings = state.settings
    assert settings.grant_db is not None
    store = KeyAuthenticatedGrantStore(
        settings.grant_db, TokenCipher.from_env_or_file(settings.token_key_file)
    )
    sink = WriterAuditSink(state)
    pdp = _StatePdp(state)
    return GrantService(
        store=store,
        audit=sink,
        gate=TransferGate(store, pdp, sink),
        cascade=RevocationCascade(
            store, purge_within=timedelta(days=settings.purge_within_days), pdp=pdp
        ),
    )


def _grants(request_state: ServiceState, oauth_error: str | None) -> GrantService:
    """The grant service; without one, :class:`NotConfiguredError` carrying ``oauth_error``
    (the RFC code a deployment without a registry answers: it supports no token-exchange
    grant, and no token type can be revoked)."""
    if request_state.grants is None:
        err = NotConfiguredError(
            "token exchange and revocation need a grant registry (serve --grant-db URL "
            "--token-key-file FILE)"
        )
        if oauth_error is not None:
            err.oauth_error = oauth_error  # type: ignore[attr-defined]
        raise err
    return request_state.grants


def _own_client_id(client: Client, client_id: str | None) -> str:
    if client_id and client_id != client.app:
        err = ForbiddenError(
            f"the key of client app '{client.app}' cannot act as client '{client_id}' "
            "(tenant isolation)"
        )
        err.oauth_error = "invalid_client"  # type: ignore[attr-defined]
        raise err
    return client.app


_DOORS = {"/v1/oauth2/token": "token_exchange", "/v1/oauth2/revoke": "revoke"}


async def single_valued_form(client: AppClient, state: State, request: Request) -> None:
    """Dependency: refuse a form naming any parameter more than once (RFC 6749 section 3.2:
    "Request and response parameters MUST NOT be included more than once"; RFC 7009 section
    2.1 and RFC 8693 section 2.1 use the same encoding) with :class:`GrantInputError` -- 400
    ``invalid_request``, ``PG150`` -- instead of letting the last value win. The check is
    :func:`provguard.grants.params.single_valued`, shared with the grant registry's own server;
    as there, the refusal is audited (``grant.refused`` with the door and the client app) when
    the service has a grant registry. Runs after the API key is checked (``client``), so an
    unauthenticated caller still gets 401."""
    form = await request.form()  # parsed once by FastAPI already; starlette caches it
    try:
        single_valued(form.multi_items())
    except GrantInputError as exc:
        if state.grants is not None:
            door = _DOORS.get(request.url.path, request.url.path)
            # the audit sink waits for the commit: off the event loop
            await run_in_threadpool(refuse, state.grants.audit, exc, door=door, client=client.app)
            mark_audited(exc)  # recorded as grant.refused: no request.rejected as well
        raise


SingleValuedForm = Annotated[None, Depends(single_valued_form)]


def _iso(value: Any) -> str | None:
    if not isinstance(value, datetime):
        return None if value is None else str(value)
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).isoformat()


def _build_router() -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["grants"])

    @router.post("/oauth2/token", response_model=TokenExchangeResponse, responses=_OAUTH_ERRORS)
    def token_exchange(
        client: AppClient,
        state: State,
        _once: SingleValuedForm,
        grant_type: Annotated[
            str | None, Form(max_length=256, examples=[TOKEN_EXCHANGE_GRANT])
        ] = None,
        subject_token: Annotated[str | None, Form(max_length=4096)] = None,
        subject_token_type: Annotated[
            str, Form(max_length=256, examples=[ACCESS_TOKEN_TYPE])
        ] = ACCESS_TOKEN_TYPE,
        requested_token_type: Annotated[str | None, Form(max_length=256)] = None,
        audience: Annotated[str | None, Form(max_length=128)] = None,
        client_id: Annotated[str | None, Form(max_length=128)] = None,
        actor_token: Annotated[str | None, Form(max_length=4096)] = None,
        actor_token_type: Annotated[str | None, Form(max_length=256)] = None,
        resource: Annotated[str | None, Form(max_length=2048)] = None,
        scope: Annotated[str | None, Form(max_length=1024)] = None,
    ) -> TokenExchangeResponse:
        """RFC 8693 token exchange for the key's client app: the grant behind
        ``subject_token`` (another app's session or access token) is passed to this app only if
        the policy permits the onward transfer; the attempt is recorded either way. Errors are
        RFC 6749 section 5.2 bodies: ``unsupported_grant_type`` for any other ``grant_type``,
        ``invalid_request`` for a missing or malformed parameter (``actor_token``: delegation
        is not offered), ``invalid_target`` for a ``resource`` or a transfer the policy denies
        (with ``rule`` and ``instrument``), ``invalid_scope`` for a ``scope``."""
        service = _grants(state, "unsupported_grant_type")
        cid = _own_client_id(client, client_id)
        params = {
            "grant_type": grant_type or "",
            "subject_token": subject_token or "",
            "subject_token_type": subject_token_type,
            "requested_token_type": requested_token_type or "",
            "audience": audience or "",
            "actor_token": actor_token or "",
            "actor_token_type": actor_token_type or "",
            "resource": resource or "",
            "scope": scope or "",
        }
        with state.grants_lock:  # one outbox flush at a time (each event appended once)
            try:
                body = service.gate.exchange(params, cid, _API_KEY_AUTHENTICATED)
            except GrantInputError as exc:
                # the gate records every refusal (grant.refused; a denied transfer as its
                # grant.transfer attempt): no request.rejected as well
                mark_audited(exc)
                raise
            finally:
                service.flush()
        return TokenExchangeResponse.model_validate(body)

    @router.post("/oauth2/revoke", response_model=RevocationResponse, responses=_OAUTH_ERRORS)
    def revoke(
        client: AppClient,
        state: State,
        _once: SingleValuedForm,
        token: Annotated[str, Form(min_length=1, max_length=4096)],
        token_type_hint: Annotated[str | None, Form(max_length=64)] = None,
        client_id: Annotated[str | None, Form(max_length=128)] = None,
    ) -> RevocationResponse:
        """RFC 7009 revocation by the key's client app: a token of its own grant revokes the
        grant (quarantine now, purge by the deadline: the cascade); a token exchanged to it
        revokes that token; an unknown or foreign token is ignored (section 2.2), so the answer
        never reveals another app's tokens. ``token_type_hint`` is accepted and unused. A
        refusal (a token of another app's grant: ``unauthorized_client``) is audited as
        ``grant.refused`` (door ``revoke``), as the registry's own endpoint does."""
        del token_type_hint
        service = _grants(state, "unsupported_token_type")
        cid = _own_client_id(client, client_id)
        with state.grants_lock:  # one outbox flush at a time (each event appended once)
            try:
                job = service.revoke_token(token, cid, _API_KEY_AUTHENTICATED)
            except GrantInputError as exc:
                service.flush()
                # audited as the registry's own /oauth2/revoke does (grant.refused, door
                # revoke), so the two servers leave the same trace (session 7, G19)
                refuse(service.audit, exc, door="revoke", client=cid)
                mark_audited(exc)
                raise
        return RevocationResponse(revoked=job is not None, job=job)

    @router.get("/revocations", response_model=list[RevocationJobView], responses=_ERRORS)
    def revocations(client: AppClient, state: State) -> list[RevocationJobView]:
        """Revocation jobs of the grants this app holds (oldest first): its own grants
        (``relation: own``) and the grants it received by a permitted token exchange, account
        link or unionid join (``relation: received``; the recipient must stop using what it
        received). Another app's revocations stay invisible. 409 ``PG540`` without a grant
        registry; 503 ``PG340`` while ``revocation_jobs`` or ``transfer_attempts`` (which
        grants were received) disagree with the audit chain
        (:mod:`provguard.service.withheld`)."""
        service = _grants(state, None)
        state.chain_guard().require(
            ("revocation_jobs", "transfer_attempts"),
            "list of revocation jobs",
            detail=client.is_auditor,
        )
        received = state.grant_views.received_grant_ids(client.app)
        out = []
        for job in service.store.jobs():
            grant = service.store.grant(str(job["grant_id"]))
            if grant is None:
                continue
            relation: Literal["own", "received"]
            if grant.app_id == client.app:
                relation = "own"
            elif grant.grant_id in received:
                relation = "received"
            else:
                continue
            out.append(
                RevocationJobView(
                    job_id=str(job["job_id"]),
                    grant_id=str(job["grant_id"]),
                    relation=relation,
                    state=str(job["state"]),
                    reason=str(job.get("reason", "")),
                    source=str(job.get("source", "")),
                    requested_at=_iso(job.get("requested_at")) or "",
                    purge_by=_iso(job.get("purge_by")) or "",
                    completed_at=_iso(job.get("completed_at")),
                    expected={k: int(job.get(f"expected_{k}") or 0) for k in _KINDS},
                    purged={k: int(job.get(f"purged_{k}") or 0) for k in _KINDS},
                )
            )
        return out

    return router


tokens_api = _build_router()

"""The provguard HTTP service (FastAPI): decisions, grants, audit verification, report, dashboard.

``create_app(settings)`` builds the ASGI app over an output folder (``control.db`` with grants
and the audit log) and a policy folder. Every ``/v1`` endpoint needs an API key
(``X-API-Key: <key>`` or ``Authorization: Bearer <key>``; :mod:`provguard.service.auth`):

=====================================  ========  ===================================================
``POST /v1/decisions``                 app/aud.  decide one request (PDP), audit it
``POST /v1/decisions/batch``           app/aud.  decide up to 1000 requests in order
``GET  /v1/decisions``                 app       this app's recent decisions from the audit log
``GET  /v1/grants``                    app       grants this app holds, both stores (own + received)
``GET  /v1/grants/{grant_id}``         app       one grant this app holds (404 for any other)
``POST /v1/oauth2/token``              app       RFC 8693 token exchange (:mod:`.tokens`)
``POST /v1/oauth2/revoke``             app       RFC 7009 revocation (:mod:`.tokens`)
``GET  /v1/revocations``               app       revocation jobs of the grants this app holds
``POST /v1/scans``                     app       match decision of one handle/picture pair
``POST /v1/scans/batch``               app       up to 1000 pairs (:mod:`.scans`)
``GET  /v1/campaigns``                 any       campaigns (app: those with its targets)
``GET  /v1/campaigns/{id}``            any       status and progress (:mod:`.campaigns`)
``GET  /v1/campaigns/{id}/subjects``   any       targets (app: its own only)
``GET  /v1/audit/verify``              auditor   verify the hash chain (and the newest checkpoint)
``POST /v1/audit/checkpoints``         auditor   sign up to its own last entry (needs a key)
``GET  /v1/report``                    auditor   the evidence bundle (JSON), live from the stores
``GET  /v1/report.html``               auditor   the compliance report (HTML), live
``GET  /dashboard``                    auditor   server-rendered dashboard (cookie login)
``GET  /dashboard/grants``             auditor   grants, transfers, revocations and purges
``GET  /dashboard/campaigns``          auditor   campaign states now and over time
``GET  /healthz``                      none      liveness + audit writer counters
=====================================  ========  ===================================================

The campaign endpoints, the grant views' ``received`` relation and the dashboard pages answer
only from tables that agree with the audit chain, as ``provguard report --store`` does: while
one disagrees they answer 503 ``PG340`` with the discrepancy summary, or show the report's
"[PG340] Withheld" statement (:mod:`provguard.service.withheld`, cached per process).

Authentication comes before validation: a ``/v1`` request without a valid key is answered 401
``PG510`` whatever its body (a malformed body is not reported to an unauthenticated caller).
Bodies are bounded and strict (:mod:`provguard.service.limits`): over ``max_body_bytes`` (1 MiB)
413 ``PG560``; JSON that is not I-JSON (``NaN``/``Infinity``, duplicate keys, unsafe integers,
unpaired surrogates) or values over their limits (256-character strings in ``subject`` /
``context`` / ``audit_context``) 422 ``PG140``; and no decision is answered whose audit entry
cannot be encoded. Keys come in headers only; the dashboard's cookie is a session
(:mod:`provguard.service.sessions`), never accepted by ``/v1``.
``at`` in a decision request is an aware date-time or a plain date (``YYYY-MM-DD`` = 00:00 UTC).
Decisions use the policy folder plus the instrument events of ``STORE/control.db``, verified
against the audit chain by the control store and re-read when they change
(:class:`~provguard.service.events.StoreEvents`; 503 with the store's code while they do not
verify). Grant times in a request are the caller's word, checked only for consistency
(``grant_facts="asserted"``: 422 ``PG140`` for a first use before the grant or after ``at``).
A client app's key decides *now*: it may omit ``at`` or send an instant within
:data:`CLOCK_SKEW` (5 s) of the server's clock; any other ``at`` is refused 403 ``PG521``
(:class:`~provguard.service.errors.DecisionTimeError`, nothing of a batch is decided) and the
refusal is audit-logged as a ``decision.refused`` entry (client app, key name, the ``at`` sent,
the server's time). Only an auditor key may ask what the policy said (or will say) at another
time -- e.g. ``not_applicable`` before the order took effect; its decisions are audit-logged
with ``context.role = "auditor"`` and ``context.backdated``, and must name ``app``.

Tenant isolation: a key of role ``app`` acts for its client app only. It can decide only
requests whose ``app`` is its own (403 ``PG520`` otherwise), and lists only the grants it holds
-- its own, and those another app passed to it by a permitted transfer (``relation:
received``, e.g. duoshan's grandfathered RFC 8693 exchanges of douyin's grants) -- and its own
decisions (any other grant id answers 404 ``PG530``, never revealing that it exists).
A decision's audit entry records ``context.client_app`` and ``context.key`` from the API key;
a request's ``audit_context`` that names either is refused 422 ``PG140`` (single and batch;
nothing of the batch is decided), so attribution and the ``GET /v1/decisions`` listing cannot
be forged.

Every decision is submitted to an :class:`~provguard.audit.writer.AuditWriter` (delivery mode
``block`` = never drop, or ``drop`` = bounded buffer counting drops; ``ack="committed"`` waits
for the commit before answering). Errors answer ``{"error": {"code", "type", "message"}}``
with the provguard error code -- except the OAuth endpoints (``/v1/oauth2/token``,
``/v1/oauth2/revoke``), which answer RFC 6749 section 5.2 bodies ``{"error": "<RFC code>",
"error_description", "code": "PG..."}`` (:func:`provguard.service.errors.oauth_error`).
A valid key's request refused for its input -- its body or query did not validate, or a handler
raised an :class:`~provguard.errors.InputError` answered 4xx (an unknown origin, category or
scan provider, ...) -- is audit-logged as a ``request.rejected`` entry (:data:`REJECTED_KIND`)
unless another entry already records the refusal (``decision.refused``, ``grant.refused``).

Grants live in two stores: the control store's sandbox grants and the grant registry's real
sign-ins (``--grant-db``, else the folder's ``grants.db``); ``/v1/grants`` shows both, each
row labelled with its ``store`` (:class:`provguard.grants.views.GrantViews`). ``/healthz``
reports the audit log's real head (``last_seq``, ``head_hash``) read from the store.

Extension points: ``create_app(..., routers=[...])`` mounts further :class:`fastapi.APIRouter`
s (token exchange, revocation, scans, campaigns); they authenticate with the dependencies
:func:`current_client` / :func:`require_app` / :func:`require_auditor` and read the shared
:class:`ServiceState` from ``request.app.state.provguard``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.adapters.control_sqlite import SqlControlStore
from provguard.audit.crosscheck import StoreChainMismatchError
from provguard.audit.enforced import enforced_policy, require_enforced_files
from provguard.audit.folder import cover_own_entry, export_if_newer, signing_key_beside
from provguard.audit.masking import Masker
from provguard.audit.signing import SignedCheckpoint, load_private_key, load_public_key
from provguard.audit.writer import AuditWriter, DeliveryMode
from provguard.decide import Decision, DecisionPoint
from provguard.decide import Request as PdpRequest
from provguard.errors import InputError, ProvguardError, RequestError, StoreError
from provguard.grants.errors import GrantInputError
from provguard.grants.service import GrantService
from provguard.grants.views import GrantEntry, GrantViews
from provguard.policy import PolicySet, load_policy_dir
from provguard.policy.required import require_instruments
from provguard.report.audit_text import AUDIT_OFF_KIND
from provguard.report.from_store import StoreReader
from provguard.report.model import ReportModel
from provguard.report.render import render_html, to_evidence_json
from provguard.service.auth import ApiKeys, Client
from provguard.service.errors import (
    OAUTH_PATHS,
    AuthenticationError,
    DecisionTimeError,
    ForbiddenError,
    NotConfiguredError,
    NotFoundError,
    ServiceError,
    error_body,
    http_status,
    is_audited,
    mark_audited,
    oauth_error,
)
from provguard.service.events import StoreEvents
from provguard.service.limits import (
    DEFAULT_MAX_BODY_BYTES,
    BodyLimitMiddleware,
    BodyTooLargeError,
    StrictJSONRoute,
    ensure_auditable,
    too_large_message,
)
from provguard.service.ownlog import OwnEntriesAuditLog
from provguard.service.schemas import (
    AuditInfo,
    AuditVerifyResponse,
    BatchRequest,
    BatchResponse,
    DecisionBody,
    DecisionRecord,
    DecisionResponse,
    ErrorBody,
    GrantsPage,
    GrantView,
    ObligationView,
    ReasonView,
)
from provguard.service.sessions import DashboardSessions
from provguard.service.withheld import ChainGuard, discrepancy_details

__all__ = [
    "CLOCK_SKEW",
    "SETTINGS_ENV",
    "ServiceSettings",
    "ServiceState",
    "app_from_environment",
    "create_app",
    "current_client",
    "require_app",
    "require_auditor",
    "settings_to_environment",
]

SETTINGS_ENV = "PROVGUARD_SERVICE_SETTINGS"
"""Environment variable carrying :class:`ServiceSettings` (JSON) to uvicorn worker processes."""

CLOCK_SKEW = timedelta(seconds=5)
"""How far a client app's ``at`` may be from the server's clock and still mean "now" (clients'
clocks drift; NTP keeps them well inside this). Beyond it only an auditor key may ask."""

_MEMO_RESET = 200_000  # decisions after which the PDP memo is dropped (bounded memory)


@dataclass(frozen=True)
class ServiceSettings:
    """Settings of ``provguard serve``.

    ``store``: output folder (``control.db``); ``policy``: policy folder; ``keys``: API key file
    (or ``api_keys``: a ready registry, for tests); ``audit_mode``: ``block`` / ``drop`` /
    ``off``; ``queue_size``: the writer's bound (entries); ``ack``: ``queued`` (answer once
    queued) or ``committed`` (answer once committed); ``signing_key`` / ``checkpoint_every``:
    periodic Ed25519 checkpoints; ``public_key``: to check stored checkpoints;
    ``mask_handles``: also mask raw handles in audit entries; ``dashboard_refresh``: seconds
    between dashboard reloads (0: never). ``grant_db`` (SQLAlchemy URL or SQLite file of the
    grant registry, :class:`~provguard.adapters.grant_store.SqlGrantStore`) and
    ``token_key_file`` (its Fernet key; ``$PROVGUARD_TOKEN_KEY`` wins) enable token exchange
    and revocation; ``purge_within_days``: default purge deadline of a revocation;
    ``sign_with_folder_key``: without ``signing_key``, sign the writer's own entries with the
    key beside the store when there is one (``$PROVGUARD_AUDIT_KEY``, else
    ``store/audit-key.pem``, matching ``store/audit.pub``;
    :func:`provguard.audit.folder.signing_key_beside`). ``max_body_bytes``: the request-body
    limit (413 ``PG560`` beyond it; :mod:`provguard.service.limits`); ``session_secret``: hex
    HMAC key of the dashboard's session cookies (``None``: random per process;
    :mod:`provguard.service.sessions`).
    """

    store: Path
    policy: Path = Path("policies")
    keys: Path | None = None
    api_keys: ApiKeys | None = None
    audit_mode: Literal["block", "drop", "off"] = "block"
    queue_size: int = 10_000
    ack: Literal["queued", "committed"] = "queued"
    signing_key: Path | None = None
    public_key: Path | None = None
    checkpoint_every: int = 0
    mask_handles: bool = False
    dashboard_refresh: int = 5
    grant_db: str | None = None
    token_key_file: Path | None = None
    purge_within_days: int = 15
    sign_with_folder_key: bool = True
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    session_secret: str | None = None


@dataclass
class ServiceState:
    """What the endpoints share (``request.app.state.provguard``)."""

    settings: ServiceSettings
    policy: PolicySet
    keys: ApiKeys
    log: SqliteAuditLog
    writer: AuditWriter | None
    engine: Engine
    reader: StoreReader
    pdp: DecisionPoint
    grant_views: GrantViews
    grants: GrantService | None = None
    #: the control store's instrument events (``None``: the policy folder's set as loaded)
    events: StoreEvents | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    reader_lock: threading.Lock = field(default_factory=threading.Lock)
    grants_lock: threading.Lock = field(default_factory=threading.Lock)
    _generation: int = 0
    _guard: ChainGuard | None = None

    def chain_guard(self) -> ChainGuard:
        """The per-process cached store cross-check (:class:`ChainGuard`) on this state's
        reader, created on first use."""
        if self._guard is None:
            with self.lock:
                if self._guard is None:
                    self._guard = ChainGuard(self.reader, self.reader_lock)
        return self._guard

    def decide(self, req: PdpRequest) -> Decision:
        """Decide ``req`` with the policy in force: the policy folder plus the control store's
        instrument events, re-read when the store changed (:class:`StoreEvents`; one
        ``PRAGMA data_version`` per call). Raises the store's error (PG340 / PG310 / PG200,
        HTTP 503) while its events do not verify: nothing is decided then."""
        ev = self.events
        if ev is not None:
            policy = ev.check()
            if ev.generation != self._generation:
                with self.lock:
                    if ev.generation != self._generation:
                        self.policy = policy
                        self.pdp = DecisionPoint(policy)
                        self._generation = ev.generation
        pdp = self.pdp
        if pdp.count >= _MEMO_RESET:
            with self.lock:
                if self.pdp.count >= _MEMO_RESET:
                    self.pdp = DecisionPoint(self.policy)
                pdp = self.pdp
        return pdp.decide(req)

    def report_model(self) -> ReportModel:
        with self.reader_lock:
            return self.reader.model()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader.close()
        self.grant_views.close()
        if self.events is not None:
            self.events.close()
        if self.grants is not None:
            self.grants.store.close()
        self.log.close()
        self.engine.dispose()


def start_writer(settings: ServiceSettings, log: SqliteAuditLog) -> AuditWriter | None:
    """A started :class:`AuditWriter` on ``log`` as ``settings`` say (``None``: audit off).

    The signer is ``settings.signing_key``, else (``sign_with_folder_key``) the folder's key
    as ``provguard query`` finds it. A signing writer signs only its own entries
    (:meth:`AuditWriter.sign_own_entries`): every ``checkpoint_every`` entries (0: only at
    shutdown and on ``POST /v1/audit/checkpoints``), accepting as covered the entries before
    them that a stored checkpoint signed by its own key, or by ``settings.public_key``,
    covers. A checkpoint signed with the key of ``store/audit.pub`` is also exported as
    ``store/checkpoint.json`` (:func:`provguard.audit.folder.export_if_newer`). Raises
    :class:`~provguard.errors.AuditError` (PG300) for a bad key file."""
    if settings.audit_mode == "off":
        # nothing this process decides is recorded: the log says so, with the time, so a
        # reader of the chain knows decisions were answered unaudited from then on (fresh
        # user 9, G18); signed like a command's own entry when the folder's key is there
        own = log.append(
            AUDIT_OFF_KIND,
            {"started_at": datetime.now(UTC).isoformat(), "audit_mode": "off", "pid": os.getpid()},
        )
        cover_own_entry(log, settings.store, own)
        return None
    signer = load_private_key(settings.signing_key) if settings.signing_key else None
    if signer is None and settings.sign_with_folder_key:
        signer, _source = signing_key_beside(settings.store)
    trusted = [load_public_key(settings.public_key)] if settings.public_key else []
    store = settings.store

    def export(signed: SignedCheckpoint) -> None:
        export_if_newer(signed, store)

    mode: DeliveryMode = settings.audit_mode
    return AuditWriter(
        log,
        mode=mode,
        capacity=settings.queue_size,
        signer=signer,
        checkpoint_every=settings.checkpoint_every if signer is not None else 0,
        trusted_public_keys=trusted,
        on_checkpoint=export if signer is not None else None,
    ).start()


def open_state(settings: ServiceSettings) -> ServiceState:
    """Open the stores, load the policy and keys, start the audit writer. Raises
    :class:`ProvguardError` subclasses for a bad folder, policy, key file or key."""
    db = settings.store / "control.db"
    if not db.is_file():
        raise StoreError(f"no control store at {db} (run 'provguard run --out {settings.store}')")
    base = load_policy_dir(settings.policy)
    # the store's recorded instruments bind the service too: --policy may add, never drop
    require_instruments(base, SqlControlStore(db).instrument_ids(), store=str(db))
    # and so do the bundle files its job enforced, byte for byte (fresh user 11, H1)
    with SqliteAuditLog(db, create=False) as enforced_log:
        enforced = enforced_policy(
            enforced_log, settings.store.resolve(), enforced_log.checkpoint().count
        )
    require_enforced_files(enforced, base)
    if settings.api_keys is not None:
        keys = settings.api_keys
    elif settings.keys is not None:
        keys = ApiKeys.load(settings.keys)
    else:
        raise ServiceError("no API keys configured (--keys FILE; see 'provguard keys add')")
    # the policy folder with the store's instrument events, as 'decide --store' applies them
    events = StoreEvents(db, base)
    policy = events.policy
    masker = Masker.for_deployment(mask_handles=settings.mask_handles)
    log = OwnEntriesAuditLog(db, create=False, synchronous="NORMAL", masker=masker)
    writer = start_writer(settings, log)
    public = load_public_key(settings.public_key) if settings.public_key else None
    state = ServiceState(
        settings=settings,
        policy=policy,
        keys=keys,
        log=log,
        writer=writer,
        engine=create_engine(f"sqlite+pysqlite:///{db.resolve()}"),
        reader=StoreReader(settings.store, public_key=public, grant_db=settings.grant_db),
        pdp=DecisionPoint(policy),
        grant_views=GrantViews.of_folder(settings.store, settings.grant_db),
        events=events,
        _generation=events.generation,
    )
    if settings.grant_db is not None:
        from provguard.service.tokens import open_grant_service

        try:
            state.grants = open_grant_service(state)
        except BaseException:
            state.close()
            raise
    return state


# ------------------------------------------------------------------------------ dependencies


def state_of(request: Request) -> ServiceState:
    """The :class:`ServiceState` of the app serving ``request``."""
    state: ServiceState = request.app.state.provguard
    return state


def _key_from(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return None  # never a cookie: the dashboard's session cookie is not a key (sessions.py)


async def current_client(request: Request) -> Client:
    """Dependency: the authenticated :class:`Client`; 401 ``PG510`` without a valid key."""
    state: ServiceState = request.app.state.provguard
    client = state.keys.lookup(_key_from(request))
    if client is None:
        raise AuthenticationError("a valid API key is required (X-API-Key header)")
    return client


async def require_app(client: Annotated[Client, Depends(current_client)]) -> Client:
    """Dependency: a client app's key (role ``app``); 403 ``PG520`` for an auditor key."""
    if client.role != "app":
        raise ForbiddenError("this endpoint acts for a client app; use that app's API key")
    return client


async def require_auditor(client: Annotated[Client, Depends(current_client)]) -> Client:
    """Dependency: an auditor key; 403 ``PG520`` for a client app's key."""
    if not client.is_auditor:
        raise ForbiddenError("this endpoint needs an auditor key")
    return client


AppClient = Annotated[Client, Depends(require_app)]
Auditor = Annotated[Client, Depends(require_auditor)]


async def _state_dependency(request: Request) -> ServiceState:
    """:func:`state_of` as an async dependency (no thread-pool hop per request)."""
    return state_of(request)


State = Annotated[ServiceState, Depends(_state_dependency)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 422, 503)
}


# ------------------------------------------------------------------------------ helpers


def as_instant(at: datetime | date | None) -> datetime:
    """A request's ``at``: an aware datetime as given, a plain date as 00:00 UTC of that day,
    ``None`` as now (UTC)."""
    if at is None:
        return datetime.now(UTC)
    if isinstance(at, datetime):
        return at
    return datetime(at.year, at.month, at.day, tzinfo=UTC)


async def decision_client(client: Annotated[Client, Depends(current_client)]) -> Client:
    """Dependency of the decision endpoints: a client app's key or an auditor key."""
    return client


DecisionClient = Annotated[Client, Depends(decision_client)]


def _check_time(at: datetime, now: datetime, client: Client, where: str = "") -> bool:
    """Whether ``at`` is *not* now (beyond :data:`CLOCK_SKEW`): allowed for an auditor key
    (returns True: backdated or future), refused for a client app's key
    (:class:`DecisionTimeError`, PG521)."""
    off = at - now
    if abs(off) <= CLOCK_SKEW:
        return False
    if client.is_auditor:
        return True
    seconds = off.total_seconds()
    when = f"{-seconds:.0f} s in the past" if seconds < 0 else f"{seconds:.0f} s in the future"
    raise DecisionTimeError(
        f"{where}'at' {at.isoformat()} is {when} of the server's clock "
        f"({now.isoformat(timespec='seconds')}); a client app's key decides now: omit 'at' "
        f"(or send the current time, within {CLOCK_SKEW.total_seconds():.0f} s). Asking what "
        "the policy said at another time needs an auditor key"
    )


def _to_request(
    body: DecisionBody, client: Client, now: datetime, where: str = ""
) -> tuple[PdpRequest, bool]:
    """The PDP request of ``body`` and whether it is backdated (auditor keys only). Raises
    :class:`ForbiddenError` (tenant isolation), :class:`DecisionTimeError` (an app key's
    ``at`` is not now), :class:`~provguard.errors.RequestError` (an auditor key without
    ``app``; a bad request)."""
    if client.is_auditor:
        if body.app is None:
            raise RequestError(f"{where}an auditor key must name the 'app' whose decision it asks")
        app = body.app
    else:
        app = body.app or client.app
        if app != client.app:
            raise ForbiddenError(
                f"the key of client app '{client.app}' cannot ask for app '{app}'"
                " (tenant isolation)"
            )
    at = now if body.at is None else as_instant(body.at)
    backdated = _check_time(at, now, client, where)
    try:
        return _pdp_request(body, app, at), backdated
    except RequestError as exc:
        raise RequestError(f"{where}{exc.message}") from None


def _pdp_request(body: DecisionBody, app: str, at: datetime) -> PdpRequest:
    """The PDP request of ``body``; its grant times are the caller's word (``asserted``), so
    :func:`~provguard.decide.check_grant_times` refuses impossible ones (PG140)."""
    return PdpRequest(
        app=app,
        action=body.action,
        category=body.category,
        origins=frozenset(body.origins),
        at=at,
        purpose=body.purpose,
        recipient=body.recipient,
        controller=body.controller,
        grant_first_used_by_recipient_at=body.grant_first_used_by_recipient_at,
        grant_granted_at=body.grant_granted_at,
        grant_status=body.grant_status,
        grant_scopes=frozenset(body.grant_scopes) if body.grant_scopes is not None else None,
        subject=dict(body.subject),
        context=dict(body.context),
        grant_facts="asserted",
    )


async def _refused(state: ServiceState, client: Client, exc: ProvguardError, **what: Any) -> None:
    """Audit-log a refused decision request (``decision.refused``: code, message, client app,
    key name and what was asked), then let the caller raise ``exc``. With the audit off nothing
    is written."""
    writer = state.writer
    if writer is None:
        return
    payload: dict[str, Any] = {
        "code": exc.code,
        "reason": exc.message,
        "client_app": client.app,
        "key": client.name,
        "role": client.role,
        **what,
    }
    number = writer.submit("decision.refused", payload)
    mark_audited(exc)
    if number is not None and state.settings.ack == "committed":
        await anyio.to_thread.run_sync(writer.wait, number, 30.0)


REJECTED_KIND = "request.rejected"
"""Kind of the audit entry of a request from a valid key refused for its input: the body or
query did not validate (HTTP 422, or 400 ``invalid_request`` at the OAuth endpoints), or a
handler refused what it said (an :class:`~provguard.errors.InputError` answered 4xx: an
unknown origin, category or scan provider, an auditor key's request without ``app``,
impossible grant times, an entry that cannot be encoded, a repeated OAuth parameter)."""

MAX_REASON = 1024
"""Characters of a refusal's message kept in its ``request.rejected`` entry."""


async def _rejected(
    state: ServiceState,
    request: Request,
    message: str,
    details: Sequence[Mapping[str, Any]],
    status: int,
    *,
    code: str = "PG140",
    error: str = "RequestValidationError",
) -> None:
    """Audit-log (``request.rejected``) a request from an authenticated key refused for its
    input: ``code`` (PG140 for a body or query that did not validate), ``error`` (the error
    class), the HTTP status, method, path, the reason (at most :data:`MAX_REASON` characters),
    each validation error's location and message (never the submitted values; empty for a
    handler's refusal), the client app, key name and role. With the audit off, or no valid key
    (answered 401 before validation), nothing is written."""
    writer = state.writer
    client = state.keys.lookup(_key_from(request))
    if writer is None or client is None:
        return
    payload: dict[str, Any] = {
        "code": code,
        "error": error,
        "status": status,
        "method": request.method,
        "path": request.url.path,
        "reason": message if len(message) <= MAX_REASON else message[: MAX_REASON - 1] + "…",
        "errors": [{"loc": list(d.get("loc", ())), "msg": d.get("msg", "")} for d in details],
        "client_app": client.app,
        "key": client.name,
        "role": client.role,
    }
    number = writer.submit(REJECTED_KIND, payload)
    if number is not None and state.settings.ack == "committed":
        await anyio.to_thread.run_sync(writer.wait, number, 30.0)


async def _rejected_input(
    state: ServiceState, request: Request, exc: ProvguardError, status: int
) -> None:
    """``request.rejected`` for a handler's refusal of a ``/v1`` request's input (G19): an
    :class:`~provguard.errors.InputError` answered 4xx that no other entry recorded
    (:func:`~provguard.service.errors.is_audited`). Authentication and authorisation refusals
    (PG510 / PG520), missing resources (PG530) and server-side failures are not input
    refusals and write nothing here."""
    if (
        not request.url.path.startswith("/v1/")
        or not isinstance(exc, InputError)
        or not 400 <= status < 500
        or is_audited(exc)
    ):
        return
    await _rejected(
        state, request, exc.message, (), status, code=exc.code, error=type(exc).__name__
    )
    mark_audited(exc)


async def _requests(
    state: ServiceState, client: Client, bodies: Sequence[DecisionBody], endpoint: str
) -> list[tuple[PdpRequest, bool]]:
    """Every body as a PDP request, all checked before any is decided; a refusal (tenant
    isolation, a time an app key may not ask about) is audit-logged and raised."""
    now = datetime.now(UTC)
    out = []
    for i, body in enumerate(bodies):
        where = f"requests[{i}]: " if endpoint.endswith("batch") else ""
        try:
            out.append(_to_request(body, client, now, where))
        except (ForbiddenError, RequestError) as exc:
            if isinstance(exc, ForbiddenError):
                await _refused(
                    state,
                    client,
                    exc,
                    endpoint=endpoint,
                    index=i,
                    app=body.app or client.app,
                    at=None if body.at is None else as_instant(body.at).isoformat(),
                    server_time=now.isoformat(),
                )
            raise
    return out


_OFF = AuditInfo(mode="off", submission=None, acknowledged=False)


def _audit_context(client: Client, body: DecisionBody, backdated: bool) -> dict[str, Any]:
    """The ``context`` of a service decision's audit entry: the body's ``audit_context`` plus
    the server's attribution, which always wins (the schema already refuses reserved keys)."""
    context: dict[str, Any] = {**body.audit_context, "client_app": client.app, "key": client.name}
    if client.is_auditor:
        context["role"] = client.role
        context["backdated"] = backdated
    return context


async def _audit(
    state: ServiceState,
    decision: Decision,
    client: Client,
    body: DecisionBody,
    backdated: bool = False,
) -> AuditInfo:
    """Queue the decision's audit entry (O(1): the payload is built in the writer thread, off
    the request's time); with ``ack="committed"`` wait for its commit in a worker thread, so the
    event loop keeps serving. In ``block`` mode a full queue blocks here (back-pressure).
    Whatever the mode, the entry is encoded first (:func:`ensure_auditable`): one that could
    not be recorded is refused 422 ``PG140``, never answered."""
    writer = state.writer
    context = _audit_context(client, body, backdated)
    ensure_auditable(decision, stage="service", context=context)
    if writer is None:
        return _OFF
    number = writer.submit_decision(decision, stage="service", context=context)
    acked = False
    if number is not None and state.settings.ack == "committed":
        acked = await anyio.to_thread.run_sync(writer.wait, number, 30.0)
        if not acked:
            raise ServiceError("the audit log did not acknowledge the decision in 30 s")
    return AuditInfo(mode=writer.mode, submission=number, acknowledged=acked)


def _response(decision: Decision, audit: AuditInfo) -> DecisionResponse:
    """The response body, built without re-validating what the PDP produced (its types are
    the schema's; FastAPI serialises it against ``DecisionResponse``)."""
    d = decision.as_dict()
    return DecisionResponse.model_construct(
        effect=decision.effect,
        allowed=decision.allowed,
        reasons=[ReasonView.model_construct(**r) for r in d["reasons"]],
        obligations=[ObligationView.model_construct(**o) for o in d["obligations"]],
        request=d["request"],
        audit=audit,
    )


def _oauth_response(exc: ProvguardError) -> JSONResponse:
    status, body, headers = oauth_error(exc)
    return JSONResponse(body, status_code=status, headers=headers)


def _grant_view(entry: GrantEntry) -> GrantView:
    return GrantView(
        store=entry.store,
        grant_id=entry.grant_id,
        subject_id=entry.subject_id,
        openid=entry.openid,
        provider=entry.provider,
        app_id=entry.app_id,
        scopes=entry.scopes,
        granted_at=entry.granted_at.isoformat(),
        status=entry.status,
        relation=entry.relation,
        received_via=list(entry.received_via),
        received_at=entry.received_at.isoformat() if entry.received_at is not None else None,
    )


# ------------------------------------------------------------------------------ routes

api = APIRouter(prefix="/v1", responses=_ERRORS, route_class=StrictJSONRoute)


@api.post("/decisions", response_model=DecisionResponse, tags=["decisions"])
async def post_decision(
    body: DecisionBody, client: DecisionClient, state: State
) -> DecisionResponse:
    """Decide one request (now, for the key's client app; any app and time for an auditor key)
    and record it in the audit log. 403 ``PG521`` for an app key's ``at`` that is not now."""
    ((req, backdated),) = await _requests(state, client, [body], "/v1/decisions")
    decision = state.decide(req)
    return _response(decision, await _audit(state, decision, client, body, backdated))


@api.post("/decisions/batch", response_model=BatchResponse, tags=["decisions"])
async def post_batch(batch: BatchRequest, client: DecisionClient, state: State) -> BatchResponse:
    """Decide up to 1000 requests in order; all are checked before any is decided (one refused
    request -- another app, or an app key's ``at`` not now -- refuses the batch)."""
    requests = await _requests(state, client, batch.requests, "/v1/decisions/batch")
    decided = [
        (body, state.decide(req), backdated)
        for body, (req, backdated) in zip(batch.requests, requests, strict=True)
    ]
    for i, (body, decision, backdated) in enumerate(decided):  # all recordable, or none answered
        try:
            ensure_auditable(
                decision, stage="service", context=_audit_context(client, body, backdated)
            )
        except RequestError as exc:
            raise RequestError(f"requests[{i}]: {exc.message}") from None
    out = []
    for body, decision, backdated in decided:
        out.append(_response(decision, await _audit(state, decision, client, body, backdated)))
    return BatchResponse(
        decisions=out,
        denied=sum(d.effect == "deny" for d in out),
        permitted=sum(d.effect == "permit" for d in out),
        not_applicable=sum(d.effect == "not_applicable" for d in out),
    )


@api.get("/decisions", response_model=list[DecisionRecord], tags=["decisions"])
def list_decisions(
    client: AppClient,
    state: State,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    effect: Annotated[Literal["permit", "deny", "not_applicable"] | None, Query()] = None,
) -> list[DecisionRecord]:
    """This client app's most recent decisions made through the service (newest first)."""
    where: dict[str, str | int] = {"context.client_app": client.app}
    if effect is not None:
        where["effect"] = effect
    if state.writer is not None:
        state.writer.flush(timeout=5.0)  # read your own writes
    entries = state.log.find(kind="decision", payload_equals=where, limit=limit)
    return [
        DecisionRecord(
            seq=e.seq,
            at=e.stored_at(),
            effect=str(e.payload.get("effect")),
            rules=[str(r) for r in e.payload.get("rules", [])],
            request=dict(e.payload.get("request", {})),
            context=dict(e.payload.get("context", {})),
            hash=e.hash,
        )
        for e in entries
    ]


_RECEIVED_TABLES: dict[str | None, tuple[str, ...]] = {
    "sandbox": ("transfers",),
    "registry": ("transfer_attempts",),
    None: ("transfers", "transfer_attempts"),
}
"""The cross-checked tables a grant store's ``received`` relation is read from."""


@api.get("/grants", response_model=GrantsPage, tags=["grants"])
def list_grants(
    client: AppClient,
    state: State,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    status: Annotated[Literal["active", "revoked", "expired", "purged"] | None, Query()] = None,
    store: Annotated[Literal["sandbox", "registry"] | None, Query()] = None,
    relation: Annotated[Literal["own", "received"] | None, Query()] = None,
) -> GrantsPage:
    """The OAuth grants this client app holds, in both grant stores, each labelled with its
    ``store``: the sandbox grants of ``control.db`` first, then the grant registry's
    (``--grant-db`` or the folder's ``grants.db``), each ordered by grant id. ``store`` keeps
    one of them. A grant is held as ``relation: own`` (a sign-in to this app) or ``received``
    (another app's grant passed to this app by a permitted transfer: RFC 8693 token exchange,
    account link, unionid join, or a grandfathered sandbox transfer); ``relation`` keeps one.
    Other apps' grants are never listed.

    A received grant is listed on the word of the transfer tables (``control.db``'s
    ``transfers``, the registry's ``transfer_attempts``), so unless ``relation`` is ``own``
    those tables must agree with the audit chain (:class:`~provguard.service.withheld.ChainGuard`);
    while one the answer reads disagrees, it is answered 503 ``PG340`` (fresh user 12, M3)."""
    if relation != "own":
        state.chain_guard().require(
            _RECEIVED_TABLES[store], "list of grants this app received", detail=client.is_auditor
        )
    rows, totals = state.grant_views.page(
        client.app, status=status, store=store, relation=relation, limit=limit, offset=offset
    )
    return GrantsPage(
        grants=[_grant_view(r) for r in rows],
        total=sum(totals.values()),
        offset=offset,
        limit=limit,
        totals=totals,
    )


@api.get("/grants/{grant_id}", response_model=GrantView, tags=["grants"])
def get_grant(grant_id: str, client: AppClient, state: State) -> GrantView:
    """One grant this client app holds (own or received, either store); any other grant is
    answered 404 like a missing one. Whether a grant of another app was *received* (and so
    is shown, not 404) rests on the transfer tables: while one disagrees with the audit chain,
    anything but an own grant is answered 503 ``PG340``."""
    entry = state.grant_views.get(client.app, grant_id)
    if entry is None or entry.relation == "received":
        state.chain_guard().require(
            _RECEIVED_TABLES[entry.store if entry is not None else None],
            "grant this app may have received",
            detail=client.is_auditor,
        )
    if entry is None:
        raise NotFoundError(f"no grant '{grant_id}' for client app '{client.app}'")
    return _grant_view(entry)


@api.get("/audit/verify", response_model=AuditVerifyResponse, tags=["audit"])
def audit_verify(_auditor: Auditor, state: State) -> AuditVerifyResponse:
    """Recompute the whole hash chain (after writing what is queued); with a configured public
    key, against the newest stored signed checkpoint too."""
    if state.writer is not None:
        state.writer.flush(timeout=30.0)
    full = state.log.verify()
    summary = state.reader.audit()
    cp = summary.checkpoint
    checkpoint = None
    result_ok, reason, first_bad = full.ok, full.reason, full.first_bad_seq
    if cp is not None:
        checkpoint = cp.model_dump(mode="json")
        if cp.signature_ok is True:
            from provguard.audit.chain import Checkpoint

            against = state.log.verify(Checkpoint(cp.count, cp.head_hash))
            result_ok, reason, first_bad = against.ok, against.reason, against.first_bad_seq
        elif cp.signature_ok is False:
            result_ok, reason = False, "the newest stored checkpoint's signature does not verify"
    return AuditVerifyResponse(
        ok=result_ok,
        count=full.count,
        head_hash=full.head_hash,
        first_bad_seq=first_bad,
        reason=reason,
        checkpoint=checkpoint,
    )


@api.post("/audit/checkpoints", tags=["audit"])
def audit_checkpoint(_auditor: Auditor, state: State) -> dict[str, Any]:
    """Sign a checkpoint ending at the last entry THIS service wrote (after writing what is
    queued), never at a head others appended to; returns the exportable checkpoint JSON.

    409 PG540 without a signing key (``serve --signing-key``, or ``audit-key.pem`` beside the
    store) or before the service wrote any entry; 409 PG331 when entries someone else wrote
    before the service's own are not covered by a signed checkpoint (nothing is signed:
    review them and sign with ``provguard audit checkpoint export``)."""
    writer = state.writer
    if writer is None or not writer.signs:
        raise NotConfiguredError(
            "no signing key configured (serve --signing-key, or audit-key.pem beside the store)"
        )
    writer.flush(timeout=30.0)
    signed = writer.sign_own_entries()
    if signed is None:
        raise NotConfiguredError("this service has written no audit entry yet: nothing to sign")
    return signed.to_dict()


@api.get("/report", tags=["report"])
def report_json(_auditor: Auditor, state: State) -> Response:
    """The compliance evidence bundle (schema ``provguard.compliance-evidence/1``), live."""
    if state.writer is not None:
        state.writer.flush(timeout=30.0)
    return Response(to_evidence_json(state.report_model()), media_type="application/json")


@api.get("/report.html", response_class=HTMLResponse, tags=["report"])
def report_html(_auditor: Auditor, state: State) -> HTMLResponse:
    """The compliance report as one self-contained HTML page, live."""
    if state.writer is not None:
        state.writer.flush(timeout=30.0)
    return HTMLResponse(render_html(state.report_model()))


def _policy_health(state: ServiceState) -> dict[str, Any]:
    """The instrument events the service decides with (``{"instrument/event": "YYYY-MM-DD"}``,
    read from the control store) and the store's error code while they do not verify."""
    ev = state.events
    if ev is None:
        return {"events": {}, "events_error": None}
    ev.refresh()
    return {
        "events": dict(ev.events),
        "events_error": None if ev.error is None else ev.error.code,
    }


def _own_writes(state: ServiceState) -> dict[str, int]:
    """``written_by_this_process`` (how many entries this process appended to the log: the
    writer's batches, ``audit.dropped`` records, the ``service.audit_off`` marker) and
    ``last_seq_written`` (the highest seq among them; 0 before the first), from
    :class:`~provguard.service.ownlog.OwnEntriesAuditLog`."""
    log = state.log
    if not isinstance(log, OwnEntriesAuditLog):  # a state built by hand around a plain log
        return {}
    own = log.own_writes()
    return {"written_by_this_process": own.entries, "last_seq_written": own.last_seq}


def _health(state: ServiceState) -> dict[str, Any]:
    """Liveness and the audit writer's counters. ``last_seq`` / ``head_hash`` are the log's
    real head, read from the store (so a fresh service, or one whose entries another worker
    wrote, shows the chain's true length, not 0); ``written_by_this_process`` is the *number*
    of entries this process appended (0 before its first; other workers' and commands'
    entries are not counted) and ``last_seq_written`` the seq of the newest of them (0 before
    the first)."""
    head = state.log.head()
    last_seq, head_hash = (head.seq, head.hash) if head is not None else (0, None)
    w = state.writer
    policy = _policy_health(state)
    own = _own_writes(state)
    if w is None:
        return {
            "status": "ok",
            "policy": policy,
            "audit": {"mode": "off", "last_seq": last_seq, "head_hash": head_hash, **own},
        }
    s = w.stats()
    return {
        "status": "ok",
        "policy": policy,
        "audit": {
            "mode": w.mode,
            "accepted": s.accepted,
            "committed": s.committed,
            "dropped": s.dropped,
            "drops_recorded": s.drops_recorded,
            "failed": s.failed,
            "pending": s.pending,
            "last_seq": max(last_seq, s.last_seq),
            "head_hash": head_hash,
            **own,
            "checkpoints": s.checkpoints,
            "checkpoints_refused": s.checkpoints_refused,
        },
    }


# ------------------------------------------------------------------------------ the app


def create_app(
    settings: ServiceSettings,
    *,
    routers: Sequence[APIRouter] = (),
    state: ServiceState | None = None,
) -> FastAPI:
    """The ASGI app (see the module docstring). The stores are opened here (errors surface at
    start-up, not on the first request) and closed at shutdown (the writer is flushed)."""
    from provguard.service.dashboard import dashboard

    st = state or open_state(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if st.writer is not None and st.writer.closed:
            # served again after a shutdown (a test client per call): a fresh writer; the
            # engines reconnect on demand after their dispose
            st.writer = start_writer(st.settings, st.log)
        yield
        st.close()

    app = FastAPI(
        title="provguard",
        version="1",
        summary="Provenance-aware policy decisions, grants and tamper-evident audit over HTTP.",
        lifespan=lifespan,
    )
    app.state.provguard = st
    app.state.dashboard_sessions = DashboardSessions.from_hex(st.settings.session_secret)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=st.settings.max_body_bytes)

    @app.exception_handler(ProvguardError)
    async def _provguard_error(request: Request, exc: ProvguardError) -> JSONResponse:
        if request.url.path in OAUTH_PATHS:
            response = _oauth_response(exc)
            await _rejected_input(st, request, exc, response.status_code)
            return response
        await _rejected_input(st, request, exc, http_status(exc))
        body = error_body(exc.code, type(exc).__name__, exc.message)
        if isinstance(exc, StoreChainMismatchError) and exc.discrepancies:
            # PG340: the summary of what disagrees, never the table's figures
            body["error"]["discrepancy_count"] = len(exc.discrepancies)
            body["error"]["discrepancies"] = discrepancy_details(exc.discrepancies)
        oauth = getattr(exc, "oauth_error", None)
        if isinstance(oauth, str):
            body["error"]["oauth_error"] = oauth
        decision = getattr(exc, "decision", None)
        if isinstance(decision, Decision) and decision.determining:
            body["error"]["rule"] = decision.determining[0].rule_id
            body["error"]["instrument"] = decision.determining[0].instrument_id
        return JSONResponse(body, status_code=http_status(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        oauth = request.url.path in OAUTH_PATHS
        if request.url.path.startswith("/v1/") and st.keys.lookup(_key_from(request)) is None:
            # authentication comes before validation: no key, no hint about the body
            unknown = AuthenticationError("a valid API key is required (X-API-Key header)")
            if oauth:
                return _oauth_response(unknown)
            return JSONResponse(
                error_body(unknown.code, "AuthenticationError", unknown.message),
                status_code=401,
            )
        details = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        message = f"invalid request at {'.'.join(first['loc'])}: {first['msg']}"
        await _rejected(st, request, message, details, 400 if oauth else 422)
        if oauth:  # RFC 6749 section 5.2: a missing or malformed parameter is invalid_request
            where = ".".join(first["loc"][1:]) or "body"
            return _oauth_response(GrantInputError(f"parameter '{where}': {first['msg']}"))
        return JSONResponse(error_body("PG140", "RequestError", message, details), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {401: "PG510", 403: "PG520", 404: "PG530", 405: "PG100"}.get(
            exc.status_code, "PG500"
        )
        if exc.status_code == 413:  # the request-body limit (limits.py)
            too_large = BodyTooLargeError(too_large_message(st.settings.max_body_bytes))
            if request.url.path not in OAUTH_PATHS:
                body = error_body(too_large.code, "BodyTooLargeError", too_large.message)
                return JSONResponse(body, status_code=413)
            exc = StarletteHTTPException(413, too_large.message, exc.headers)
            code = too_large.code
        if request.url.path in OAUTH_PATHS:
            return JSONResponse(
                {"error": "invalid_request", "error_description": str(exc.detail), "code": code},
                status_code=exc.status_code,
                headers={"Cache-Control": "no-store", "Pragma": "no-cache", **(exc.headers or {})},
            )
        return JSONResponse(
            error_body(code, "HTTPError", str(exc.detail)), status_code=exc.status_code
        )

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, Any]:
        """Liveness and the audit writer's counters (no key needed; no tenant data)."""
        return _health(st)

    from provguard.service.campaigns import campaigns_api
    from provguard.service.scans import scans_api
    from provguard.service.tokens import tokens_api

    app.include_router(api)
    app.include_router(tokens_api)
    app.include_router(scans_api)
    app.include_router(campaigns_api)
    app.include_router(dashboard)
    for router in routers:
        app.include_router(router)
    return app


# ------------------------------------------------------------------------------ workers

_PATH_FIELDS = ("store", "policy", "keys", "signing_key", "public_key", "token_key_file")


def settings_to_environment(settings: ServiceSettings) -> str:
    """``settings`` as the JSON text :func:`app_from_environment` reads (key *files* only: an
    in-memory ``api_keys`` registry cannot cross to another process; raises
    :class:`ServiceError` then)."""
    if settings.api_keys is not None:
        raise ServiceError("settings with an in-memory key registry cannot be passed to workers")
    doc: dict[str, Any] = {}
    for name in ServiceSettings.__dataclass_fields__:
        if name == "api_keys":
            continue
        value = getattr(settings, name)
        doc[name] = str(value) if isinstance(value, Path) else value
    return json.dumps(doc, sort_keys=True)


def app_from_environment() -> FastAPI:
    """The app of ``$PROVGUARD_SERVICE_SETTINGS`` (uvicorn factory for ``serve --workers N``:
    each worker process opens its own stores, PDP and audit writer; the writers append to the
    same chain, each batch in one ``BEGIN IMMEDIATE`` transaction that continues from the
    stored head, so the chain stays one sequence). Raises :class:`ServiceError` if the variable
    is missing or not valid settings."""
    text = os.environ.get(SETTINGS_ENV)
    if not text:
        raise ServiceError(f"${SETTINGS_ENV} is not set (use 'provguard serve')")
    try:
        doc = json.loads(text)
        for name in _PATH_FIELDS:
            if doc.get(name) is not None:
                doc[name] = Path(doc[name])
        settings = ServiceSettings(**doc)
    except (ValueError, TypeError) as exc:
        raise ServiceError(f"${SETTINGS_ENV} does not hold service settings: {exc}") from exc
    return create_app(settings)

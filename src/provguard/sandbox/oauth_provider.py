"""A sandbox open platform: the WeChat and QQ login APIs, served over HTTP on loopback.

This is a **stand-in** for the real platforms, for the demo and the integration tests. It speaks
the same paths, parameters and JSON shapes as the real login APIs (see
:mod:`provguard.grants.providers`), so the login connector runs unchanged against it and against
a real platform; only the base URL and the app credentials differ. What it adds, and marks as
sandbox extensions under ``/sandbox/``:

- a consent page (``GET`` authorize renders it, ``POST /sandbox/consent`` answers it) in place of
  the QR-code scan / mobile confirmation of the real platforms;
- PKCE (RFC 7636, S256 and plain): checked when the authorize request carried a challenge,
  required for apps registered with ``require_pkce``;
- RFC 7009 token revocation at ``POST /sandbox/oauth2/revoke``;
- user actions ``POST /sandbox/users/{user}/revoke`` (the user withdraws an app's authorisation)
  and ``POST /sandbox/users/{user}/delete`` (account deleted), which notify each affected app at
  its registered callback with a JSON body signed ``X-Sandbox-Signature: sha256=<HMAC-SHA256 of
  the body under the app secret>``. Notifications go through an outbox (``outbox``, by event
  id): a failed POST (non-2xx or no connection) is retried with exponential backoff up to
  ``retry_attempts`` times, always with the same ``event_id`` so the receiver acts once; a
  notification whose budget runs out is kept and reported (``undelivered()``, ``redeliver()``).

Semantics followed: authorization codes are single use and live ``code_ttl`` seconds (WeChat: 10
minutes); a replayed code is refused (WeChat ``errcode`` 40163) and, as RFC 6749 section 4.1.2
advises, the tokens issued from it are revoked. ``openid`` is per app, ``unionid`` per developer
account (two apps of one developer see the same ``unionid``). Access tokens expire
(WeChat 7200 s, QQ 90 days), refresh tokens after 30 days (WeChat) / 90 days (QQ); time comes from
an injectable clock. Errors: WeChat answers HTTP 200 with ``{"errcode": n, "errmsg": ...}``; QQ's
token endpoint ``{"error": n, "error_description": ...}``, its OpenAPI ``{"ret": n, "msg": ...}``.

Everything is in memory and guarded by one lock; nothing is persisted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import io
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import anyio.to_thread
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from provguard.clock import Clock, SystemClock
from provguard.grants.crypto import constant_time_equals
from provguard.grants.providers import QQ, WECHAT, ProviderProfile
from provguard.grants.server import LoopbackServer

__all__ = ["SandboxApp", "SandboxOpenPlatform", "SandboxUser", "sign_notification"]


@dataclass(frozen=True)
class SandboxApp:
    """A client app registered at the platform under developer account ``developer``."""

    app_id: str
    secret: str
    developer: str
    redirect_uris: tuple[str, ...]
    notify_url: str | None = None
    require_pkce: bool = False


@dataclass
class SandboxUser:
    """A platform user; ``avatar_seed`` picks the colour of the generated profile picture."""

    key: str
    nickname: str
    gender: str = "男"
    deleted: bool = False


@dataclass
class _Code:
    app_id: str
    user: str
    redirect_uri: str
    scope: str
    challenge: str | None
    method: str | None
    expires_at: datetime
    used: bool = False
    tokens: list[str] = field(default_factory=list)


@dataclass
class _Token:
    app_id: str
    user: str
    scope: str
    kind: str  # access / refresh
    expires_at: datetime
    revoked: bool = False


@dataclass(frozen=True)
class Delivery:
    """One notification sent to an app's callback: the last HTTP status (0: connection failed
    or no callback registered) after ``attempts`` tries; ``delivered`` when it was a 2xx."""

    app_id: str
    event: str
    event_id: str
    status: int
    attempts: int = 1

    @property
    def delivered(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class _Outgoing:
    """A row of the notification outbox: one event for one app, delivered at least once with
    the same ``event_id`` (the receiver acts on an id once)."""

    event_id: str
    app_id: str
    event: str
    url: str | None
    body: bytes
    headers: dict[str, str]
    attempts: int = 0
    status: int = 0
    state: str = "pending"  # pending / delivered / failed


def sign_notification(secret: str, body: bytes) -> str:
    """The ``X-Sandbox-Signature`` value for ``body``: ``sha256=`` + HMAC-SHA256 hex."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class SandboxOpenPlatform:
    """The open platform ``provider`` (``"wechat"`` or ``"qq"``) as an ASGI app (:attr:`asgi`).

    ``secret`` seeds the derivation of openids / unionids (HMAC-SHA256), so ids are stable for a
    given secret. Use :meth:`serve` to run it on loopback.
    """

    def __init__(
        self,
        provider: str,
        *,
        clock: Clock | None = None,
        secret: str = "sandbox",
        code_ttl: int = 600,
        access_ttl: int | None = None,
        refresh_ttl: int | None = None,
        retry_attempts: int = 5,
        retry_backoff: float = 0.05,
        retry_backoff_max: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if provider not in ("wechat", "qq"):
            raise ValueError(f"sandbox provider must be wechat or qq, not {provider!r}")
        self.provider = provider
        self.profile: ProviderProfile = WECHAT if provider == "wechat" else QQ
        self._clock: Clock = clock or SystemClock()
        self._secret = secret.encode("utf-8")
        self.code_ttl = code_ttl
        self.access_ttl = access_ttl or (7200 if provider == "wechat" else 7_776_000)
        self.refresh_ttl = refresh_ttl or (30 * 86400 if provider == "wechat" else 7_776_000)
        self._lock = threading.Lock()
        self.apps: dict[str, SandboxApp] = {}
        self.users: dict[str, SandboxUser] = {}
        self._pending: dict[str, dict[str, str]] = {}
        self._codes: dict[str, _Code] = {}
        self._tokens: dict[str, _Token] = {}
        self._authorized: dict[tuple[str, str], str] = {}  # (app, user) -> scope
        self.deliveries: list[Delivery] = []
        if retry_attempts < 1 or retry_backoff < 0:
            raise ValueError("retry_attempts must be >= 1 and retry_backoff >= 0")
        self.retry_attempts = retry_attempts
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self.sleep = sleep
        self.outbox: dict[str, _Outgoing] = {}
        self.asgi = self._build()

    # ------------------------------------------------------------------------ registration

    def register_app(self, app: SandboxApp) -> None:
        with self._lock:
            self.apps[app.app_id] = app

    def add_user(self, user: SandboxUser) -> None:
        with self._lock:
            self.users[user.key] = user

    def openid(self, app_id: str, user: str) -> str:
        """The user's id as app ``app_id`` sees it (WeChat: 28 chars from ``o``; QQ: 32 hex)."""
        mac = hmac.new(self._secret, f"openid|{app_id}|{user}".encode(), hashlib.sha256)
        if self.provider == "qq":
            return mac.hexdigest()[:32].upper()
        return "o" + base64.urlsafe_b64encode(mac.digest()).decode()[:27]

    def unionid(self, developer: str, user: str) -> str:
        """The user's id for every app of developer account ``developer``."""
        mac = hmac.new(self._secret, f"unionid|{developer}|{user}".encode(), hashlib.sha256)
        if self.provider == "qq":
            return "UID_" + mac.hexdigest()[:28].upper()
        return "o" + base64.urlsafe_b64encode(mac.digest()).decode()[:28]

    def serve(self) -> LoopbackServer:
        """Start serving on ``127.0.0.1`` (a free port); call ``.stop()`` on the result."""
        return LoopbackServer(self.asgi).start()

    # ------------------------------------------------------------------------ user actions

    def revoke_authorization(self, user: str, app_id: str) -> list[Delivery]:
        """The user withdraws ``app_id``'s authorisation: its tokens die and the app is told."""
        with self._lock:
            self._authorized.pop((app_id, user), None)
            for tok in self._tokens.values():
                if tok.user == user and tok.app_id == app_id:
                    tok.revoked = True
            app = self.apps.get(app_id)
        return [self._notify(app, user, "authorization_revoked")] if app else []

    def delete_account(self, user: str) -> list[Delivery]:
        """The user deletes the account: every app holding an authorisation is told."""
        with self._lock:
            if user in self.users:
                self.users[user].deleted = True
            apps = sorted({a for (a, u) in self._authorized if u == user})
            for a in apps:
                self._authorized.pop((a, user), None)
            for tok in self._tokens.values():
                if tok.user == user:
                    tok.revoked = True
            targets = [self.apps[a] for a in apps if a in self.apps]
        return [self._notify(app, user, "account_deleted") for app in targets]

    def _notify(self, app: SandboxApp, user: str, event: str) -> Delivery:
        """Put the event in the outbox and deliver it (see :meth:`deliver`)."""
        event_id = secrets.token_hex(8)
        body = json.dumps(
            {
                "event": event,
                "event_id": event_id,
                "provider": self.provider,
                "appid": app.app_id,
                "openid": self.openid(app.app_id, user),
                "unionid": self.unionid(app.developer, user),
                "at": self._clock.now().isoformat(),
            },
            separators=(",", ":"),
        ).encode("utf-8")
        headers = {
            "content-type": "application/json",
            "x-sandbox-signature": sign_notification(app.secret, body),
            "x-sandbox-event-id": event_id,
        }
        with self._lock:
            self.outbox[event_id] = _Outgoing(
                event_id, app.app_id, event, app.notify_url, body, headers
            )
        return self.deliver(event_id)

    def deliver(self, event_id: str) -> Delivery:
        """Deliver the outbox row ``event_id``: up to ``retry_attempts`` POSTs of the same signed
        body, waiting ``retry_backoff * 2**k`` seconds (capped at ``retry_backoff_max``) after the
        k-th failure (a non-2xx answer or a connection error). A row whose budget runs out is
        marked ``failed`` and kept: :meth:`undelivered` reports it, :meth:`redeliver` tries it
        again. A delivered row is not sent again. Raises ``KeyError`` for an unknown id."""
        with self._lock:
            row = self.outbox[event_id]
            if row.state == "delivered":
                return Delivery(row.app_id, row.event, row.event_id, row.status, row.attempts)
        tries = 0
        while row.url is not None and tries < self.retry_attempts:
            if tries:
                self.sleep(min(self.retry_backoff * 2 ** (tries - 1), self.retry_backoff_max))
            tries += 1
            try:
                status = httpx.post(row.url, content=row.body, headers=row.headers, timeout=10)
                code = status.status_code
            except httpx.HTTPError:
                code = 0
            with self._lock:
                row.attempts += 1
                row.status = code
                if 200 <= code < 300:
                    row.state = "delivered"
                    break
        with self._lock:
            if row.state != "delivered":
                row.state = "failed"
            delivery = Delivery(row.app_id, row.event, row.event_id, row.status, row.attempts)
            self.deliveries.append(delivery)
        return delivery

    def undelivered(self) -> list[Delivery]:
        """Outbox rows whose delivery budget ran out (none is dropped)."""
        with self._lock:
            return [
                Delivery(r.app_id, r.event, r.event_id, r.status, r.attempts)
                for r in self.outbox.values()
                if r.state == "failed"
            ]

    def redeliver(self) -> list[Delivery]:
        """Try every failed outbox row again (a fresh budget each); returns the outcomes."""
        return [self.deliver(d.event_id) for d in self.undelivered()]

    # ------------------------------------------------------------------------ HTTP

    def _error(self, code: int, message: str, *, qq_kind: str = "token") -> JSONResponse:
        if self.provider == "wechat":
            return JSONResponse({"errcode": code, "errmsg": message})
        if qq_kind == "openapi":
            return JSONResponse({"ret": code, "msg": message})
        return JSONResponse({"error": code, "error_description": message})

    def _check_client(self, app_id: str | None, secret: str | None) -> SandboxApp | None:
        app = self.apps.get(app_id or "")
        if app is None or secret is None or not constant_time_equals(secret, app.secret):
            return None
        return app

    def _live_token(self, token: str | None, kind: str = "access") -> _Token | None:
        tok = self._tokens.get(token or "")
        if tok is None or tok.kind != kind or tok.revoked:
            return None
        if tok.expires_at <= self._clock.now():
            return None
        if (tok.app_id, tok.user) not in self._authorized:
            return None
        return tok

    def _build(self) -> Starlette:
        p = self.profile
        routes = [
            Route(p.authorize_path, self._authorize, methods=["GET"]),
            Route("/sandbox/consent", self._consent, methods=["POST"]),
            Route(p.userinfo_path, self._userinfo, methods=["GET"]),
            Route("/sandbox/oauth2/revoke", self._revoke, methods=["POST"]),
            Route("/sandbox/users/{user}/revoke", self._user_revoke, methods=["POST"]),
            Route("/sandbox/users/{user}/delete", self._user_delete, methods=["POST"]),
            Route("/sandbox/avatar/{name}.png", self._avatar, methods=["GET"]),
        ]
        if self.provider == "wechat":
            routes.append(Route(p.token_path, self._token, methods=["GET"]))
            routes.append(Route(p.refresh_path, self._token, methods=["GET"]))
        else:
            routes.append(Route(p.token_path, self._token, methods=["GET", "POST"]))
            routes.append(Route(str(p.me_path), self._me, methods=["GET"]))
        return Starlette(routes=routes)

    async def _params(self, request: Request) -> dict[str, str]:
        params = dict(request.query_params)
        if request.method == "POST":
            form = await request.form()
            params.update({k: str(v) for k, v in form.items()})
        return params

    async def _authorize(self, request: Request) -> Response:
        q = dict(request.query_params)
        app_id = q.get("appid") or q.get("client_id") or ""
        with self._lock:
            app = self.apps.get(app_id)
        if app is None:
            return HTMLResponse(f"<p>errcode 40013: invalid appid {html.escape(app_id)}</p>", 400)
        redirect_uri = q.get("redirect_uri", "")
        if redirect_uri not in app.redirect_uris:
            return HTMLResponse("<p>errcode 10003: redirect_uri mismatch</p>", 400)
        if q.get("response_type") != "code":
            return HTMLResponse("<p>errcode 10004: response_type must be code</p>", 400)
        scope = q.get("scope") or self.profile.default_scope
        challenge = q.get("code_challenge")
        method = q.get("code_challenge_method", "plain" if challenge else None)
        if app.require_pkce and not challenge:
            return HTMLResponse("<p>errcode 40248: this app requires PKCE</p>", 400)
        if method not in (None, "plain", "S256"):
            return HTMLResponse("<p>errcode 40248: unsupported code_challenge_method</p>", 400)
        request_id = secrets.token_urlsafe(16)
        pending = {
            "app_id": app_id,
            "redirect_uri": redirect_uri,
            "scope": scope,
            "state": q.get("state", ""),
            "challenge": challenge or "",
            "method": method or "",
        }
        with self._lock:
            self._pending[request_id] = pending
        body = (
            f"<html><body><h1>{html.escape(self.provider)} sandbox login</h1>"
            f"<p>{html.escape(app_id)} asks for {html.escape(scope)}</p>"
            '<form method="post" action="/sandbox/consent">'
            f'<input type="hidden" name="request_id" value="{request_id}">'
            '<input name="user"><button name="decision" value="allow">Allow</button>'
            '<button name="decision" value="deny">Deny</button></form></body></html>'
        )
        return HTMLResponse(body)

    async def _consent(self, request: Request) -> Response:
        form = await self._params(request)
        with self._lock:
            pending = self._pending.pop(form.get("request_id", ""), None)
            user = self.users.get(form.get("user", ""))
        if pending is None:
            return HTMLResponse("<p>unknown or used authorization request</p>", 400)
        if user is None or user.deleted:
            return HTMLResponse("<p>unknown user</p>", 400)
        query: dict[str, str] = {"state": pending["state"]}
        if form.get("decision") == "allow":
            code = secrets.token_urlsafe(24)
            with self._lock:
                self._codes[code] = _Code(
                    app_id=pending["app_id"],
                    user=user.key,
                    redirect_uri=pending["redirect_uri"],
                    scope=pending["scope"],
                    challenge=pending["challenge"] or None,
                    method=pending["method"] or None,
                    expires_at=self._clock.now() + timedelta(seconds=self.code_ttl),
                )
            query = {"code": code, **query}
        return RedirectResponse(f"{pending['redirect_uri']}?{urlencode(query)}", status_code=302)

    async def _token(self, request: Request) -> Response:
        q = await self._params(request)
        if self.provider == "wechat":
            app_id, secret = q.get("appid"), q.get("secret")
        else:
            app_id, secret = q.get("client_id"), q.get("client_secret")
        grant_type = q.get("grant_type")
        with self._lock:
            if grant_type == "refresh_token":
                return self._refresh(q, app_id)
            app = self._check_client(app_id, secret)
            if app is None:
                return self._error(40125 if self.provider == "wechat" else 100016, "invalid app")
            if grant_type != "authorization_code":
                return self._error(40002 if self.provider == "wechat" else 100005, "grant_type")
            code = self._codes.get(q.get("code", ""))
            if code is None or code.app_id != app.app_id:
                return self._error(40029 if self.provider == "wechat" else 100019, "invalid code")
            if code.used:
                for t in code.tokens:  # RFC 6749 4.1.2: revoke what the code produced
                    self._tokens[t].revoked = True
                return self._error(40163 if self.provider == "wechat" else 100019, "code been used")
            if code.expires_at <= self._clock.now():
                return self._error(42003 if self.provider == "wechat" else 100020, "code expired")
            if self.provider == "qq" and q.get("redirect_uri") != code.redirect_uri:
                return self._error(100010, "redirect uri is illegal")
            if code.challenge is not None:
                verifier = q.get("code_verifier", "")
                expected = verifier if code.method == "plain" else _s256(verifier)
                if not verifier or not constant_time_equals(expected, code.challenge):
                    code.used = True
                    return self._error(40248 if self.provider == "wechat" else 100021, "pkce")
            code.used = True
            self._authorized[(app.app_id, code.user)] = code.scope
            access, refresh = self._issue(app.app_id, code.user, code.scope)
            code.tokens.extend([access, refresh])
            return JSONResponse(self._token_body(app, code.user, code.scope, access, refresh))

    def _issue(self, app_id: str, user: str, scope: str) -> tuple[str, str]:
        now = self._clock.now()
        access = secrets.token_urlsafe(32)
        refresh = secrets.token_urlsafe(32)
        self._tokens[access] = _Token(
            app_id, user, scope, "access", now + timedelta(seconds=self.access_ttl)
        )
        self._tokens[refresh] = _Token(
            app_id, user, scope, "refresh", now + timedelta(seconds=self.refresh_ttl)
        )
        return access, refresh

    def _token_body(
        self, app: SandboxApp, user: str, scope: str, access: str, refresh: str
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "access_token": access,
            "expires_in": self.access_ttl,
            "refresh_token": refresh,
        }
        if self.provider == "wechat":
            body.update(
                openid=self.openid(app.app_id, user),
                scope=scope,
                unionid=self.unionid(app.developer, user),
            )
        return body

    def _refresh(self, q: dict[str, str], app_id: str | None) -> Response:
        app = self.apps.get(app_id or "")
        if app is None:
            return self._error(40013 if self.provider == "wechat" else 100016, "invalid appid")
        if self.provider == "qq" and self._check_client(app_id, q.get("client_secret")) is None:
            return self._error(100016, "invalid app")
        old = self._live_token(q.get("refresh_token"), "refresh")
        if old is None or old.app_id != app.app_id:
            return self._error(40030 if self.provider == "wechat" else 100015, "refresh_token")
        access = secrets.token_urlsafe(32)
        self._tokens[access] = _Token(
            app.app_id,
            old.user,
            old.scope,
            "access",
            self._clock.now() + timedelta(seconds=self.access_ttl),
        )
        return JSONResponse(
            self._token_body(app, old.user, old.scope, access, q.get("refresh_token", ""))
        )

    async def _me(self, request: Request) -> Response:
        with self._lock:
            tok = self._live_token(request.query_params.get("access_token"))
            if tok is None:
                return self._error(100016, "access token check failed")
            app = self.apps[tok.app_id]
            body: dict[str, Any] = {
                "client_id": app.app_id,
                "openid": self.openid(app.app_id, tok.user),
            }
            if request.query_params.get("unionid") == "1":
                body["unionid"] = self.unionid(app.developer, tok.user)
            return JSONResponse(body)

    async def _userinfo(self, request: Request) -> Response:
        q = dict(request.query_params)
        base = str(request.base_url).rstrip("/")
        with self._lock:
            tok = self._live_token(q.get("access_token"))
            if tok is None:
                return self._error(
                    42001 if self.provider == "wechat" else 100016,
                    "access_token invalid or expired",
                    qq_kind="openapi",
                )
            app = self.apps[tok.app_id]
            openid = self.openid(app.app_id, tok.user)
            if not constant_time_equals(q.get("openid", ""), openid):
                return self._error(
                    40003 if self.provider == "wechat" else 100048,
                    "invalid openid",
                    qq_kind="openapi",
                )
            if self.provider == "qq" and q.get("oauth_consumer_key") != app.app_id:
                return self._error(100007, "oauth_consumer_key", qq_kind="openapi")
            user = self.users[tok.user]
            avatar = f"{base}/sandbox/avatar/{openid}"
            if self.provider == "wechat":
                return JSONResponse(
                    {
                        "openid": openid,
                        "nickname": user.nickname,
                        "sex": 1 if user.gender == "男" else 2,
                        "province": "",
                        "city": "",
                        "country": "CN",
                        "headimgurl": f"{avatar}.png",
                        "privilege": [],
                        "unionid": self.unionid(app.developer, tok.user),
                    }
                )
            return JSONResponse(
                {
                    "ret": 0,
                    "msg": "",
                    "nickname": user.nickname,
                    "gender": user.gender,
                    "figureurl": f"{avatar}.png?s=30",
                    "figureurl_1": f"{avatar}.png?s=50",
                    "figureurl_2": f"{avatar}.png?s=100",
                    "figureurl_qq_1": f"{avatar}.png?s=40",
                    "figureurl_qq_2": f"{avatar}.png?s=100",
                }
            )

    async def _revoke(self, request: Request) -> Response:
        q = await self._params(request)
        app_id, secret = q.get("client_id"), q.get("client_secret")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            try:
                app_id, _, secret = base64.b64decode(auth[6:]).decode("utf-8").partition(":")
            except ValueError:
                return JSONResponse({"error": "invalid_client"}, 401)
        with self._lock:
            app = self._check_client(app_id, secret)
            if app is None:
                return JSONResponse({"error": "invalid_client"}, 401)
            if not q.get("token"):
                return JSONResponse({"error": "invalid_request"}, 400)
            hint = q.get("token_type_hint")
            if hint not in (None, "", "access_token", "refresh_token"):
                return JSONResponse({"error": "unsupported_token_type"}, 400)
            tok = self._tokens.get(q["token"])
            # RFC 7009 2.1: a token issued to another client is refused and stays valid
            if tok is not None and tok.app_id != app.app_id:
                return JSONResponse({"error": "unauthorized_client"}, 400)
            # RFC 7009 2.2: an invalid or unknown token is answered 200 as well
            if tok is not None:
                tok.revoked = True
                if tok.kind == "refresh":  # the grant goes with its refresh token
                    self._authorized.pop((tok.app_id, tok.user), None)
                    for other in self._tokens.values():
                        if other.app_id == tok.app_id and other.user == tok.user:
                            other.revoked = True
        return Response(status_code=200)

    async def _user_revoke(self, request: Request) -> Response:
        q = await self._params(request)
        user = request.path_params["user"]
        if q.get("app_id") not in self.apps or user not in self.users:
            return JSONResponse({"error": "unknown user or app"}, 404)
        out = await anyio.to_thread.run_sync(self.revoke_authorization, user, q["app_id"])
        return JSONResponse({"deliveries": [d.__dict__ for d in out]})

    async def _user_delete(self, request: Request) -> Response:
        user = request.path_params["user"]
        if user not in self.users:
            return JSONResponse({"error": "unknown user"}, 404)
        out = await anyio.to_thread.run_sync(self.delete_account, user)
        return JSONResponse({"deliveries": [d.__dict__ for d in out]})

    async def _avatar(self, request: Request) -> Response:
        from PIL import Image

        name = request.path_params["name"]
        rgb = hashlib.sha256(name.encode("utf-8")).digest()[:3]
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (rgb[0], rgb[1], rgb[2])).save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png")

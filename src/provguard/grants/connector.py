"""The login connector: runs the OAuth 2.0 authorization-code flow (RFC 6749 section 4.1, with
PKCE, RFC 7636) against a provider with Authlib's client and records what it receives.

``begin`` makes the authorization URL (fresh ``state`` and PKCE verifier, stored with the state's
digest and the verifier encrypted); ``complete`` takes the callback URL, checks ``state`` (known,
unused, unexpired, for this app — consumed atomically, so a replayed callback fails), exchanges the
code (Authlib ``OAuth2Client.fetch_token`` with the verifier), reads the subject ids and the
profile, and stores the grant, its tokens (encrypted) and every profile value with its provenance
label (origin = the provider, grants = this grant) in one transaction.

Provider quirks are Authlib compliance hooks: WeChat's token endpoint is a ``GET`` with ``appid``
and ``secret`` and answers errors as HTTP 200 ``{"errcode", "errmsg"}``; QQ needs ``fmt=json`` and
a separate ``/oauth2.0/me`` call for ``openid`` / ``unionid``.

Every refusal raises a :class:`~provguard.grants.errors.GrantInputError` subclass, is appended
to the audit log as ``grant.refused`` (code, reason; never a token or code) and writes nothing
to the registry.
"""

from __future__ import annotations

import json
import logging
import secrets
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import httpx

with warnings.catch_warnings():  # Authlib 1.9 warns that its httpx integration will move
    import authlib.deprecate  # noqa: F401  (installs an "always" filter: override it below)

    warnings.simplefilter("ignore")
    from authlib.integrations.httpx_client import OAuth2Client, OAuthError

from provguard.clock import Clock, SystemClock
from provguard.grants.crypto import new_token
from provguard.grants.errors import (
    CodeReplayError,
    ExpiredGrantError,
    GrantInputError,
    PkceError,
    ProviderError,
    StateMismatchError,
)
from provguard.grants.model import AuditSink, GrantRecord, IssuedToken, LabelledValue
from provguard.grants.params import single_valued
from provguard.grants.providers import ProviderProfile
from provguard.provenance import OriginRegistry

if TYPE_CHECKING:
    from provguard.adapters.grant_store import SqlGrantStore

log = logging.getLogger("provguard.grants")


class _RedactQuery(logging.Filter):
    """httpx logs each request URL at INFO; WeChat's token and userinfo calls carry the app
    secret, the code and the access token in the query. This filter drops query strings."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                str(a.copy_with(query=None)) + "?<redacted>"
                if isinstance(a, httpx.URL) and a.query
                else a
                for a in record.args
            )
        return True


_httpx_log = logging.getLogger("httpx")
if not any(isinstance(f, _RedactQuery) for f in _httpx_log.filters):
    _httpx_log.addFilter(_RedactQuery())

_REPLAY = {"40163", "100019-used"}
_PKCE = {"40248", "100021"}


@dataclass(frozen=True)
class ClientCredentials:
    """The client app's registration at the provider: id, secret, registered redirect URI."""

    app_id: str
    secret: str
    redirect_uri: str

    def __repr__(self) -> str:
        return f"ClientCredentials(app_id={self.app_id!r}, secret=<hidden>)"


@dataclass(frozen=True)
class LoginResult:
    """A completed sign-in: the stored grant, the values received, and the app session token
    provguard issued to the client app for this grant (shown once, stored encrypted)."""

    grant: GrantRecord
    values: tuple[LabelledValue, ...]
    session_token: str

    def __repr__(self) -> str:
        return (
            f"LoginResult(grant={self.grant!r}, values={len(self.values)}, session_token=<hidden>)"
        )


def refuse(audit: AuditSink, exc: GrantInputError, **context: object) -> None:
    """Log and audit a refusal (``grant.refused``); context must hold no secret."""
    payload = {"code": exc.code, "error": type(exc).__name__, "reason": exc.message, **context}
    log.warning("refused [%s] %s %s", exc.code, exc.message, context)
    audit.append("grant.refused", payload)


def _wechat_errors(resp: httpx.Response) -> httpx.Response:
    """Authlib compliance hook: WeChat's ``{"errcode", "errmsg"}`` as an OAuth error body."""
    try:
        body = resp.json()
    except ValueError:
        return resp
    if isinstance(body, dict) and body.get("errcode"):
        return httpx.Response(
            400,
            json={"error": str(body["errcode"]), "error_description": body.get("errmsg", "")},
            request=resp.request,
        )
    return resp


class LoginConnector:
    """Sign-in with ``provider`` for one client app.

    ``base_url``: the provider's origin (the sandbox's ``http://127.0.0.1:port`` or the real
    platform's). ``session_ttl``: seconds a ``state`` stays valid. ``token_ttl``: lifetime of the
    app session token (seconds).
    """

    def __init__(
        self,
        provider: ProviderProfile,
        base_url: str,
        credentials: ClientCredentials,
        store: SqlGrantStore,
        audit: AuditSink,
        *,
        registry: OriginRegistry | None = None,
        clock: Clock | None = None,
        session_ttl: int = 600,
        token_ttl: int = 7200,
    ) -> None:
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self.credentials = credentials
        self.store = store
        self.audit = audit
        self.registry = registry or OriginRegistry()
        self.clock: Clock = clock or SystemClock()
        self.session_ttl = session_ttl
        self.token_ttl = token_ttl

    def _client(self) -> OAuth2Client:
        c = self.credentials
        client = OAuth2Client(
            client_id=c.app_id,
            client_secret=c.secret,
            redirect_uri=c.redirect_uri,
            scope=self.provider.default_scope,
            code_challenge_method="S256",
            token_endpoint_auth_method="none"
            if self.provider.token_method == "GET"
            else "client_secret_post",
            timeout=10.0,
        )
        if self.provider.name == "wechat":
            client.register_compliance_hook("access_token_response", _wechat_errors)
        return client

    def begin(self) -> str:
        """The authorization URL to send the user's browser to (``state`` and PKCE stored)."""
        state = secrets.token_urlsafe(24)
        verifier = secrets.token_urlsafe(48)  # RFC 7636: 43..128 characters
        now = self.clock.now()
        self.store.save_login_session(
            state,
            provider=self.provider.name,
            app_id=self.credentials.app_id,
            redirect_uri=self.credentials.redirect_uri,
            code_verifier=verifier,
            created_at=now,
            expires_at=now + timedelta(seconds=self.session_ttl),
        )
        with self._client() as client:
            extra = {"appid": self.credentials.app_id} if self.provider.name == "wechat" else {}
            url, _ = client.create_authorization_url(
                self.base_url + self.provider.authorize_path,
                state=state,
                code_verifier=verifier,
                **extra,
            )
        return str(url)

    def complete(self, callback_url: str) -> LoginResult:
        """Finish the flow from the callback URL the provider redirected to.

        Raises :class:`StateMismatchError` (missing / unknown / used / expired state),
        :class:`CodeReplayError`, :class:`PkceError`, :class:`ProviderError`; each refusal is
        audited and nothing is stored.
        """
        try:
            return self._complete(callback_url)
        except GrantInputError as exc:
            refuse(self.audit, exc, provider=self.provider.name, app=self.credentials.app_id)
            raise

    def _complete(self, callback_url: str) -> LoginResult:
        # RFC 6749 section 3.1: a response parameter given twice is refused, never last-wins
        query = single_valued(parse_qsl(urlsplit(callback_url).query, keep_blank_values=True))
        state = query.get("state")
        if not state:
            raise StateMismatchError("callback without 'state'")
        now = self.clock.now()
        session = self.store.consume_login_session(state, now)
        if (
            session["app_id"] != self.credentials.app_id
            or session["provider"] != self.provider.name
        ):
            raise StateMismatchError("OAuth state was issued for another app or provider")
        code = query.get("code")
        if not code:
            raise ProviderError(
                f"authorization refused at the provider: {query.get('error') or 'no code'}"
            )
        with self._client() as client:
            token = self._fetch_token(client, code, session["code_verifier"])
            openid, unionid = self._subject_ids(client, token)
            profile = self._userinfo(client, token["access_token"], openid)
        now = self.clock.now()
        existing = self.store.grant_by_openid(self.provider.name, self.credentials.app_id, openid)
        grant = GrantRecord(
            grant_id=existing.grant_id if existing else secrets.token_hex(16),
            provider=self.provider.name,
            app_id=self.credentials.app_id,
            openid=openid,
            unionid=unionid,
            scopes=str(token.get("scope") or self.provider.default_scope),
            granted_at=existing.granted_at if existing else now,
        )
        received = {"openid": openid, "unionid": unionid, **profile}
        mask = self.registry.mask([self.provider.name])
        values = tuple(
            LabelledValue(
                value_id=secrets.token_hex(16),
                category=self.provider.category_of(name),
                field=name,
                value=v if isinstance(v, str) else json.dumps(v, ensure_ascii=False),
                origin_mask=mask,
                grants=frozenset({grant.grant_id}),
                received_at=now,
            )
            for name, v in sorted(received.items())
            if name not in ("ret", "msg")
        )
        expires = now + timedelta(seconds=int(token.get("expires_in", 7200)))
        session_token = new_token("pgs")
        tokens = [
            IssuedToken("access", str(token["access_token"]), expires),
            IssuedToken("app_session", session_token, now + timedelta(seconds=self.token_ttl)),
        ]
        if token.get("refresh_token"):
            tokens.append(
                IssuedToken("refresh", str(token["refresh_token"]), now + timedelta(days=30))
            )
        stored = self.store.record_login(grant, tokens, values, now)
        log.info(
            "grant %s recorded: %s values from %s", stored.grant_id, len(values), grant.provider
        )
        return LoginResult(stored, values, session_token)

    def _fetch_token(self, client: OAuth2Client, code: str, verifier: str) -> dict[str, Any]:
        url = self.base_url + self.provider.token_path
        try:
            if self.provider.token_method == "GET":
                token = client.fetch_token(
                    url,
                    method="GET",
                    grant_type="authorization_code",
                    code=code,
                    code_verifier=verifier,
                    appid=self.credentials.app_id,
                    secret=self.credentials.secret,
                )
            else:
                token = client.fetch_token(
                    url,
                    grant_type="authorization_code",
                    code=code,
                    code_verifier=verifier,
                    fmt="json",
                )
        except OAuthError as exc:
            error = str(exc.error)
            desc = exc.description or ""
            if error in _REPLAY or "used" in desc:
                raise CodeReplayError(f"authorization code already used ({error})") from None
            if error in _PKCE:
                raise PkceError(f"provider rejected the PKCE code_verifier ({error})") from None
            raise ProviderError(f"token request refused: {error} {desc}".strip(), error) from None
        except httpx.HTTPError as exc:
            raise ProviderError(f"provider unreachable: {type(exc).__name__}") from None
        if "access_token" not in token:
            raise ProviderError("token response without access_token")
        return dict(token)

    def _get(self, client: OAuth2Client, path: str, params: dict[str, str]) -> dict[str, Any]:
        try:
            resp = client.request("GET", self.base_url + path, params=params, withhold_token=True)
            body = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ProviderError(f"provider call {path} failed: {type(exc).__name__}") from None
        if not isinstance(body, dict):
            raise ProviderError(f"provider call {path}: unexpected answer")
        err = body.get("errcode") or body.get("error") or body.get("ret")
        if err:
            msg = body.get("errmsg") or body.get("error_description") or body.get("msg") or ""
            raise ProviderError(f"provider call {path} refused: {err} {msg}".strip(), str(err))
        return body

    def _subject_ids(self, client: OAuth2Client, token: dict[str, Any]) -> tuple[str, str]:
        if self.provider.me_path is None:
            openid, unionid = token.get("openid"), token.get("unionid")
        else:
            me = self._get(
                client,
                self.provider.me_path,
                {"access_token": token["access_token"], "unionid": "1", "fmt": "json"},
            )
            openid, unionid = me.get("openid"), me.get("unionid")
        if not openid or not unionid:
            raise ProviderError("provider returned no openid / unionid")
        return str(openid), str(unionid)

    def _userinfo(self, client: OAuth2Client, access: str, openid: str) -> dict[str, Any]:
        params = {"access_token": access, "openid": openid}
        if self.provider.name == "qq":
            params["oauth_consumer_key"] = self.credentials.app_id
        else:
            params["lang"] = "zh_CN"
        return self._get(client, self.provider.userinfo_path, params)

    def refresh(self, grant_id: str) -> datetime:
        """Renew the grant's provider access token with its refresh token (RFC 6749 section 6;
        WeChat ``GET /sns/oauth2/refresh_token?appid&grant_type=refresh_token&refresh_token``,
        QQ ``GET /oauth2.0/token?grant_type=refresh_token&client_id&client_secret&refresh_token
        &fmt=json``). The new access token replaces the old one in the store (encrypted); a
        refresh token the provider returns replaces the stored one, keeping its expiry.

        Returns the new access token's expiry (UTC, from the injectable clock + ``expires_in``
        seconds). Raises :class:`ExpiredGrantError` when the grant is not active, has no refresh
        token or the refresh token expired (checked on the clock before any call), and
        :class:`ProviderError` when the provider refuses; each refusal is audited and changes
        nothing in the store.
        """
        try:
            return self._refresh(grant_id)
        except GrantInputError as exc:
            refuse(
                self.audit,
                exc,
                door="refresh",
                provider=self.provider.name,
                app=self.credentials.app_id,
                grant=grant_id,
            )
            raise

    def _refresh(self, grant_id: str) -> datetime:
        now = self.clock.now()
        grant = self.store.grant(grant_id)
        if grant is None or grant.status != "active":
            raise ExpiredGrantError(f"grant {grant_id} is not active here")
        if grant.app_id != self.credentials.app_id or grant.provider != self.provider.name:
            raise ExpiredGrantError(f"grant {grant_id} belongs to another app or provider")
        refresh = self.store.token_secret(grant_id, "refresh")
        if refresh is None:
            raise ExpiredGrantError(f"grant {grant_id} holds no refresh token")
        held = self.store.find_token(refresh, now, kinds=("refresh",))  # expiry, constant time
        params = {"grant_type": "refresh_token", "refresh_token": refresh}
        if self.provider.name == "wechat":
            params["appid"] = self.credentials.app_id
        else:
            params.update(
                client_id=self.credentials.app_id,
                client_secret=self.credentials.secret,
                fmt="json",
            )
        with self._client() as client:
            body = self._get(client, self.provider.refresh_path, params)
        access = body.get("access_token")
        if not access:
            raise ProviderError("refresh response without access_token")
        now = self.clock.now()
        expires = now + timedelta(seconds=int(body.get("expires_in", 7200)))
        self.store.rotate_token(grant_id, IssuedToken("access", str(access), expires), now)
        new_refresh = body.get("refresh_token")
        if new_refresh and str(new_refresh) != refresh:
            self.store.rotate_token(
                grant_id, IssuedToken("refresh", str(new_refresh), held.expires_at), now
            )
        log.info("grant %s: provider access token refreshed", grant_id)
        return expires

    def revoke_at_provider(self, grant_id: str) -> bool:
        """RFC 7009: revoke the grant's refresh token at the provider (Authlib
        ``revoke_token``). Returns True when the provider answered 200."""
        refresh = self.store.token_secret(grant_id, "refresh")
        if refresh is None:
            return False
        with self._client() as client:
            client.revocation_endpoint_auth_method = "client_secret_post"
            resp = client.revoke_token(
                self.base_url + self.provider.revoke_path,
                token=refresh,
                token_type_hint="refresh_token",
            )
        return bool(resp.status_code == 200)

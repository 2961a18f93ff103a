"""Dashboard sessions: a signed session cookie that is not the API key.

Signing in at ``/dashboard/login`` with an auditor key sets the cookie :data:`SESSION_COOKIE`::

    provguard_session = base64url(payload) "." base64url(HMAC-SHA256(secret, base64url(payload)))
    payload = {"d": SHA-256 hex of the key, "exp": expiry (Unix seconds), "sid": 128 random bits}

(the construction of a JWS compact token with ``HS256``, RFC 7515 / RFC 7518 section 3.2,
without the header). The cookie is ``HttpOnly``, ``SameSite=Strict``, ``Path=/dashboard`` and
lives :data:`DEFAULT_SESSION_SECONDS` (8 h; ``Max-Age``): the browser sends it to the dashboard
pages only, and only the dashboard routes read it -- ``/v1`` accepts API keys in headers, never
a cookie. A session is accepted while its signature verifies, it has not expired, it was not
logged out, and the key it was opened with is still an active auditor key of the key file (a
revoked key ends its sessions at the next request). The key itself never leaves the login
request.

The HMAC secret is ``ServiceSettings.session_secret`` (hex; ``provguard serve --workers N``
gives all workers one random secret) or, without one, 32 random bytes per process: a restart
ends every session. Logging out (``GET`` or ``POST /dashboard/logout``) deletes the cookie and
refuses that session id in this process until it expires; with several workers another worker
would still accept a copy of the cookie until then (the browser no longer has it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable

from provguard.service.auth import ApiKeys, Client, hash_key

__all__ = ["DEFAULT_SESSION_SECONDS", "SESSION_COOKIE", "DashboardSessions"]

SESSION_COOKIE = "provguard_session"
"""Name of the dashboard's session cookie."""

LEGACY_KEY_COOKIE = "provguard_key"
"""The cookie earlier versions set (it held the raw API key); the login and logout delete it."""

DEFAULT_SESSION_SECONDS = 8 * 3600
"""Lifetime of a dashboard session, seconds (absolute, from sign-in)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class DashboardSessions:
    """Issues and checks dashboard session cookies (see the module docstring).

    ``secret``: the HMAC key (at least 16 bytes; ``None``: 32 random bytes);
    ``lifetime``: seconds a session lives; ``clock``: Unix seconds now (tests)."""

    def __init__(
        self,
        secret: bytes | None = None,
        *,
        lifetime: int = DEFAULT_SESSION_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if secret is not None and len(secret) < 16:
            raise ValueError("a session secret needs at least 16 bytes")
        if lifetime <= 0:
            raise ValueError("a session lifetime must be positive")
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self.lifetime = lifetime
        self._clock = clock
        self._ended: dict[str, float] = {}  # logged-out session id -> its expiry
        self._lock = threading.Lock()

    @classmethod
    def from_hex(
        cls, secret: str | None, *, lifetime: int = DEFAULT_SESSION_SECONDS
    ) -> DashboardSessions:
        """Sessions keyed by the hex string ``secret`` (``None``: a random key). Raises
        ValueError for a secret that is not hex or shorter than 16 bytes."""
        return cls(bytes.fromhex(secret) if secret else None, lifetime=lifetime)

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._secret, body.encode("ascii"), hashlib.sha256).digest())

    def issue(self, key: str) -> str:
        """A new session cookie value for the (already checked) auditor ``key``."""
        payload = {
            "d": hash_key(key),
            "exp": int(self._clock()) + self.lifetime,
            "sid": secrets.token_hex(16),
        }
        body = _b64(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("ascii"))
        return f"{body}.{self._sign(body)}"

    def _payload(self, cookie: str | None) -> dict[str, object] | None:
        """The verified, unexpired payload of ``cookie``, else ``None``."""
        if not cookie or len(cookie) > 512 or not cookie.isascii() or cookie.count(".") != 1:
            return None
        body, signature = cookie.split(".")
        if not hmac.compare_digest(signature, self._sign(body)):
            return None
        try:
            payload = json.loads(_unb64(body))
        except ValueError:
            return None
        if not isinstance(payload, dict):
            return None
        expiry, sid = payload.get("exp"), payload.get("sid")
        if not isinstance(expiry, int) or not isinstance(sid, str):
            return None
        if expiry <= self._clock():
            return None
        with self._lock:
            if sid in self._ended:
                return None
        return payload

    def client(self, cookie: str | None, keys: ApiKeys) -> Client | None:
        """The auditor :class:`Client` of a valid session ``cookie``, or ``None``: bad
        signature, expired, logged out, or its key is no longer an active auditor key."""
        payload = self._payload(cookie)
        if payload is None:
            return None
        digest = payload.get("d")
        if not isinstance(digest, str):
            return None
        found = keys.lookup_digest(digest)
        return found if found is not None and found.is_auditor else None

    def end(self, cookie: str | None) -> bool:
        """Log the session of ``cookie`` out (refused from now on in this process); False if
        it was not a valid session."""
        payload = self._payload(cookie)
        if payload is None:
            return False
        now = self._clock()
        expiry, sid = payload["exp"], payload["sid"]
        assert isinstance(expiry, int) and isinstance(sid, str)
        with self._lock:
            for old in [s for s, e in self._ended.items() if e <= now]:
                del self._ended[old]
            self._ended[sid] = expiry
        return True

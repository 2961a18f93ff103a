"""Masking of sensitive values before they enter the audit log.

An audit entry must show *that* a token was exchanged or a handle was displayed, not the token or
the handle itself. :class:`Masker` returns a masked **copy** of a payload (the caller's object is
never modified, so what the caller gets back -- a decision, an exchanged token -- is unchanged):

* a value under a key in ``keys`` (case-insensitive, at any depth, e.g. ``access_token``) is
  replaced, whatever its type;
* any string anywhere whose text matches one of ``patterns`` (e.g. ``Bearer ...``) is replaced;
* except: a provguard error code (a string that is exactly ``PG`` + three digits, e.g. ``PG150``)
  under one of :data:`ERROR_CODE_KEYS` (``code``) is kept. ``code`` is both the OAuth 2.0
  authorization code (RFC 6749 section 4.1.2, a credential: masked) and the error code of a
  refusal (``grant.refused`` entries: ``{"code": "PG150", ...}``, evidence: kept). An
  authorization code is an opaque provider string (WeChat's are 32 characters), never of that
  shape. Entries written before this rule read ``"code": "masked"``; they stay as stored (their
  hashes chain over the stored text) and verify unchanged.

Replacement: with a ``secret`` (bytes), ``"masked:hmac-sha256:" + HMAC-SHA256(secret, value)``
truncated to 16 hex digits (RFC 2104), so two entries about the same token can be linked without
revealing it (an unkeyed hash of a handle would be reversible by a dictionary attack); without a
secret, the constant ``"masked"``. The value hashed is the canonical JSON of the original.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from provguard.audit.chain import canonical_json

__all__ = [
    "DEFAULT_SECRET_KEYS",
    "ERROR_CODE",
    "ERROR_CODE_KEYS",
    "HANDLE_KEYS",
    "MASK_PREFIX",
    "Masker",
]

DEFAULT_SECRET_KEYS: frozenset[str] = frozenset(
    {
        "access_token",
        "api_key",
        "authorization",
        "client_secret",
        "code",
        "id_token",
        "password",
        "refresh_token",
        "secret",
        "session_key",
        "token",
    }
)
"""Keys whose values are credentials: always masked by the default :class:`Masker`."""

HANDLE_KEYS: frozenset[str] = frozenset(
    {"handle", "nickname", "provider_handle", "shown_handle", "avatar_url", "headimgurl"}
)
"""Raw profile values, masked when a deployment asks for ``mask_handles``."""

ERROR_CODE_KEYS: frozenset[str] = frozenset({"code"})
"""Secret keys whose value is kept when it is a provguard error code (:data:`ERROR_CODE`)."""

ERROR_CODE = re.compile(r"PG[0-9]{3}")
"""The shape of a provguard error code (:mod:`provguard.errors`), matched in full."""

_BEARER = re.compile(r"(?i)^\s*bearer\s+\S+")
MASK_PREFIX = "masked"


@dataclass(frozen=True)
class Masker:
    """Masks payloads: see the module docstring. ``keys`` are compared lower-cased;
    ``keep_error_codes`` (default on) keeps a provguard error code under ``code``."""

    keys: frozenset[str] = DEFAULT_SECRET_KEYS
    patterns: tuple[re.Pattern[str], ...] = (_BEARER,)
    secret: bytes | None = field(default=None, repr=False)
    keep_error_codes: bool = True

    def _secret_key(self, key: object, value: object) -> bool:
        """True when ``value`` under ``key`` is to be replaced because of its key."""
        if not isinstance(key, str):
            return False
        low = key.lower()
        if low not in self.keys:
            return False
        return not (
            self.keep_error_codes
            and low in ERROR_CODE_KEYS
            and isinstance(value, str)
            and ERROR_CODE.fullmatch(value) is not None
        )

    @classmethod
    def for_deployment(
        cls,
        *,
        mask_handles: bool = False,
        extra_keys: Iterable[str] = (),
        secret: bytes | None = None,
    ) -> Masker:
        """The default credential keys, plus :data:`HANDLE_KEYS` if ``mask_handles``, plus
        ``extra_keys``."""
        keys = set(DEFAULT_SECRET_KEYS) | {k.lower() for k in extra_keys}
        if mask_handles:
            keys |= HANDLE_KEYS
        return cls(frozenset(keys), (_BEARER,), secret)

    def replacement(self, value: object) -> str:
        """The text that stands for ``value`` in the log."""
        if self.secret is None:
            return MASK_PREFIX
        try:
            text = canonical_json(value)
        except Exception:  # any value: fall back to its repr for the digest
            text = repr(value)
        digest = hmac.new(self.secret, text.encode("utf-8"), hashlib.sha256).hexdigest()
        return f"{MASK_PREFIX}:hmac-sha256:{digest[:16]}"

    def mask(self, payload: Mapping[str, object]) -> dict[str, Any]:
        """A masked deep copy of ``payload`` (dicts and lists copied, other values shared)."""
        return {k: self._value(k, v) for k, v in payload.items()}

    def _value(self, key: object, value: object) -> Any:
        if isinstance(key, str) and key.lower() in self.keys and self._secret_key(key, value):
            return self.replacement(value)
        return self._walk(value)

    def _walk(self, value: object) -> Any:
        if isinstance(value, Mapping):
            return {k: self._value(k, v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._walk(v) for v in value]
        if isinstance(value, str) and any(p.search(value) for p in self.patterns):
            return self.replacement(value)
        return value

    def needs_masking(self, payload: Mapping[str, object]) -> bool:
        """True when :meth:`mask` would change something (cheap pre-check, no copy)."""
        return self._touches(payload)

    def _touches(self, value: object) -> bool:
        if isinstance(value, Mapping):
            keys = self.keys
            return any(
                (isinstance(k, str) and k.lower() in keys and self._secret_key(k, v))
                or self._touches(v)
                for k, v in value.items()
            )
        if isinstance(value, list | tuple):
            return any(self._touches(v) for v in value)
        if isinstance(value, str):
            return any(p.search(value) for p in self.patterns)
        return False

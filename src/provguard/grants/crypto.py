"""Token secrecy: encryption at rest, keyed digests for lookup, constant-time comparison.

One master key (32 random bytes, URL-safe base64, as :func:`generate_key` makes) is expanded with
HKDF-SHA256 (RFC 5869) into three independent keys:

- an encryption key for Fernet (AES-128-CBC + HMAC-SHA256, authenticated; the ``cryptography``
  package's recipe), so a stored token is ciphertext only;
- a MAC key for HMAC-SHA256 digests, so a presented token is found by its digest (an indexed
  column) without decrypting every row, and the digest alone reveals nothing about the token;
- a record key for HMAC-SHA256 tags on the registry's evidence rows (first uses by a recipient,
  separate consents: :meth:`TokenCipher.record_mac`), so a row written by hand in the database,
  without the key, is recognised and never grandfathers a transfer or stands for a consent.

Presented tokens are checked against the decrypted stored token with :func:`hmac.compare_digest`.
Tokens never appear in ``repr``, logs or audit payloads: :func:`fingerprint` (the first 12 hex
digits of the digest) is what logs show.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import secrets
from collections.abc import Sequence
from hashlib import sha256
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from provguard.errors import InputError, StoreError

KEY_ENV = "PROVGUARD_TOKEN_KEY"


def generate_key() -> str:
    """A new master key: 32 random bytes, URL-safe base64 (44 characters)."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")


def _hkdf(master: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master)


class TokenCipher:
    """Encrypts, decrypts and digests secrets under one master key.

    ``key``: the master key as :func:`generate_key` returns it. Raises :class:`InputError` for a
    key that is not 32 bytes of URL-safe base64.
    """

    def __init__(self, key: str) -> None:
        try:
            master = base64.urlsafe_b64decode(key.encode("ascii"))
        except (ValueError, UnicodeEncodeError) as exc:
            raise InputError("token key is not URL-safe base64") from exc
        if len(master) != 32:
            raise InputError(f"token key must be 32 bytes, got {len(master)}")
        self._fernet = Fernet(base64.urlsafe_b64encode(_hkdf(master, b"provguard/token-encrypt")))
        self._mac_key = _hkdf(master, b"provguard/token-digest")
        self._record_key = _hkdf(master, b"provguard/record-mac")

    def __repr__(self) -> str:
        return "TokenCipher(<key hidden>)"

    @classmethod
    def from_env_or_file(cls, key_file: Path | None = None) -> TokenCipher:
        """The cipher of ``$PROVGUARD_TOKEN_KEY``, else of ``key_file`` (created with a new key and
        mode 0600 when missing). Raises :class:`InputError` when neither is given."""
        env = os.environ.get(KEY_ENV)
        if env:
            return cls(env.strip())
        if key_file is None:
            raise InputError(f"no token key: set ${KEY_ENV} or pass a key file")
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(generate_key())
        return cls(key_file.read_text().strip())

    def encrypt(self, secret: str) -> bytes:
        """Fernet ciphertext of ``secret`` (UTF-8)."""
        return self._fernet.encrypt(secret.encode("utf-8"))

    def decrypt(self, ciphertext: bytes) -> str:
        """The plaintext; raises :class:`StoreError` when the ciphertext was altered or the key
        is wrong (Fernet's HMAC fails)."""
        try:
            return self._fernet.decrypt(ciphertext).decode("utf-8")
        except InvalidToken:
            raise StoreError("stored token does not decrypt under this key") from None

    def digest(self, secret: str) -> str:
        """HMAC-SHA256 of ``secret`` under the MAC key, 64 hex digits (the lookup key)."""
        return hmac.new(self._mac_key, secret.encode("utf-8"), sha256).hexdigest()

    def record_mac(self, kind: str, fields: Sequence[str | None]) -> str:
        """HMAC-SHA256 (RFC 2104) of a registry row, 64 hex digits, under a key of its own
        (HKDF info ``provguard/record-mac``, so it never equals a token digest). ``kind`` names
        the table (domain separation); ``fields`` are the row's values as text in a fixed order
        (``None`` allowed), encoded as one JSON array so no two rows share an input."""
        text = json.dumps([kind, *fields], ensure_ascii=False, separators=(",", ":"))
        return hmac.new(self._record_key, text.encode("utf-8"), sha256).hexdigest()

    def record_mac_ok(self, kind: str, fields: Sequence[str | None], mac: str | None) -> bool:
        """Whether ``mac`` is :meth:`record_mac` of the row (constant-time; ``None`` never
        is)."""
        if not mac:
            return False
        return hmac.compare_digest(self.record_mac(kind, fields).encode(), mac.encode("utf-8"))


def constant_time_equals(a: str, b: str) -> bool:
    """``a == b`` in time independent of where they differ (:func:`hmac.compare_digest`)."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def fingerprint(digest: str) -> str:
    """What logs may show of a token: the first 12 hex digits of its keyed digest."""
    return digest[:12]


def new_token(prefix: str, nbytes: int = 32) -> str:
    """A fresh opaque token ``<prefix>.<urlsafe random>`` (``nbytes`` of entropy)."""
    return f"{prefix}.{secrets.token_urlsafe(nbytes)}"

"""The keyed ``hash`` mask: HMAC-SHA256 (RFC 2104, FIPS 198-1) with a per-deployment secret key.

An unsalted SHA-256 of a handle is open to dictionary attacks (handles are short and guessable);
an HMAC under a key the data consumer does not hold is not, yet stays deterministic, so hashed
values still join and group within one deployment. The key comes from
``QueryPolicy(hash_key=...)`` or, when not given, the environment variable
``PROVGUARD_HASH_KEY`` (its UTF-8 bytes, at least :data:`MIN_KEY_BYTES`). A query whose policy
needs the ``hash`` strategy and has no key is refused with :class:`QueryError` (PG160): never a
silent unkeyed hash.

Every back-end computes the same value: the key is padded to SHA-256's 64-byte block here, and the
SQL evaluates ``SHA256((K ^ opad) || SHA256((K ^ ipad) || UTF8(value)))`` with the two padded keys
as hex literals (:func:`pads`), returning lowercase hex, identical to :func:`hmac_hex`.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from provguard.sqlgen.errors import QueryError

HASH_KEY_ENV = "PROVGUARD_HASH_KEY"
MIN_KEY_BYTES = 16
_BLOCK = 64


def resolve_hash_key(key: bytes | str | None, *, source: str | None = None) -> bytes | None:
    """The deployment's hash key: ``key`` (str as UTF-8) or ``$PROVGUARD_HASH_KEY``, or None.

    Raises :class:`QueryError` for a key shorter than :data:`MIN_KEY_BYTES` bytes, naming
    ``source`` (e.g. ``"$MY_KEY"``) or the variable it came from."""
    from_env = key is None
    if key is None:
        env = os.environ.get(HASH_KEY_ENV)
        if not env:
            return None
        key = env
    raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    if len(raw) < MIN_KEY_BYTES:
        if source is None:
            source = f"${HASH_KEY_ENV}" if from_env else "the hash key"
        raise QueryError(
            f"{source} is {len(raw)} bytes; the keyed 'hash' mask needs a key of at least"
            f" {MIN_KEY_BYTES} bytes (UTF-8), e.g. 32 random bytes as hex"
        )
    return raw


def hmac_hex(value: str, key: bytes) -> str:
    """HMAC-SHA256 of the UTF-8 bytes of ``value`` under ``key``, as 64 lowercase hex digits: the
    reference for what every back-end's ``hash`` mask returns."""
    return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()


def pads(key: bytes) -> tuple[str, str]:
    """``(K ^ ipad, K ^ opad)`` as hex strings (RFC 2104; keys longer than the 64-byte block
    are first hashed)."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    k = key.ljust(_BLOCK, b"\0")
    return bytes(b ^ 0x36 for b in k).hex(), bytes(b ^ 0x5C for b in k).hex()


def key_id(key: bytes) -> str:
    """A public fingerprint of ``key`` (16 hex digits of an HMAC of a fixed label under it):
    recorded with stored hash columns so that a rewrite can tell whether they were made with the
    key in use, without storing the key."""
    return hmac.new(key, b"provguard stored hash key id v1", hashlib.sha256).hexdigest()[:16]

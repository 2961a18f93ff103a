"""Ed25519-signed checkpoints of the audit chain (RFC 8032 signatures via ``cryptography``).

A :class:`~provguard.audit.chain.Checkpoint` (entry count + head hash) kept *outside* the log is
what detects truncation of the tail and a rewrite of the whole chain. Signing it lets a third
party (an auditor, a court) check, with the **public key alone**, that the operator's log had at
least ``count`` entries ending in ``head_hash`` at ``signed_at``, and that today's log still
starts with exactly those entries.

The exported document (:meth:`SignedCheckpoint.to_json`, schema
``provguard.audit-checkpoint/1``)::

    {"schema": "provguard.audit-checkpoint/1",
     "count": 92650, "head_hash": "<64 hex>", "signed_at": "2019-06-30T00:00:00.000000Z",
     "log_id": "control.db", "key_id": "<16 hex>",
     "algorithm": "Ed25519", "signature": "<base64 of 64 bytes>"}

The signature covers :func:`provguard.audit.chain.canonical_json` of every field except
``signature`` (sorted keys, UTF-8). ``key_id`` is the first 16 hex digits of SHA-256 over the raw
32-byte public key; it names the key, it does not authenticate it -- the verifier must obtain the
public key out of band. Private keys are PEM PKCS#8 files written with mode 0600 and are never put
into a checkpoint, a log entry or a report.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from provguard.audit.chain import Checkpoint, canonical_json, format_at, parse_at
from provguard.errors import AuditError

__all__ = [
    "CHECKPOINT_SCHEMA",
    "CheckpointSignatureError",
    "SignedCheckpoint",
    "generate_private_key",
    "key_id",
    "load_private_key",
    "load_public_key",
    "public_key_pem",
    "sign_checkpoint",
    "verify_signed_checkpoint",
    "write_keypair",
]

CHECKPOINT_SCHEMA = "provguard.audit-checkpoint/1"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")


class CheckpointSignatureError(AuditError):
    """A signed checkpoint is malformed, signed by another key, or its signature is wrong."""

    code = "PG320"


def generate_private_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 private key (from the OS CSPRNG)."""
    return Ed25519PrivateKey.generate()


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of SHA-256 over the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_pem(public_key: Ed25519PublicKey) -> str:
    """The public key as PEM SubjectPublicKeyInfo text (what a verifier receives)."""
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def write_keypair(
    private_path: str | Path, public_path: str | Path, *, overwrite: bool = False
) -> str:
    """Generate a key pair; write the private key (PEM PKCS#8, unencrypted, mode 0600) and the
    public key (PEM SPKI). Returns the key id. Raises :class:`AuditError` if a file exists and
    ``overwrite`` is false, ``OSError`` on I/O failure."""
    priv, pub = Path(private_path), Path(public_path)
    for p in (priv, pub):
        if p.exists() and not overwrite:
            raise AuditError(f"refusing to overwrite existing key file {p}")
    key = generate_private_key()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    priv.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(priv, flags, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.chmod(priv, 0o600)
    pub.parent.mkdir(parents=True, exist_ok=True)
    pub.write_text(public_key_pem(key.public_key()), encoding="ascii")
    return key_id(key.public_key())


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Read a PEM PKCS#8 Ed25519 private key. Raises :class:`AuditError` if the file is missing,
    unreadable, or not an Ed25519 private key (the message never contains key material)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise AuditError(f"cannot read private key {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise AuditError(f"{path} is not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """Read a PEM SPKI Ed25519 public key; raises :class:`AuditError` like the private one."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise AuditError(f"cannot read public key {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise AuditError(f"{path} is not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise AuditError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint (``count`` entries, head ``head_hash``) signed at ``signed_at`` (aware UTC)
    by the key ``key_id``; ``log_id`` names the log (free text, signed too); ``signature`` is the
    64-byte Ed25519 signature of :meth:`signed_bytes`."""

    count: int
    head_hash: str
    signed_at: datetime
    key_id: str
    signature: bytes
    log_id: str = ""

    @property
    def checkpoint(self) -> Checkpoint:
        """The unsigned (count, head hash) pair, for :func:`provguard.audit.verify_chain`."""
        return Checkpoint(self.count, self.head_hash)

    def _unsigned(self) -> dict[str, Any]:
        return {
            "schema": CHECKPOINT_SCHEMA,
            "algorithm": "Ed25519",
            "count": self.count,
            "head_hash": self.head_hash,
            "signed_at": format_at(self.signed_at),
            "key_id": self.key_id,
            "log_id": self.log_id,
        }

    def stored_at_text(self) -> str:
        """``signed_at`` as ISO-8601 UTC text (``...Z``)."""
        return format_at(self.signed_at)

    def signed_bytes(self) -> bytes:
        """UTF-8 canonical JSON of every exported field except ``signature``."""
        return canonical_json(self._unsigned()).encode("utf-8")

    def to_dict(self) -> dict[str, Any]:
        """The exported document as JSON values (see the module docstring)."""
        doc = self._unsigned()
        doc["signature"] = base64.b64encode(self.signature).decode("ascii")
        return doc

    def to_json(self) -> str:
        """:meth:`to_dict` as pretty JSON text with sorted keys and a final newline."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=2) + "\n"

    @classmethod
    def from_dict(cls, doc: object) -> SignedCheckpoint:
        """Parse an exported document; raises :class:`CheckpointSignatureError` if any field is
        missing, of the wrong type or malformed (the signature is NOT checked here)."""
        if not isinstance(doc, dict):
            raise CheckpointSignatureError("a checkpoint must be a JSON object")
        if doc.get("schema") != CHECKPOINT_SCHEMA:
            raise CheckpointSignatureError(
                f"unknown checkpoint schema {doc.get('schema')!r}, expected {CHECKPOINT_SCHEMA!r}"
            )
        if doc.get("algorithm") != "Ed25519":
            raise CheckpointSignatureError(f"unsupported algorithm {doc.get('algorithm')!r}")
        expected = {"schema", "algorithm", "count", "head_hash", "signed_at", "key_id"}
        expected |= {"log_id", "signature"}
        extra = set(doc) - expected
        if extra:
            raise CheckpointSignatureError(f"unknown checkpoint fields: {sorted(extra)}")
        count = doc.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise CheckpointSignatureError(f"'count' must be an integer >= 0, got {count!r}")
        head = doc.get("head_hash")
        if not isinstance(head, str) or not _HEX64.match(head):
            raise CheckpointSignatureError("'head_hash' must be 64 lowercase hex digits")
        kid = doc.get("key_id")
        if not isinstance(kid, str) or not _HEX16.match(kid):
            raise CheckpointSignatureError("'key_id' must be 16 lowercase hex digits")
        log_id = doc.get("log_id", "")
        if not isinstance(log_id, str):
            raise CheckpointSignatureError("'log_id' must be a string")
        at = doc.get("signed_at")
        if not isinstance(at, str):
            raise CheckpointSignatureError("'signed_at' must be an ISO-8601 UTC string")
        try:
            signed_at = parse_at(at)
        except AuditError as exc:
            raise CheckpointSignatureError(f"'signed_at': {exc.message}") from exc
        sig = doc.get("signature")
        try:
            raw = base64.b64decode(sig, validate=True) if isinstance(sig, str) else b""
        except ValueError as exc:
            raise CheckpointSignatureError("'signature' is not base64") from exc
        if len(raw) != 64:
            raise CheckpointSignatureError("'signature' must be 64 bytes (base64)")
        return cls(count, head, signed_at, kid, raw, log_id)

    @classmethod
    def from_json(cls, text: str) -> SignedCheckpoint:
        """Parse :meth:`to_json` output; raises :class:`CheckpointSignatureError`."""
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise CheckpointSignatureError(f"checkpoint is not valid JSON: {exc}") from exc
        return cls.from_dict(doc)


def sign_checkpoint(
    checkpoint: Checkpoint, private_key: Ed25519PrivateKey, at: datetime, *, log_id: str = ""
) -> SignedCheckpoint:
    """Sign ``checkpoint`` as of ``at`` (aware). Raises :class:`AuditError` for a naive ``at`` or
    a malformed head hash."""
    if not _HEX64.match(checkpoint.head_hash) or checkpoint.count < 0:
        raise AuditError("cannot sign a malformed checkpoint")
    format_at(at)  # rejects naive datetimes
    unsigned = SignedCheckpoint(
        checkpoint.count, checkpoint.head_hash, at, key_id(private_key.public_key()), b"", log_id
    )
    signature = private_key.sign(unsigned.signed_bytes())
    return SignedCheckpoint(
        unsigned.count, unsigned.head_hash, at, unsigned.key_id, signature, log_id
    )


def verify_signed_checkpoint(signed: SignedCheckpoint, public_key: Ed25519PublicKey) -> Checkpoint:
    """Check ``signed`` against ``public_key``; returns the trusted :class:`Checkpoint`.

    Raises :class:`CheckpointSignatureError` when the key id differs (signed by another key) or
    the signature does not verify (any signed field was changed).
    """
    kid = key_id(public_key)
    if kid != signed.key_id:
        raise CheckpointSignatureError(
            f"the checkpoint was signed by key {signed.key_id}, not by the given key {kid}"
        )
    try:
        public_key.verify(signed.signature, signed.signed_bytes())
    except InvalidSignature as exc:
        raise CheckpointSignatureError(
            "the checkpoint's signature does not verify: a signed field was changed"
        ) from exc
    return signed.checkpoint

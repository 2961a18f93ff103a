"""The signing key, public key and exported checkpoint of an output folder (``provguard run``).

The main job signs Ed25519 checkpoints (RFC 8032, :mod:`provguard.audit.signing`) of the audit
chain in ``<out>/control.db`` and leaves, beside the log::

    <out>/audit-key.pem    the private key (PEM PKCS#8, mode 0600; created on the first run)
                           -- not created when $PROVGUARD_AUDIT_KEY names a key file elsewhere
    <out>/audit.pub        the public key (PEM SPKI): what a third party needs
    <out>/checkpoint.json  the newest signed checkpoint (schema provguard.audit-checkpoint/1)

``$PROVGUARD_AUDIT_KEY`` (:data:`AUDIT_KEY_ENV`) is the path of an operator's private key kept
outside the folder (the service's ``--signing-key`` takes a path in the same way); the job then
never writes a private key into the folder. ``provguard audit verify --log <out>/control.db``
finds ``audit.pub`` and ``checkpoint.json`` beside the log (:func:`evidence_beside`) and checks
the chain against the newest checkpoint they vouch for, so truncation is found without
``--expect-count``. What that proves, and what it does not, is in docs/audit.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from provguard.audit.signing import (
    SignedCheckpoint,
    generate_private_key,
    load_private_key,
    public_key_pem,
)

__all__ = [
    "AUDIT_KEY_ENV",
    "CHECKPOINT_FILE",
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "FolderEvidence",
    "evidence_beside",
    "export_checkpoint",
    "folder_signing_key",
]

AUDIT_KEY_ENV = "PROVGUARD_AUDIT_KEY"
"""Environment variable: path of the Ed25519 private key (PEM) the main job signs with."""
PRIVATE_KEY_FILE = "audit-key.pem"
PUBLIC_KEY_FILE = "audit.pub"
CHECKPOINT_FILE = "checkpoint.json"


def folder_signing_key(folder: Path) -> tuple[Ed25519PrivateKey, Path]:
    """The key the main job signs with, and the path of the public key it exported.

    ``$PROVGUARD_AUDIT_KEY`` set: that file is read (:class:`AuditError` if it is missing or
    not an Ed25519 PEM private key). Otherwise ``folder/audit-key.pem`` is read, or created
    (mode 0600, exclusive create) on the first run. Either way ``folder/audit.pub`` is written
    (again) from the private key, so it always matches the key in use. Raises
    :class:`AuditError`, or ``OSError`` when the folder cannot be written."""
    env = os.environ.get(AUDIT_KEY_ENV, "").strip()
    folder.mkdir(parents=True, exist_ok=True)
    if env:
        key = load_private_key(Path(env))
    else:
        path = folder / PRIVATE_KEY_FILE
        key = load_private_key(path) if path.exists() else _create_private_key(path)
    public = folder / PUBLIC_KEY_FILE
    pem = public_key_pem(key.public_key())
    if not public.is_file() or public.read_text(encoding="ascii", errors="replace") != pem:
        _write_atomic(public, pem)
    return key, public


def _create_private_key(path: Path) -> Ed25519PrivateKey:
    key = generate_private_key()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another run created it meanwhile: use that one
        return load_private_key(path)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.chmod(path, 0o600)
    return key


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def export_checkpoint(signed: SignedCheckpoint, folder: Path) -> Path:
    """Write ``signed`` as ``folder/checkpoint.json`` (replacing it atomically); returns the
    path. The document holds no secret. Raises ``OSError``."""
    path = folder / CHECKPOINT_FILE
    _write_atomic(path, signed.to_json())
    return path


@dataclass(frozen=True)
class FolderEvidence:
    """The files :func:`evidence_beside` found next to a log (``None``: absent)."""

    public_key: Path | None
    checkpoint: Path | None


def evidence_beside(log: Path) -> FolderEvidence:
    """``audit.pub`` and ``checkpoint.json`` in the folder of ``log``, where they exist."""
    folder = log.parent
    public, exported = folder / PUBLIC_KEY_FILE, folder / CHECKPOINT_FILE
    return FolderEvidence(
        public if public.is_file() else None, exported if exported.is_file() else None
    )

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

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from provguard.audit.chain import AuditEntry, Checkpoint
from provguard.audit.signing import (
    SignedCheckpoint,
    generate_private_key,
    key_id,
    load_private_key,
    load_public_key,
    public_key_pem,
    sign_checkpoint,
    verify_signed_checkpoint,
)
from provguard.errors import AuditError, StoreError

__all__ = [
    "AUDIT_KEY_ENV",
    "CHECKPOINT_FILE",
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "Coverage",
    "FolderEvidence",
    "cover_own_entry",
    "cover_tail",
    "evidence_beside",
    "existing_signing_key",
    "export_checkpoint",
    "export_if_newer",
    "folder_signing_key",
    "signing_key_beside",
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
    """Write ``text`` to a temporary file beside ``path``, flush it to disk, rename it over
    ``path`` and flush the directory: a crash leaves the old file or the new one, never a
    half-written one."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # a platform without directory handles: the rename is still atomic
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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


def existing_signing_key(folder: Path) -> tuple[Ed25519PrivateKey, str] | None:
    """The key the main job would sign ``folder``'s log with, when it already exists, and
    where it came from: ``$PROVGUARD_AUDIT_KEY`` (that file; :class:`AuditError` PG300 if it is
    missing or not an Ed25519 PEM private key), else ``folder/audit-key.pem`` if present, else
    ``None``. Unlike :func:`folder_signing_key` it never creates a key or writes a file."""
    env = os.environ.get(AUDIT_KEY_ENV, "").strip()
    if env:
        return load_private_key(Path(env)), f"${AUDIT_KEY_ENV} ({env})"
    path = folder / PRIVATE_KEY_FILE
    if path.is_file():
        return load_private_key(path), str(path)
    return None


class SigningLog(Protocol):
    """What :func:`cover_tail` needs of an audit log
    (:class:`~provguard.adapters.audit_sqlite.SqliteAuditLog` has it)."""

    def sign_checkpoint(self, private_key: Ed25519PrivateKey) -> SignedCheckpoint: ...


class OwnEntryLog(SigningLog, Protocol):
    """What :func:`cover_own_entry` needs of an audit log
    (:class:`~provguard.adapters.audit_sqlite.SqliteAuditLog` has it)."""

    @property
    def path(self) -> Path: ...

    def entries(
        self, *, kind: str | None = None, start: int = 1, limit: int | None = None
    ) -> Iterator[AuditEntry]: ...

    def signed_checkpoints(self) -> list[SignedCheckpoint]: ...

    def store_checkpoint(self, signed: SignedCheckpoint) -> None: ...


@dataclass(frozen=True)
class Coverage:
    """What :func:`cover_tail` did: ``signed`` (the new checkpoint, also stored in the log) and
    ``exported`` (the path of ``checkpoint.json`` when it was replaced), or ``reason`` why the
    tail is not covered (``signed`` is then ``None``)."""

    signed: SignedCheckpoint | None
    exported: Path | None = None
    reason: str | None = None
    foreign: tuple[int, int] | None = None
    """``(a, b)``: entries #a–#b, written by someone else, are not covered by a verified signed
    checkpoint, so :func:`cover_own_entry` signed nothing (``reason`` says so)."""

    def message(self) -> str:
        """One line for stderr."""
        if self.signed is None and self.foreign is not None:
            return f"warning: {self.reason}"
        if self.signed is None:
            return (
                f"note: audit entries up to the log's head are not yet covered by a signed "
                f"checkpoint: {self.reason}; `provguard audit verify` reports them as uncovered "
                "until the next signed checkpoint (the next `provguard run` signs one)"
            )
        where = f", exported to {self.exported}" if self.exported is not None else ""
        return (
            f"audit: signed checkpoint at entry #{self.signed.count} "
            f"(Ed25519, key {self.signed.key_id}){where}"
        )


def _usable_key(folder: Path) -> tuple[Ed25519PrivateKey, str, Path] | Coverage:
    """The folder's signing key (:func:`existing_signing_key`), its public PEM and the path of
    ``folder/audit.pub``; or a :class:`Coverage` that signs nothing and says why: no key, a key
    that cannot be loaded, or a key that is not the one of ``audit.pub`` (signing with it would
    make ``audit verify`` fail with PG321)."""
    try:
        found = existing_signing_key(folder)
    except AuditError as exc:
        return Coverage(None, reason=f"the signing key cannot be used ({exc.message})")
    if found is None:
        return Coverage(
            None,
            reason=f"no signing key (${AUDIT_KEY_ENV} is not set and there is no "
            f"{folder / PRIVATE_KEY_FILE})",
        )
    key, source = found
    pem = public_key_pem(key.public_key())
    public = folder / PUBLIC_KEY_FILE
    if public.is_file() and public.read_text(encoding="ascii", errors="replace") != pem:
        return Coverage(
            None,
            reason=f"the signing key {source} (key {key_id(key.public_key())}) is not the key "
            f"of {public}",
        )
    return key, pem, public


def _export_unless_newer(
    signed: SignedCheckpoint, folder: Path, public: Path, pem: str
) -> Coverage:
    """Write ``audit.pub`` if missing, then export ``signed`` as ``folder/checkpoint.json``
    unless the file already holds a newer checkpoint (a corrupt one is replaced). Call under
    ``folder/.checkpoint.lock``."""
    if not public.is_file():
        _write_atomic(public, pem)
    current = folder / CHECKPOINT_FILE
    if current.is_file():
        try:
            kept = SignedCheckpoint.from_json(current.read_text(encoding="utf-8"))
        except (AuditError, StoreError, ValueError, OSError):
            kept = None
        if kept is not None and kept.count > signed.count:
            return Coverage(signed)
    return Coverage(signed, export_checkpoint(signed, folder))


def signing_key_beside(folder: Path) -> tuple[Ed25519PrivateKey | None, str]:
    """The key a command that appends to ``folder/control.db`` may sign its own entries with,
    found as :func:`cover_own_entry` finds it (``$PROVGUARD_AUDIT_KEY``, else
    ``folder/audit-key.pem``; it must be the key of ``folder/audit.pub`` when that exists), and
    where it came from; or ``(None, why not)``. Never creates a key or writes a file."""
    usable = _usable_key(folder)
    if isinstance(usable, Coverage):
        return None, usable.reason or "no signing key"
    key, _pem, _public = usable
    env = os.environ.get(AUDIT_KEY_ENV, "").strip()
    return key, (f"${AUDIT_KEY_ENV} ({env})" if env else str(folder / PRIVATE_KEY_FILE))


def export_if_newer(signed: SignedCheckpoint, folder: Path) -> Coverage:
    """Export ``signed`` as ``folder/checkpoint.json`` under ``folder/.checkpoint.lock``
    (write-then-rename with fsync), unless the file already holds a newer checkpoint; a
    ``checkpoint.json`` that no longer parses is replaced. Only when ``signed`` was made with
    the key of ``folder/audit.pub`` (else the folder's evidence would disagree, PG321 on
    verify: nothing is written and ``Coverage.reason`` says so). Raises ``OSError``."""
    public = folder / PUBLIC_KEY_FILE
    if not public.is_file():
        return Coverage(signed, reason=f"no {public}: the checkpoint is stored in the log only")
    try:
        kid = key_id(load_public_key(public))
    except AuditError as exc:
        return Coverage(signed, reason=f"{public} cannot be read ({exc.message})")
    if kid != signed.key_id:
        return Coverage(
            signed,
            reason=f"signed by key {signed.key_id}, not by the key of {public} ({kid}): "
            "stored in the log only",
        )
    pem = public.read_text(encoding="ascii", errors="replace")
    with open(folder / ".checkpoint.lock", "a", encoding="utf-8") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            return _export_unless_newer(signed, folder, public, pem)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def cover_tail(log: SigningLog, folder: Path) -> Coverage:
    """Sign a checkpoint of ``log``'s current head and export it as ``folder/checkpoint.json``,
    when the signing key is available as the main job finds it (:func:`existing_signing_key`).

    It signs whatever head it finds, entries appended by anyone included: a command that
    appends its own entry must use :func:`cover_own_entry` instead (findings I-1); this
    function is kept for callers that have reviewed the whole tail. Nothing is signed
    (``Coverage.reason`` says why) when no key exists, when the key cannot be loaded, or when
    it is not the key of ``folder/audit.pub``
    (signing with another key would make the folder's evidence disagree: PG321 on verify).

    Crash safety: the checkpoint is stored in the log first, then ``checkpoint.json`` is
    replaced by write-then-rename with fsync (:func:`export_checkpoint`), under an exclusive
    lock (``folder/.checkpoint.lock``), and only when the file's checkpoint is not newer (a
    concurrent run that signed a longer log keeps its export). A ``checkpoint.json`` that no
    longer parses is replaced. Raises :class:`~provguard.errors.StoreError` when the log
    cannot be written, ``OSError`` when the folder cannot be written."""
    usable = _usable_key(folder)
    if isinstance(usable, Coverage):
        return usable
    key, pem, public = usable
    lock_path = folder / ".checkpoint.lock"
    with open(lock_path, "a", encoding="utf-8") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            signed = log.sign_checkpoint(key)
            return _export_unless_newer(signed, folder, public, pem)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _verified_cover(log: OwnEntryLog, folder: Path, public: Ed25519PublicKey, below: int) -> int:
    """The highest entry count ``c < below`` of a signed checkpoint (stored in ``log`` or
    exported as ``folder/checkpoint.json``) whose Ed25519 signature verifies with ``public`` and
    whose head hash is the hash the log holds for entry #c; ``0`` when there is none."""
    candidates: list[SignedCheckpoint] = []
    # a stored document that no longer parses vouches for nothing
    with contextlib.suppress(AuditError):
        candidates.extend(log.signed_checkpoints())
    exported = folder / CHECKPOINT_FILE
    if exported.is_file():
        with contextlib.suppress(AuditError, ValueError, OSError):
            candidates.append(SignedCheckpoint.from_json(exported.read_text(encoding="utf-8")))
    for signed in sorted(candidates, key=lambda c: c.count, reverse=True):
        if signed.count >= below or signed.count <= 0:
            continue
        try:
            verify_signed_checkpoint(signed, public)
        except AuditError:
            continue
        held = next(iter(log.entries(start=signed.count, limit=1)), None)
        if held is not None and held.seq == signed.count and held.hash == signed.head_hash:
            return signed.count
    return 0


def signed_cover(log: OwnEntryLog, folder: Path, public: Ed25519PublicKey, head: int) -> int:
    """How many of the first ``head`` entries of ``log`` a signed checkpoint covers: the
    highest count <= ``head`` of a checkpoint stored in the log or exported beside it whose
    Ed25519 signature verifies with ``public`` and whose head the log holds; ``0`` when none
    does."""
    return _verified_cover(log, folder, public, head + 1) if head > 0 else 0


def cover_own_entry(log: OwnEntryLog, folder: Path, own: AuditEntry) -> Coverage:
    """Sign and export a checkpoint ending at ``own`` (the caller's own, just appended entry),
    but only when every entry before it is already covered: the newest signed checkpoint
    that verifies with the folder's key and whose head the log holds must end at
    ``own.seq - 1`` (or later), and ``own`` must link to the entry before it. Otherwise nothing
    is signed and ``Coverage.foreign`` names the entries #a–#b written by someone else, which
    stay uncovered (``audit verify --require-signed`` keeps flagging them): a writer without
    the key cannot get its entries signed by the next ``provguard query`` or
    ``provguard instrument event`` (findings I-1).

    The key is found as :func:`cover_tail` finds it (same refusals); the checkpoint signs
    (``own.seq``, ``own.hash``) even when entries were appended after it meanwhile, and is
    stored in the log, then exported under ``folder/.checkpoint.lock`` when the exported one is
    not newer. Signatures: Ed25519 (RFC 8032). Raises :class:`~provguard.errors.StoreError`
    when the log cannot be read or written, ``OSError`` when the folder cannot be written."""
    usable = _usable_key(folder)
    if isinstance(usable, Coverage):
        return usable
    key, pem, public = usable
    lock_path = folder / ".checkpoint.lock"
    with open(lock_path, "a", encoding="utf-8") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            covered = _verified_cover(log, folder, key.public_key(), own.seq)
            if covered < own.seq - 1:
                a, b = covered + 1, own.seq - 1
                span = f"entry #{a} was" if a == b else f"entries #{a}–#{b} were"
                return Coverage(
                    None,
                    reason=f"audit {span} written by someone else and not covered by a "
                    f"signed checkpoint; entry #{own.seq} is recorded but NOT "
                    "signed, and nothing is signed over them (`provguard audit verify "
                    "--require-signed` keeps flagging them; after reviewing them an operator "
                    "can sign the log with `provguard audit checkpoint export`, or the next "
                    "`provguard run` signs)",
                    foreign=(a, b),
                )
            before = (
                next(iter(log.entries(start=own.seq - 1, limit=1)), None) if own.seq > 1 else None
            )
            if before is not None and own.prev_hash != before.hash:
                return Coverage(
                    None,
                    reason=f"audit entry #{own.seq} does not link to entry #{before.seq}; "
                    "nothing signed",
                )
            signed = sign_checkpoint(
                Checkpoint(own.seq, own.hash),
                key,
                datetime.now(UTC),
                log_id=log.path.name,
            )
            log.store_checkpoint(signed)
            return _export_unless_newer(signed, folder, public, pem)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

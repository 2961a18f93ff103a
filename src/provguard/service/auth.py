"""API keys per client app.

The key file (JSON, written by ``provguard keys add``) holds only SHA-256 digests of the keys::

    {"keys": [{"name": "douyin-prod", "app": "douyin", "role": "app",
               "sha256": "<64 hex>", "created_at": "2019-06-30T08:00:00+00:00",
               "revoked_at": null}, ...]}

A key of role ``app`` acts for its client app only (tenant isolation: it decides for, and sees
the grants and decisions of, that app alone). A key of role ``auditor`` is read-only across
apps: audit verification, the report and the dashboard. Keys are 32 random bytes, URL-safe
base64 (``pgk_...``); they are compared by digest in constant time.

Key names are unique in a file (audit entries name the key). ``provguard keys revoke NAME`` sets
``revoked_at``; a registry loaded from a file (:meth:`ApiKeys.load`) re-reads the file when it
changes (checked on every lookup: one ``stat``), so a revoked key is refused (401) from the next
request on, without a restart. Every change is written atomically (temporary file, ``fsync``,
rename; mode 0600) under an exclusive lock on ``<file>.lock``. ``created_at`` / ``revoked_at``
are absent in files written before they existed and read as unknown / not revoked.
"""

from __future__ import annotations

import difflib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from provguard.errors import InputError
from provguard.service.errors import KeyFileError

__all__ = [
    "ApiKeys",
    "Client",
    "KeyRecord",
    "Role",
    "add_key",
    "hash_key",
    "list_keys",
    "revoke_key",
]

Role = Literal["app", "auditor"]


@dataclass(frozen=True)
class Client:
    """Who is calling: the key's ``name``, its client ``app`` (``""`` for an auditor), ``role``."""

    name: str
    app: str
    role: Role

    @property
    def is_auditor(self) -> bool:
        return self.role == "auditor"


@dataclass(frozen=True)
class KeyRecord:
    """One entry of the key file: ``name``, ``app`` (``""`` for an auditor), ``role``, the
    key's ``sha256`` digest (64 hex), ``created_at`` and ``revoked_at`` (aware datetimes, or
    ``None``: unknown / not revoked)."""

    name: str
    app: str
    role: Role
    sha256: str
    created_at: datetime | None = None
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def client(self) -> Client:
        return Client(self.name, self.app, self.role)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "app": self.app,
            "role": self.role,
            "sha256": self.sha256,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


def hash_key(key: str) -> str:
    """SHA-256 hex of the key's UTF-8 bytes."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _instant(value: object, where: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(f"{where} must be an ISO 8601 date-time or null")
    try:
        out = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InputError(f"{where} is not an ISO 8601 date-time: {value!r}") from exc
    return out if out.tzinfo is not None else out.replace(tzinfo=UTC)


def _read_records(path: Path) -> list[KeyRecord]:
    """The entries of the key file ``path`` (validated). Raises :class:`InputError`."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read API key file {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise InputError(f"API key file {path} is not JSON: {exc}") from exc
    out: list[KeyRecord] = []
    for i, item in enumerate(doc.get("keys", []) if isinstance(doc, dict) else []):
        if not isinstance(item, dict):
            raise InputError(f"{path}: keys[{i}] is not an object")
        role = item.get("role")
        digest = item.get("sha256")
        app = item.get("app", "")
        if role not in ("app", "auditor"):
            raise InputError(f"{path}: keys[{i}].role must be 'app' or 'auditor'")
        if not isinstance(digest, str) or len(digest) != 64:
            raise InputError(f"{path}: keys[{i}].sha256 must be 64 hex digits")
        if role == "app" and (not isinstance(app, str) or not app):
            raise InputError(f"{path}: keys[{i}] of role 'app' needs an 'app'")
        out.append(
            KeyRecord(
                name=str(item.get("name", f"key{i}")),
                app=str(app),
                role="app" if role == "app" else "auditor",
                sha256=digest.lower(),
                created_at=_instant(item.get("created_at"), f"{path}: keys[{i}].created_at"),
                revoked_at=_instant(item.get("revoked_at"), f"{path}: keys[{i}].revoked_at"),
            )
        )
    return out


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class ApiKeys:
    """The key registry: ``{digest: Client}`` of the active keys. Raises :class:`InputError`
    for a malformed file.

    A registry from :meth:`load` follows its file: :meth:`lookup` re-reads it when its inode,
    modification time or size changed, so added and revoked keys take effect at the next
    request. A file that becomes unreadable or malformed keeps the last good registry
    (``reload_error`` says why) -- the tools here write atomically, so that only happens by
    hand-editing.
    """

    def __init__(self, entries: dict[str, Client] | None = None) -> None:
        self._by_digest = dict(entries or {})
        self._path: Path | None = None
        self._signature: tuple[int, int, int] | None = None
        self._lock = threading.Lock()
        self.reload_error: str | None = None

    @classmethod
    def load(cls, path: str | Path) -> ApiKeys:
        target = Path(path)
        signature = _signature(target)
        keys = cls(_active(_read_records(target)))
        keys._path, keys._signature = target, signature
        return keys

    def _refresh(self) -> None:
        path = self._path
        if path is None:
            return
        signature = _signature(path)
        if signature == self._signature:
            return
        with self._lock:
            if signature == self._signature:
                return
            try:
                self._by_digest = _active(_read_records(path))
                self.reload_error = None
            except InputError as exc:
                self.reload_error = exc.message
            self._signature = signature

    def add(self, key: str, client: Client) -> None:
        """Register ``key`` (plaintext) for ``client`` (used by tests)."""
        self._by_digest[hash_key(key)] = client

    def lookup(self, key: str | None) -> Client | None:
        """The client of the active key ``key``, or ``None``; constant-time comparison of
        digests (the file is re-read first if it changed)."""
        if not key:
            return None
        self._refresh()
        digest = hash_key(key)
        found: Client | None = None
        for known, client in self._by_digest.items():
            if hmac.compare_digest(known, digest):
                found = client
        return found

    def lookup_digest(self, digest: str) -> Client | None:
        """The client of the active key whose SHA-256 hex digest is ``digest``, or ``None``
        (constant-time comparison; the file is re-read first if it changed). Used by the
        dashboard's sessions, which keep the digest, never the key."""
        if len(digest) != 64:
            return None
        self._refresh()
        digest = digest.lower()
        found: Client | None = None
        for known, client in self._by_digest.items():
            if hmac.compare_digest(known, digest):
                found = client
        return found

    def __len__(self) -> int:
        self._refresh()
        return len(self._by_digest)


def _active(records: list[KeyRecord]) -> dict[str, Client]:
    return {r.sha256: r.client for r in records if r.active}


# ------------------------------------------------------------------------------ the key file


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``<path>.lock`` (creates the folder and the lock file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _write(path: Path, records: list[KeyRecord]) -> None:
    doc = {"keys": [r.to_json() for r in records]}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _hint(word: str, candidates: Collection[str]) -> str:
    close = difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def list_keys(path: str | Path) -> list[KeyRecord]:
    """Every key of the file, revoked ones included, in file order. Raises
    :class:`InputError` for a missing or malformed file."""
    return _read_records(Path(path))


def add_key(
    path: str | Path,
    *,
    name: str,
    app: str,
    role: Role,
    known_apps: Collection[str] | None = None,
    now: datetime | None = None,
) -> str:
    """Create a new key for ``app``/``role``, append its digest to the key file (created with
    mode 0600 if missing) and return the plaintext key -- shown once, never stored.

    ``known_apps``: the registered client apps; an ``app`` key for any other app is refused
    (``None``: not checked). Raises :class:`KeyFileError` (PG550) for an empty or duplicate
    name (revoked keys keep their names: audit entries name them) or an unregistered app, with
    a "did you mean" hint; :class:`InputError` for a malformed existing file.
    """
    if not name.strip():
        raise KeyFileError("a key needs a non-empty --name")
    if role == "app" and not app:
        raise KeyFileError("a key of role 'app' needs --app")
    if role == "auditor" and app:
        raise KeyFileError("an auditor key acts for no app; leave out --app")
    if role == "app" and known_apps is not None and app not in known_apps:
        listed = ", ".join(sorted(known_apps)) or "none"
        raise KeyFileError(
            f"'{app}' is not a registered client app (registered: {listed}){_hint(app, known_apps)}"
        )
    target = Path(path)
    with _locked(target):
        records = _read_records(target) if target.exists() else []
        same = next((r for r in records if r.name == name), None)
        if same is not None:
            state = "revoked" if not same.active else "active"
            raise KeyFileError(
                f"a key named '{name}' already exists in {target} ({state}, app "
                f"'{same.app or '-'}'); key names are unique -- choose another name"
            )
        key = "pgk_" + secrets.token_urlsafe(32)
        record = KeyRecord(
            name=name,
            app=app,
            role=role,
            sha256=hash_key(key),
            created_at=(now or datetime.now(UTC)).astimezone(UTC),
        )
        _write(target, [*records, record])
    return key


def revoke_key(path: str | Path, name: str, *, now: datetime | None = None) -> KeyRecord:
    """Mark the key ``name`` revoked (``revoked_at`` = ``now``) and return its record. A
    service serving this file refuses it from its next request on (401). Raises
    :class:`KeyFileError` (PG550) when no key has that name ("did you mean") or it is already
    revoked; :class:`InputError` for a missing or malformed file."""
    target = Path(path)
    with _locked(target):
        records = _read_records(target)
        names = [r.name for r in records]
        if name not in names:
            raise KeyFileError(f"no key named '{name}' in {target}{_hint(name, names)}")
        i = names.index(name)
        old = records[i]
        if old.revoked_at is not None:
            raise KeyFileError(
                f"the key '{name}' was already revoked at {old.revoked_at.isoformat()}"
            )
        records[i] = KeyRecord(
            name=old.name,
            app=old.app,
            role=old.role,
            sha256=old.sha256,
            created_at=old.created_at,
            revoked_at=(now or datetime.now(UTC)).astimezone(UTC),
        )
        _write(target, records)
    return records[i]

"""API keys per client app.

The key file (JSON, written by ``provguard keys add``) holds only SHA-256 digests of the keys::

    {"keys": [{"name": "douyin-prod", "app": "douyin", "role": "app",
               "sha256": "<64 hex>"}, ...]}

A key of role ``app`` acts for its client app only (tenant isolation: it decides for, and sees
the grants and decisions of, that app alone). A key of role ``auditor`` is read-only across
apps: audit verification, the report and the dashboard. Keys are 32 random bytes, URL-safe
base64 (``pgk_...``); they are compared by digest in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from provguard.errors import InputError

__all__ = ["ApiKeys", "Client", "Role", "add_key", "hash_key"]

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


def hash_key(key: str) -> str:
    """SHA-256 hex of the key's UTF-8 bytes."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ApiKeys:
    """The key registry: ``{digest: Client}``. Raises :class:`InputError` for a malformed file."""

    def __init__(self, entries: dict[str, Client] | None = None) -> None:
        self._by_digest = dict(entries or {})

    @classmethod
    def load(cls, path: str | Path) -> ApiKeys:
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise InputError(f"cannot read API key file {path}: {exc.strerror}") from exc
        except ValueError as exc:
            raise InputError(f"API key file {path} is not JSON: {exc}") from exc
        out: dict[str, Client] = {}
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
            out[digest.lower()] = Client(str(item.get("name", f"key{i}")), str(app), role)
        return cls(out)

    def add(self, key: str, client: Client) -> None:
        """Register ``key`` (plaintext) for ``client`` (used by tests and ``keys add``)."""
        self._by_digest[hash_key(key)] = client

    def lookup(self, key: str | None) -> Client | None:
        """The client of ``key``, or ``None``; constant-time comparison of digests."""
        if not key:
            return None
        digest = hash_key(key)
        found: Client | None = None
        for known, client in self._by_digest.items():
            if hmac.compare_digest(known, digest):
                found = client
        return found

    def __len__(self) -> int:
        return len(self._by_digest)


def add_key(path: str | Path, *, name: str, app: str, role: Role) -> str:
    """Create a new key for ``app``/``role``, append its digest to the key file (created with
    mode 0600 if missing) and return the plaintext key -- shown once, never stored."""
    if role == "app" and not app:
        raise InputError("a key of role 'app' needs --app")
    target = Path(path)
    doc: dict[str, list[dict[str, str]]] = {"keys": []}
    if target.exists():
        ApiKeys.load(target)  # validate first
        doc = json.loads(target.read_text(encoding="utf-8"))
    key = "pgk_" + secrets.token_urlsafe(32)
    doc["keys"].append({"name": name, "app": app, "role": role, "sha256": hash_key(key)})
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2, sort_keys=True)
        fh.write("\n")
    return key

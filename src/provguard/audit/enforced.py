"""The policy a store is governed by: the newest policy record of its audit log.

Every ``provguard run`` opens its entries with a ``job.policy`` entry holding the digest of the
bundle files it enforced (:func:`provguard.job.run.policy_entry`), and every ``provguard data
load`` records the same payload, under the key :data:`LOAD_POLICY_KEY`, in its ``data.load``
entry (the policy it loaded and stored masks under; fresh user 12's H1: a loaded store used to
record none, so any ``--policy`` was accepted on it). A query or a decision service on that
store under *another* bundle (an edited copy that keeps the order's id and wording, fresh user
11's H1) would answer what the enforced policy forbids while the report says the order was
enforced; :func:`enforced_policy` gives the digest they must match. The newest record wins: a
``data load --replace`` under another bundle changes what governs the store, and says so in
its signed entry.

With ``audit.pub`` beside the log only an entry covered by a checkpoint that key signed counts
(:func:`provguard.audit.folder.signed_cover`): an appended, unsigned ``job.policy`` or
``data.load`` entry naming a lax bundle is ignored, so forging one does not change what governs
the store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from provguard.audit.crosscheck import POLICY_KIND
from provguard.audit.folder import PUBLIC_KEY_FILE, OwnEntryLog, signed_cover
from provguard.audit.signing import load_public_key
from provguard.errors import PolicyMismatchError
from provguard.policy import PolicySet

#: the audit entry kind of ``provguard data load``
LOAD_KIND = "data.load"
#: the key of a ``data.load`` entry's payload holding the policy record of the load (the
#: ``job.policy`` payload: ``policy_digest``, ``folder``, ``files``, ``rules``, ``instruments``)
LOAD_POLICY_KEY = "policy"


@dataclass(frozen=True)
class EnforcedPolicy:
    """The store's governing policy: ``digest`` (SHA-256 hex of the bundle files,
    :func:`provguard.cli.query.policy_digest`), ``files`` (bundle file name → SHA-256 hex of
    its bytes), the ``seq`` of the entry that recorded it, the bundle ``folder`` the run or
    load named and the ``kind`` of that entry (``job.policy`` or ``data.load``)."""

    digest: str
    files: Mapping[str, str]
    seq: int
    folder: str
    kind: str = POLICY_KIND

    def recorded_by(self) -> str:
        """Who recorded the policy, for messages: ``its job`` or ``its data load``."""
        return "its data load" if self.kind == LOAD_KIND else "its job"

    def missing_from(self, given: Iterable[str]) -> dict[str, str]:
        """The enforced files (name → SHA-256) whose exact bytes are not among ``given`` (the
        SHA-256s of another policy's files). Empty: that policy holds every enforced bundle
        unchanged, and may only add bundles -- which can only add denies, since any applied
        deny overrides a permit (docs/policy-language.md, combining)."""
        have = set(given)
        return {name: sha for name, sha in self.files.items() if sha not in have}


def _record(kind: str, payload: Mapping[str, object]) -> Mapping[str, object] | None:
    """The policy record an entry of ``kind`` carries: a mapping with a ``policy_digest``
    string and a ``files`` mapping (None: it records none, or a malformed one, which is passed
    over so an older well-formed record still governs)."""
    record = payload if kind == POLICY_KIND else payload.get(LOAD_POLICY_KEY)
    if not isinstance(record, Mapping):
        return None
    if not isinstance(record.get("policy_digest"), str):
        return None
    return record if isinstance(record.get("files"), Mapping) else None


def enforced_policy(log: OwnEntryLog, folder: Path, head: int) -> EnforcedPolicy | None:
    """The newest policy record of ``log`` (the audit log in ``folder``, ``head`` entries
    long): a ``job.policy`` entry, or a ``data.load`` entry carrying :data:`LOAD_POLICY_KEY`,
    whichever has the higher ``seq``; ``None`` when the log has none (a store neither a job nor
    a load of this version wrote, or a log from before they recorded their policy). With
    ``folder/audit.pub`` present, only entries a signed checkpoint covers count.

    Raises :class:`~provguard.errors.StoreError` when the log cannot be read and
    :class:`~provguard.errors.AuditError` (PG300) for an ``audit.pub`` that is not a key."""
    entries = [
        e
        for kind in (POLICY_KIND, LOAD_KIND)
        for e in log.entries(kind=kind)
        if _record(e.kind, e.payload) is not None
    ]
    if not entries:
        return None
    public = folder / PUBLIC_KEY_FILE
    if public.is_file():
        covered = signed_cover(log, folder, load_public_key(public), head)
        entries = [e for e in entries if e.seq <= covered]
    if not entries:
        return None
    newest = max(entries, key=lambda e: e.seq)
    record = _record(newest.kind, newest.payload) or {}
    digest, files = record.get("policy_digest"), record.get("files")
    assert isinstance(digest, str) and isinstance(files, Mapping)  # checked by _record
    return EnforcedPolicy(
        digest,
        {str(k): str(v) for k, v in files.items()},
        newest.seq,
        str(record.get("folder", "")),
        newest.kind,
    )


def policy_digest(policy_set: PolicySet) -> str:
    """SHA-256 (hex) of the bundle files a query was evaluated under (sorted by path; a bundle
    without a file contributes its instrument id and rule ids): recorded in the audit entry so a
    query run under another policy than the recorded one is visible."""
    h = hashlib.sha256()
    for b in sorted(policy_set.bundles, key=lambda b: (b.path or "", b.instrument.id)):
        if b.path is not None and Path(b.path).is_file():
            h.update(Path(b.path).read_bytes())
        else:
            h.update(" ".join([b.instrument.id, *(r.id for r in b.rules)]).encode())
        h.update(b"\0")
    return h.hexdigest()


def bundle_file_digests(policy_set: PolicySet) -> tuple[str, ...]:
    """SHA-256 (hex) of each bundle file of ``policy_set`` (bundles without a file are left
    out). Raises ``OSError`` when a file can no longer be read."""
    return tuple(
        hashlib.sha256(Path(b.path).read_bytes()).hexdigest()
        for b in policy_set.bundles
        if b.path is not None and Path(b.path).is_file()
    )


def require_enforced_files(enforced: EnforcedPolicy | None, policy_set: PolicySet) -> None:
    """Refuse ``policy_set`` unless it holds, byte for byte, every bundle file the store's job
    or data load enforced (``enforced``; ``None``: no policy recorded, any policy goes). Extra
    bundles are allowed: they can only add denies. Raises
    :class:`~provguard.errors.PolicyMismatchError` (PG103) naming the missing or edited files."""
    if enforced is None:
        return
    missing = enforced.missing_from(bundle_file_digests(policy_set))
    if not missing:
        return
    raise PolicyMismatchError(
        f"this store is governed by the policy {enforced.recorded_by()} enforced (audit entry"
        f" #{enforced.seq} {enforced.kind},"
        f" bundle {enforced.folder or '?'}, digest {enforced.digest[:12]}…); the given policy"
        f" lacks {', '.join(sorted(missing))} as enforced (missing or edited). Use that bundle"
        " (extra bundles may be added; `provguard policy digest --policy DIR` shows a folder's"
        " digests), or run the job (or `provguard data load --replace`) under the new one, which"
        " records it",
        enforced=enforced.digest,
        given=policy_digest(policy_set),
    )

"""What a verification of the audit log proves: the chain, every checkpoint, and which entries a
*signed* checkpoint covers (``provguard audit verify``; docs/audit.md, "What each verdict rests
on").

:func:`assess` checks one log against every checkpoint it can find, in one pass over the chain
(:func:`provguard.audit.chain.verify_chain`):

* **stored checkpoints** (table ``audit_checkpoints`` of the log itself) are *always* compared
  with the log, whether or not a public key is given: a stored checkpoint that counts more
  entries than the log holds is truncation, one whose head differs from the log's entry at its
  count is a rewrite. Without the signer's public key their signatures are not checked, so they
  vouch for nothing: they only catch a log cut off or edited by someone who left them in place.
* **signed checkpoints** -- stored ones signed by the given key, and an exported
  ``checkpoint.json`` -- have their Ed25519 signatures (RFC 8032) checked with the given key.
  An exported checkpoint signed by *another* key is :class:`CheckpointKeyMismatchError`
  (``PG321``), a case of its own: the chain may be fine, but the file cannot vouch for it under
  the key given.
* **coverage**: the largest entry count of a checkpoint whose signature verified and whose head
  the log still holds. Entries after it are covered by no signed checkpoint, and the
  :class:`Assessment` says so in words (:meth:`Assessment.coverage_line`). A checkpoint stored in
  the same file proves nothing against someone who can rewrite the file (they can delete it
  together with the entries it covers); an exported one, kept by someone else, does. Coverage
  therefore names the largest count of each kind.

Everything here is pure except that ``log`` is read (:class:`CheckpointedLog` protocol,
satisfied by :class:`provguard.adapters.audit_sqlite.SqliteAuditLog`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from provguard.audit.chain import Checkpoint, VerifyResult
from provguard.audit.signing import (
    CheckpointSignatureError,
    SignedCheckpoint,
    key_id,
    verify_signed_checkpoint,
)
from provguard.errors import AuditError

__all__ = [
    "Assessment",
    "CheckpointKeyMismatchError",
    "CheckpointedLog",
    "LabelledCheckpoint",
    "UncoveredEntriesError",
    "assess",
]


class CheckpointKeyMismatchError(CheckpointSignatureError):
    """An exported checkpoint was signed by another key than the one given to check it: not a
    bad signature and not tampering by itself, but no evidence under the given key either."""

    code = "PG321"


class UncoveredEntriesError(AuditError):
    """``audit verify --require-signed``: the chain is intact but some entries (the tail, or
    all of them) are covered by no checkpoint whose signature verified."""

    code = "PG330"


class CheckpointedLog(Protocol):
    """What :func:`assess` reads from a log."""

    def signed_checkpoints(self) -> list[SignedCheckpoint]: ...

    def verify(
        self, checkpoint: Checkpoint | None = None, *, checkpoints: Iterable[Checkpoint] = ()
    ) -> VerifyResult: ...


@dataclass(frozen=True)
class LabelledCheckpoint:
    """A checkpoint the log was compared with, and where it came from: ``source`` is
    ``"stored"`` (in the log's own ``audit_checkpoints``), ``"exported"`` (a checkpoint file) or
    ``"expected"`` (``--expect-count/--expect-head``); ``signed_by`` the key id in the document
    (``None`` for ``expected``); ``signature_verified`` whether its signature was checked and
    verified with the given key; ``label`` the words used in messages."""

    checkpoint: Checkpoint
    source: str
    label: str
    signed_by: str | None = None
    signature_verified: bool = False


@dataclass(frozen=True)
class Assessment:
    """The outcome of :func:`assess`.

    ``result`` is the chain verified against every checkpoint (its ``reason`` names the
    checkpoint that failed, by source); ``checkpoints`` the checkpoints compared;
    ``key_id`` the key given (``None``: no key, no signature was checked);
    ``stored_by_key`` stored checkpoints per signing key id (count of documents);
    ``covered_stored`` / ``covered_exported``: the largest entry count covered by a
    signature-verified checkpoint stored in the log / exported (0: none);
    ``key_mismatch``: the exported checkpoint's error when it was signed by another key."""

    result: VerifyResult
    checkpoints: tuple[LabelledCheckpoint, ...]
    key_id: str | None
    stored_by_key: dict[str, int]
    covered_stored: int = 0
    covered_exported: int = 0
    key_mismatch: CheckpointKeyMismatchError | None = None

    @property
    def covered(self) -> int:
        """Entries #1..covered are covered by a signature-verified checkpoint (0: none)."""
        return max(self.covered_stored, self.covered_exported)

    @property
    def fully_covered(self) -> bool:
        """The chain verified and a signature-verified checkpoint covers every entry."""
        return self.result.ok and self.result.count > 0 and self.covered >= self.result.count

    def coverage_line(self) -> str:
        """One sentence: which entries a signed checkpoint covers, and which none does.

        E.g. ``"entries #1–#80000 are covered by a checkpoint signed by key 3f0c… (stored in
        the log only: it proves nothing against someone who can rewrite the file); entries
        after #80000 (#80001–#90000) are not covered by any signed checkpoint"``."""
        n = self.result.count
        if n == 0:
            return "the log is empty: there is nothing for a checkpoint to cover"
        if self.key_id is None:
            stored = sum(self.stored_by_key.values())
            unsigned = (
                f"the {stored} checkpoint(s) stored in the log were compared with it, but "
                "without the signer's public key their signatures were not checked"
                if stored
                else "the log stores no checkpoint"
            )
            return (
                f"no signed checkpoint covers this log: no public key was given or found beside "
                f"it ({unsigned}; give --public-key to check signatures)"
            )
        covered = min(self.covered, n)
        if covered == 0:
            return (
                f"no signed checkpoint covers this log: none signed by key {self.key_id} is "
                "stored in it or was given as an exported checkpoint"
            )
        kinds = []
        if self.covered_exported:
            kinds.append(f"exported, up to #{min(self.covered_exported, n)}")
        if self.covered_stored:
            kinds.append(f"stored in the log, up to #{min(self.covered_stored, n)}")
        strength = ", ".join(kinds)
        if not self.covered_exported:
            strength += (
                "; a checkpoint stored in the same file proves nothing against someone who can "
                "rewrite the file -- see docs/audit.md"
            )
        signer = f"a checkpoint signed by key {self.key_id} ({strength})"
        if covered >= n:
            return f"every entry (#1–#{n}) is covered by {signer}"
        head = f"entries #1–#{covered} are covered by {signer}"
        tail = f"#{covered + 1}" if covered + 1 == n else f"#{covered + 1}–#{n}"
        return f"{head}; entries after #{covered} ({tail}) are not covered by any signed checkpoint"


def _labelled_reason(result: VerifyResult, checkpoints: Sequence[LabelledCheckpoint]) -> str:
    """``result.reason`` with the source of the checkpoint that failed appended."""
    reason = result.reason or "audit chain broken"
    if result.ok or not checkpoints:
        return reason
    if reason.startswith("the log was truncated"):
        largest = max(c.checkpoint.count for c in checkpoints)
        culprits = [c for c in checkpoints if c.checkpoint.count == largest]
    elif "does not match the checkpoint" in reason:
        culprits = [c for c in checkpoints if c.checkpoint.count == result.first_bad_seq]
        if result.first_bad_seq == 1:
            culprits = [c for c in checkpoints if c.checkpoint.count <= 1]
    else:
        return reason
    if not culprits:
        return reason
    return reason + " [checkpoint: " + "; ".join(dict.fromkeys(c.label for c in culprits)) + "]"


def assess(
    log: CheckpointedLog,
    *,
    public_key: Ed25519PublicKey | None = None,
    exported: SignedCheckpoint | None = None,
    exported_path: Path | None = None,
    expected: Checkpoint | None = None,
    expected_label: str | None = None,
) -> Assessment:
    """Verify ``log``'s chain against every checkpoint it stores (signatures checked when
    ``public_key`` is given, compared unsigned otherwise), the ``exported`` one and
    ``expected`` (named ``expected_label`` in a failure, default its ``--expect-count`` form);
    see the module docstring.

    Raises:
        CheckpointSignatureError: (PG320) a stored document that no longer parses, a stored
            checkpoint that claims ``public_key``'s key id but whose signature fails, or an
            exported one whose signature fails.
        StoreError: the log cannot be read.

    Without ``public_key`` the exported checkpoint is compared unsigned, like the stored ones.
    An exported checkpoint signed by another key does **not** raise: the chain is still
    checked against everything else, and ``Assessment.key_mismatch`` holds the
    :class:`CheckpointKeyMismatchError` for the caller to report (and fail on).
    """
    kid = key_id(public_key) if public_key is not None else None
    stored = log.signed_checkpoints()
    labelled: list[LabelledCheckpoint] = []
    by_key: dict[str, int] = {}
    covered_stored = covered_exported = 0
    for signed in stored:
        by_key[signed.key_id] = by_key.get(signed.key_id, 0) + 1
        verified = False
        if public_key is not None and signed.key_id == kid:
            try:
                verify_signed_checkpoint(signed, public_key)
            except CheckpointSignatureError as exc:
                raise CheckpointSignatureError(
                    f"the stored checkpoint of {signed.count} entries: {exc.message}"
                ) from exc
            verified = True
            covered_stored = max(covered_stored, signed.count)
            label = f"stored in the log, {signed.count} entries, signed by key {kid} (verified)"
        elif public_key is not None:
            label = (
                f"stored in the log, {signed.count} entries, signed by key {signed.key_id}, "
                f"not by the key given ({kid}): compared unsigned"
            )
        else:
            label = (
                f"stored in the log, {signed.count} entries, signed by key {signed.key_id}: "
                "signature not checked (no public key)"
            )
        labelled.append(
            LabelledCheckpoint(signed.checkpoint, "stored", label, signed.key_id, verified)
        )
    mismatch: CheckpointKeyMismatchError | None = None
    if exported is not None:
        name = str(exported_path) if exported_path is not None else "the exported checkpoint"
        if public_key is None:
            labelled.append(
                LabelledCheckpoint(
                    exported.checkpoint,
                    "exported",
                    f"exported {name}, {exported.count} entries, signed by key "
                    f"{exported.key_id}: signature not checked (no public key)",
                    exported.key_id,
                )
            )
        elif exported.key_id != kid:
            mismatch = CheckpointKeyMismatchError(
                f"{name} was signed by key {exported.key_id}, not by the key you gave ({kid}): "
                "it is no evidence under your key (the chain itself was checked, see above); "
                "give the public key that signed it with --public-key, or leave the file out "
                "(--no-beside, or --checkpoint with one your key signed)"
            )
            labelled.append(
                LabelledCheckpoint(
                    exported.checkpoint,
                    "exported",
                    f"exported {name}, {exported.count} entries, signed by key "
                    f"{exported.key_id}, not by the key given ({kid}): compared unsigned",
                    exported.key_id,
                )
            )
        else:
            try:
                verify_signed_checkpoint(exported, public_key)
            except CheckpointSignatureError as exc:
                raise CheckpointSignatureError(f"{name}: {exc.message}") from exc
            covered_exported = exported.count
            labelled.append(
                LabelledCheckpoint(
                    exported.checkpoint,
                    "exported",
                    f"exported {name}, {exported.count} entries, signed by key {kid} (verified)",
                    kid,
                    True,
                )
            )
    if expected is not None:
        labelled.append(
            LabelledCheckpoint(
                expected,
                "expected",
                expected_label
                or f"--expect-count {expected.count} --expect-head {expected.head_hash[:12]}…",
            )
        )
    result = log.verify(checkpoints=[c.checkpoint for c in labelled])
    if not result.ok:
        result = VerifyResult(
            ok=False,
            count=result.count,
            head_hash=result.head_hash,
            first_bad_seq=result.first_bad_seq,
            reason=_labelled_reason(result, labelled),
        )
    return Assessment(
        result=result,
        checkpoints=tuple(labelled),
        key_id=kid,
        stored_by_key=by_key,
        covered_stored=covered_stored if result.ok else 0,
        covered_exported=covered_exported if result.ok else 0,
        key_mismatch=mismatch,
    )

"""Report section 6's sentences about the newest signed checkpoint (one source for the HTML
report and ``provguard report --store``'s console line), and the sentence naming a
``service.audit_off`` entry (report sections 2, 6 and 7, ``provguard audit verify``).

The checkpoint is an Ed25519 signature (RFC 8032, :mod:`provguard.audit.signing`) over an
entry count and the chain's head hash at that count. Whether it *covers* entries depends on
three facts kept in :class:`~provguard.report.model.CheckpointView`: its signature verified
with a public key (``signature_ok``), the log still holds its head (``head_in_log``), and the
chain itself verifies (``AuditSummary.verify_ok``). What a stored checkpoint proves, and what it
does not, is in docs/audit.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from provguard.audit.chain import AuditEntry
from provguard.report.model import AuditOffView, AuditSummary, CheckpointView

__all__ = [
    "AUDIT_OFF_KIND",
    "audit_off_sentence",
    "audit_off_view",
    "coverage_sentence",
    "service_count_phrase",
    "signature_phrase",
]

AUDIT_OFF_KIND = "service.audit_off"
"""The entry a service started with ``--audit-mode off`` appends before answering anything
(payload ``started_at`` ISO-8601 UTC, ``audit_mode``, ``pid``)."""


def audit_off_view(entry: AuditEntry) -> AuditOffView:
    """The report's view of a ``service.audit_off`` ``entry`` (missing payload fields stay
    empty / ``None``)."""
    p: Mapping[str, Any] = entry.payload
    pid = p.get("pid")
    started = p.get("started_at")
    return AuditOffView(
        seq=entry.seq,
        started_at=started if isinstance(started, str) else entry.stored_at(),
        pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
    )


def audit_off_sentence(v: AuditOffView) -> str:
    """``"audit entry #S (service.audit_off): the HTTP service answered decisions without
    recording them from <started_at> (pid P); their number is unknown"`` (no full stop)."""
    pid = f" (pid {v.pid})" if v.pid is not None else ""
    return (
        f"audit entry #{v.seq} ({AUDIT_OFF_KIND}): the HTTP service answered decisions "
        f"without recording them from {v.started_at}{pid}; their number is unknown"
    )


def service_count_phrase(count: int, off: Iterable[AuditOffView]) -> str:
    """The count of the HTTP service's recorded decisions as the report states it:
    ``"12"``, or ``"at least 12"`` when any ``service.audit_off`` entry is in the log (the
    service count covers the whole log, so any unrecorded period makes it a lower bound)."""
    return f"at least {count:,}" if any(True for _ in off) else f"{count:,}"


NO_KEY = "no public key beside the log"
"""Why a signature was not checked when no key file was given or found."""


def signature_phrase(c: CheckpointView) -> str:
    """How the checkpoint's signature stands, as a noun phrase naming the checkpoint, e.g.
    ``"a checkpoint signed by key fac4efa01a86c855, signature verified with audit.pub"`` or
    ``"a checkpoint whose signature was not checked (no public key beside the log)"``."""
    if c.signature_ok is True:
        return f"a checkpoint signed by key {c.key_id}, signature verified with {c.key_file}"
    if c.signature_ok is False:
        return (
            f"a checkpoint claiming key {c.key_id} whose signature does NOT verify with "
            f"{c.key_file}"
        )
    if c.key_file is not None and c.public_key_id is not None:
        return (
            f"a checkpoint whose signature was not checked ({c.key_file} holds key "
            f"{c.public_key_id}, but the checkpoint names key {c.key_id})"
        )
    return f"a checkpoint whose signature was not checked ({NO_KEY})"


def coverage_sentence(a: AuditSummary) -> str:
    """Which entries of the log the newest signed checkpoint covers, in one sentence without a
    final full stop.

    Examples: ``"every entry (#1–#92791) is covered by a checkpoint signed by key K, signature
    verified with audit.pub"``; ``"entries #1–#80000 are covered by …; entries after #80000
    (#80001–#90000) are not covered by any signed checkpoint"``; ``"no entry is covered: …"``
    when the signature fails, the chain is broken, or the log no longer holds the checkpoint's
    head (truncated or rewritten after signing)."""
    c = a.checkpoint
    if c is None:
        return (
            "none: no signed checkpoint is stored in the log, so nothing beyond the chain "
            "itself is proven"
        )
    what = signature_phrase(c)
    if c.signature_ok is False:
        return f"no entry is covered: the newest stored checkpoint is {what}"
    if not a.verify_ok:
        return f"no entry is covered: the chain does not verify, so {what} vouches for nothing"
    if c.count > a.entries:
        missing = (
            f"#{a.entries + 1}" if a.entries + 1 == c.count else f"#{a.entries + 1}–#{c.count}"
        )
        return (
            f"no entry is covered: {what} counts {c.count} entries but the log holds only "
            f"{a.entries} (entries {missing} are missing: the log was truncated after signing)"
        )
    if c.head_in_log is False:
        return (
            f"no entry is covered: entry #{c.count} of the log does not hash to the head of "
            f"{what} (the log was rewritten after signing)"
        )
    if c.count == 0:
        return f"no entry is covered: {what} counts 0 entries"
    if c.count >= a.entries:
        return f"every entry (#1–#{a.entries}) is covered by {what}"
    tail = f"#{c.count + 1}" if c.count + 1 == a.entries else f"#{c.count + 1}–#{a.entries}"
    return (
        f"entries #1–#{c.count} are covered by {what}; entries after #{c.count} ({tail}) are "
        "not covered by any signed checkpoint"
    )

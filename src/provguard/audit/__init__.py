"""Tamper-evident audit log: a SHA-256 hash chain of decisions, and its verification.

The pure chain logic lives in :mod:`provguard.audit.chain`; the SQLite store in
:mod:`provguard.adapters.audit_sqlite`.
"""

from provguard.audit.chain import (
    GENESIS_HASH,
    AuditEntry,
    Checkpoint,
    VerifyResult,
    build_entry,
    canonical_json,
    canonical_payload,
    entry_hash,
    format_at,
    make_entry,
    normalise_payload,
    parse_at,
    verify_chain,
)

__all__ = [
    "GENESIS_HASH",
    "AuditEntry",
    "Checkpoint",
    "VerifyResult",
    "build_entry",
    "canonical_json",
    "canonical_payload",
    "entry_hash",
    "format_at",
    "make_entry",
    "normalise_payload",
    "parse_at",
    "verify_chain",
]

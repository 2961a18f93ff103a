"""Tamper-evident audit log: a SHA-256 hash chain of decisions, and its verification.

The pure chain logic lives in :mod:`provguard.audit.chain`; Ed25519-signed checkpoints in
:mod:`provguard.audit.signing`; masking of sensitive values in :mod:`provguard.audit.masking`;
what a verification proves (stored and signed checkpoints, coverage) in
:mod:`provguard.audit.coverage`; the background writer with its two delivery modes in
:mod:`provguard.audit.writer`; the key,
public key and exported checkpoint of an output folder in :mod:`provguard.audit.folder`; the
SQLite store in :mod:`provguard.adapters.audit_sqlite`.
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
    format_at_ns,
    link_hash,
    make_entry,
    normalise_payload,
    parse_at,
    verify_chain,
)
from provguard.audit.coverage import (
    Assessment,
    CheckpointKeyMismatchError,
    UncoveredEntriesError,
    assess,
)
from provguard.audit.masking import DEFAULT_SECRET_KEYS, HANDLE_KEYS, Masker
from provguard.audit.records import decision_json, decision_payload, tally_keys
from provguard.audit.signing import (
    CHECKPOINT_SCHEMA,
    CheckpointSignatureError,
    SignedCheckpoint,
    key_id,
    load_private_key,
    load_public_key,
    sign_checkpoint,
    verify_signed_checkpoint,
    write_keypair,
)
from provguard.audit.writer import AuditSink, AuditWriter, DeliveryMode, WriterStats

__all__ = [
    "CHECKPOINT_SCHEMA",
    "DEFAULT_SECRET_KEYS",
    "GENESIS_HASH",
    "HANDLE_KEYS",
    "Assessment",
    "AuditEntry",
    "AuditSink",
    "AuditWriter",
    "Checkpoint",
    "CheckpointKeyMismatchError",
    "CheckpointSignatureError",
    "DeliveryMode",
    "Masker",
    "SignedCheckpoint",
    "UncoveredEntriesError",
    "VerifyResult",
    "WriterStats",
    "assess",
    "build_entry",
    "canonical_json",
    "canonical_payload",
    "decision_json",
    "decision_payload",
    "entry_hash",
    "format_at",
    "format_at_ns",
    "key_id",
    "link_hash",
    "load_private_key",
    "load_public_key",
    "make_entry",
    "normalise_payload",
    "parse_at",
    "sign_checkpoint",
    "tally_keys",
    "verify_chain",
    "verify_signed_checkpoint",
    "write_keypair",
]

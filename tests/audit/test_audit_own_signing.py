"""Session 6: a signing audit writer signs only the entries it wrote.

The writer (the HTTP service's, periodic or on ``POST /v1/audit/checkpoints``) used to sign the
log's whole head, laundering entries someone else had appended without a key. Now a checkpoint
ends at the writer's own last entry, and only when every entry before it is the writer's own or
already covered by a stored checkpoint that verifies with a trusted key; otherwise PG331.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.audit.signing import generate_private_key, verify_signed_checkpoint
from provguard.audit.writer import AuditWriter
from provguard.errors import ForeignEntriesError

AT = datetime(2024, 1, 1, tzinfo=UTC)


def _counts(log: SqliteAuditLog) -> list[int]:
    return [c.count for c in log.signed_checkpoints()]


def test_a_fresh_log_written_only_by_the_writer_is_signed_at_close(tmp_path: Path) -> None:
    log = SqliteAuditLog(tmp_path / "a.db")
    key = generate_private_key()
    with AuditWriter(log, signer=key) as w:  # checkpoint_every=0: at close only
        for i in range(30):
            w.submit("decision", {"i": i})
    assert _counts(log) == [30]
    (cp,) = log.signed_checkpoints()
    assert log.verify(verify_signed_checkpoint(cp, key.public_key())).ok
    assert w.stats().checkpoints == 1 and w.stats().checkpoints_refused == 0


def test_foreign_entries_before_the_writer_are_never_signed(tmp_path: Path) -> None:
    """Someone without the key appended #1-#3; the writer's own #4-#6 are not signed, and
    ``sign_own_entries`` names the foreign range."""
    log = SqliteAuditLog(tmp_path / "a.db")
    log.append_many([("instrument_event", {"forged": i}) for i in range(3)])
    key = generate_private_key()
    w = AuditWriter(log, signer=key).start()
    for i in range(3):
        w.submit("decision", {"i": i})
    assert w.flush(10)
    with pytest.raises(ForeignEntriesError) as info:
        w.sign_own_entries()
    assert (info.value.first, info.value.last) == (1, 3) and info.value.code == "PG331"
    assert "entries #1–#3 were written by someone else" in info.value.message
    stats = w.close()
    assert stats.checkpoints_refused == 1 and "#1–#3" in (stats.last_error or "")
    assert _counts(log) == []


def test_foreign_entries_covered_by_a_trusted_checkpoint_are_accepted(tmp_path: Path) -> None:
    """The job's entries, covered by the job's checkpoint (same key, or a key given as
    trusted): the writer signs its own entries after them."""
    log = SqliteAuditLog(tmp_path / "a.db")
    job_key, service_key = generate_private_key(), generate_private_key()
    log.append_many([("decision", {"job": i}) for i in range(5)])
    log.sign_checkpoint(job_key)
    # the same key: accepted
    with AuditWriter(log, signer=job_key) as w:
        w.submit("decision", {"svc": 1})
    assert _counts(log) == [5, 6]
    # another key that does not trust the job's: refused
    with AuditWriter(log, signer=service_key) as w:
        w.submit("decision", {"svc": 2})
    assert w.stats().checkpoints_refused == 1 and _counts(log) == [5, 6]
    # trusting the job's public key: #1-#6 are covered, but #7 (the previous writer's, never
    # signed) is foreign to this writer: refused
    with AuditWriter(log, signer=service_key, trusted_public_keys=[job_key.public_key()]) as w:
        w.submit("decision", {"svc": 3})
    assert w.stats().checkpoints_refused == 1 and _counts(log) == [5, 6]
    assert "entry #7 was written by someone else" in (w.stats().last_error or "")
    log.sign_checkpoint(job_key)  # an operator reviews #7-#8 and signs them
    with AuditWriter(log, signer=service_key, trusted_public_keys=[job_key.public_key()]) as w:
        w.submit("decision", {"svc": 4})
    assert _counts(log) == [5, 6, 8, 9]


def test_the_checkpoint_ends_at_the_writers_own_entry_not_the_head(tmp_path: Path) -> None:
    log = SqliteAuditLog(tmp_path / "a.db")
    key = generate_private_key()
    w = AuditWriter(log, signer=key).start()
    w.submit("decision", {"i": 1})
    w.submit("decision", {"i": 2})
    assert w.flush(10)
    log.append("instrument_event", {"appended": "by someone else"})  # #3, after the writer's
    signed = w.sign_own_entries()
    assert signed is not None and signed.count == 2  # not 3: never over the foreign #3
    assert w.sign_own_entries() is signed  # nothing new: the same checkpoint
    # the writer goes on after the foreign entry: #3 now sits between its entries -> refused
    w.submit("decision", {"i": 3})
    assert w.flush(10)
    with pytest.raises(ForeignEntriesError) as info:
        w.sign_own_entries()
    assert (info.value.first, info.value.last) == (3, 3)
    w.close()
    assert _counts(log) == [2]


def test_interleaved_batches_of_one_writer_are_merged(tmp_path: Path) -> None:
    """Many batches, drop records and failed payloads are all the writer's own entries."""
    log = SqliteAuditLog(tmp_path / "a.db")
    key = generate_private_key()
    with AuditWriter(log, signer=key, batch_max=3, checkpoint_every=7) as w:
        for i in range(20):
            w.submit("decision", {"i": i})
        w.submit("decision", {"bad": float("nan")})  # fails alone, the rest are written
        w.submit("decision", {"i": 21})
    counts = _counts(log)
    assert counts[-1] == log.count() == 21 and len(counts) >= 2
    assert w.stats().checkpoints_refused == 0


def test_a_sink_that_cannot_show_its_checkpoints_cannot_sign() -> None:
    class Bare:
        def append_batch(self, items: object) -> list[object]:
            return []

        def sign_checkpoint(self, private_key: object) -> object:
            return None

    with pytest.raises(ValueError, match="signs only what it wrote"):
        AuditWriter(Bare(), signer=generate_private_key())  # type: ignore[arg-type]

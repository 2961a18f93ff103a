"""SqliteAuditLog: append/verify, tampering the file behind its back, crashes, concurrency."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.audit.chain import entry_hash, verify_chain
from provguard.clock import FixedClock
from provguard.errors import AuditError, StoreError

T0 = datetime(2019, 3, 20, 8, 30, tzinfo=UTC)


def filled(path: Path, n: int = 20) -> SqliteAuditLog:
    clock = FixedClock(T0)
    log = SqliteAuditLog(path, clock=clock)
    for i in range(n):
        log.append("decision", {"i": i, "effect": "deny", "handle": "小明"})
        clock.advance(1)
    return log


def sql(path: Path, *statements: str, params: tuple[object, ...] = ()) -> None:
    con = sqlite3.connect(path)
    try:
        for s in statements:
            con.execute(s, params if "?" in s else ())
        con.commit()
    finally:
        con.close()


def test_append_verify_and_read_back(tmp_path: Path) -> None:
    clock = FixedClock(T0)
    log = SqliteAuditLog(tmp_path / "a.db", clock=clock)
    assert log.count() == 0 and log.head() is None and log.verify().ok
    e1 = log.append("decision", {"rule": "no-login-grant-transfer", "at": T0})
    clock.advance(2.5)
    e2 = log.append("grant.transfer", {"n": 1}, at=T0 + timedelta(days=1))
    assert (e1.seq, e2.seq) == (1, 2) and e2.prev_hash == e1.hash
    assert e1.at == T0 and e2.at == T0 + timedelta(days=1)
    many = log.append_many([("decision", {"i": i}) for i in range(5)])
    assert [e.seq for e in many] == [3, 4, 5, 6, 7]
    assert all(e.at == T0 + timedelta(seconds=2.5) for e in many)
    stored = list(log.entries())
    assert stored == [e1, e2, *many]
    assert stored[0].payload == {
        "rule": "no-login-grant-transfer",
        "at": "2019-03-20T08:30:00.000000Z",
    }
    assert [e.seq for e in log.entries(kind="decision", limit=3)] == [1, 3, 4]
    assert [e.seq for e in log.entries(start=6)] == [6, 7]
    r = log.verify()
    assert r.ok and r.count == 7 and r.head_hash == many[-1].hash == log.head().hash  # type: ignore[union-attr]
    assert log.count() == 7
    # the store holds canonical JSON text, and the hash is over those bytes
    con = sqlite3.connect(tmp_path / "a.db")
    (payload,) = con.execute("SELECT payload FROM audit_log WHERE seq = 1").fetchone()
    mode = con.execute("PRAGMA journal_mode").fetchone()[0]
    con.close()
    assert payload == '{"at":"2019-03-20T08:30:00.000000Z","rule":"no-login-grant-transfer"}'
    assert mode == "wal"
    assert entry_hash(e1.prev_hash, 1, e1.at, e1.kind, e1.payload) == e1.hash


def test_a_bad_payload_writes_nothing(tmp_path: Path) -> None:
    log = filled(tmp_path / "a.db", 3)
    with pytest.raises(AuditError):
        log.append_many([("decision", {"ok": 1}), ("decision", {"bad": object()})])
    with pytest.raises(AuditError):
        log.append("decision", {"t": datetime(2019, 3, 20)})  # naive time
    assert log.count() == 3 and log.verify().ok


def test_missing_file_is_a_store_error_when_not_creating(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        SqliteAuditLog(tmp_path / "nope.db", create=False)
    assert not (tmp_path / "nope.db").exists()


def test_edited_payload_in_the_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    filled(path)
    sql(path, "UPDATE audit_log SET payload = replace(payload, 'deny', 'permit') WHERE seq = 7")
    r = SqliteAuditLog(path).verify()
    assert not r.ok and r.first_bad_seq == 7 and "edited" in (r.reason or "")
    assert r.count == 6


def test_whitespace_only_edit_is_caught_because_the_stored_bytes_are_hashed(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    filled(path)
    sql(path, "UPDATE audit_log SET payload = replace(payload, ',', ', ') WHERE seq = 3")
    r = SqliteAuditLog(path).verify()
    assert r.first_bad_seq == 3


def test_garbage_in_stored_fields_is_named(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    filled(path)
    sql(
        path,
        "UPDATE audit_log SET payload = '{not json' WHERE seq = 4",
        "UPDATE audit_log SET at = 'yesterday' WHERE seq = 9",
    )
    r = SqliteAuditLog(path).verify()
    assert r.first_bad_seq == 4


def test_deleted_row_is_named(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    filled(path)
    sql(path, "DELETE FROM audit_log WHERE seq = 11")
    r = SqliteAuditLog(path).verify()
    assert not r.ok and r.first_bad_seq == 11 and "missing" in (r.reason or "")


def test_deleted_row_with_renumbering_is_named(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    filled(path)
    sql(
        path,
        "DELETE FROM audit_log WHERE seq = 11",
        "UPDATE audit_log SET seq = seq + 1000 WHERE seq > 11",
        "UPDATE audit_log SET seq = seq - 1001 WHERE seq > 1000",
    )
    r = SqliteAuditLog(path).verify()
    assert r.first_bad_seq == 11 and "written as entry #12" in (r.reason or "")


def test_swapped_seq_of_two_rows_is_named(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    filled(path)
    sql(
        path,
        "UPDATE audit_log SET seq = -1 WHERE seq = 5",
        "UPDATE audit_log SET seq = 5 WHERE seq = 9",
        "UPDATE audit_log SET seq = 9 WHERE seq = -1",
    )
    r = SqliteAuditLog(path).verify()
    assert not r.ok and r.first_bad_seq == 5
    assert "reordered" in (r.reason or "") and "written as #9" in (r.reason or "")


def test_forged_row_inserted_in_the_middle_is_named(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    log = filled(path)
    prev = next(e for e in log.entries() if e.seq == 7)
    # the forger knows the algorithm: a correctly hashed entry #8, later rows renumbered
    at = "2019-03-20T08:30:07.500000Z"
    forged_hash = entry_hash(prev.hash, 8, datetime.fromisoformat(at), "decision", {"i": -1})
    sql(
        path,
        "UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 8",
        "UPDATE audit_log SET seq = seq - 999 WHERE seq > 1000",
    )
    sql(
        path,
        "INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?)",
        params=(8, at, "decision", '{"i":-1}', prev.hash, forged_hash),
    )
    r = SqliteAuditLog(path).verify()
    assert not r.ok and r.first_bad_seq == 8 and "inserted" in (r.reason or "")


def test_forged_row_appended_with_a_made_up_hash_is_named(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    log = filled(path)
    head = log.head()
    assert head is not None
    sql(
        path,
        "INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?)",
        params=(21, "2019-03-21T00:00:00.000000Z", "decision", "{}", head.hash, "ab" * 32),
    )
    r = SqliteAuditLog(path).verify()
    assert r.first_bad_seq == 21


def test_truncation_is_detected_against_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    log = filled(path)
    cp = log.checkpoint()
    assert cp.count == 20
    log.append("decision", {"later": True})
    assert log.verify(cp).ok  # appends after the checkpoint are legitimate
    sql(path, "DELETE FROM audit_log WHERE seq > 17")
    assert log.verify().ok  # a clean cut at the tail looks intact on its own
    r = log.verify(cp)
    assert not r.ok and r.first_bad_seq == 18 and "truncated" in (r.reason or "")


def test_append_many_100k_is_fast_and_verifies(tmp_path: Path) -> None:
    log = SqliteAuditLog(tmp_path / "a.db")
    items = [
        (
            "decision",
            {
                "request": i,
                "app": "douyin",
                "purpose": "social.friend_recommendation",
                "effect": "deny",
                "rules": ["no-platform-profile-in-friend-recommendation"],
            },
        )
        for i in range(100_000)
    ]
    t = time.perf_counter()
    written = log.append_many(items)
    elapsed = time.perf_counter() - t
    assert len(written) == 100_000 and log.count() == 100_000
    assert elapsed < 15, f"append_many of 100k took {elapsed:.1f}s"
    r = log.verify()
    assert r.ok and r.count == 100_000 and r.head_hash == written[-1].hash


def test_concurrent_writers_never_fork_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    SqliteAuditLog(path)
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            log = SqliteAuditLog(path, synchronous="NORMAL")
            for i in range(60):
                if i % 10 == 0:
                    log.append_many([(name, {"i": i, "j": j}) for j in range(5)])
                else:
                    log.append(name, {"i": i})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"w{k}",)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    log = SqliteAuditLog(path)
    assert log.count() == 3 * (54 + 6 * 5)
    assert log.verify().ok


WRITER = """
import sys
from provguard.adapters.audit_sqlite import SqliteAuditLog
log = SqliteAuditLog(sys.argv[1], synchronous="NORMAL")
i = 0
while True:
    log.append_many([("batch", {"i": i, "j": j, "pad": "x" * 200}) for j in range(500)])
    log.append("single", {"i": i})
    i += 1
"""


def test_a_killed_writer_leaves_a_chain_that_verifies(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    log = SqliteAuditLog(path)
    for round_ in range(3):  # kill, restart on the same file, kill again
        before = log.count()
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])
        try:
            deadline = time.monotonic() + 60
            while log.count() < before + 1500 + 700 * round_:
                assert time.monotonic() < deadline, "writer made no progress"
                assert proc.poll() is None, "writer died on its own"
                time.sleep(0.01)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        r = log.verify()
        assert r.ok, r.reason
        # each append_many is all-or-nothing: batches are whole. A kill between a batch and
        # its "single" makes the restarted writer's first batch follow directly, so a run of
        # consecutive batch entries is a whole number of batches.
        entries = list(log.entries())
        batches = [e for e in entries if e.kind == "batch"]
        assert len(batches) % 500 == 0, len(batches)
        run = 0
        for e in entries:
            if e.kind == "batch":
                run += 1
            else:
                assert run > 0 and run % 500 == 0, run
                run = 0
        assert run % 500 == 0, run
        assert verify_chain(entries).ok

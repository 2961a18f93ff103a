"""Session 6, findings I-2 and the time order along the chain.

I-2: someone who can write the folder (but has no signing key) appends forged transfer-audit
decisions reusing the ids of real ones and edits the ``transfers`` table to match. "The newest
entry for an id wins" (a job re-run appends the same ids), so the cross-check used to pass.
With ``audit.pub`` beside the store, a row's chained entry must now be covered by a checkpoint
that key signed: the forged entries are not, and ``audit verify`` / ``check_store`` name the
rows that rest only on unsigned entries.

Time order: ``audit verify`` reports (PG311, exit 1) an entry stamped earlier than its
predecessor by more than ``--time-tolerance`` seconds (default 60).
"""

from __future__ import annotations

import importlib.util
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.adapters.control_sqlite import check_store
from provguard.audit.chain import (
    DEFAULT_TIME_TOLERANCE,
    check_time_order,
    format_at,
    make_entry,
)
from provguard.audit.crosscheck import (
    SIGNATURE_FIELD,
    ChainRecords,
    TransferRow,
    VerifiedRange,
    check_transfers,
)
from provguard.audit.folder import PUBLIC_KEY_FILE, export_checkpoint, folder_signing_key
from provguard.cli.audit import audit_app
from provguard.clock import FixedClock
from provguard.errors import AuditTimeOrderError

ROOT = Path(__file__).parents[2]
_spec = importlib.util.spec_from_file_location(
    "report_conftest_signed_rows", ROOT / "tests" / "report" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_report)

runner = CliRunner()
AT = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)


def _verify(*args: str) -> tuple[int, str]:
    r = runner.invoke(audit_app, ["verify", *args])
    return r.exit_code, r.output


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture()
def job_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A job output folder in miniature: 3 transfers (rows and chained transfer-audit
    decisions made by the real PDP), the folder's key, a signed checkpoint over the whole log
    stored and exported as ``provguard run`` leaves them."""
    monkeypatch.delenv("PROVGUARD_AUDIT_KEY", raising=False)
    root = tmp_path / "out"
    _report.build_small_store(root, ROOT / "policies")
    key, _ = folder_signing_key(root)
    with SqliteAuditLog(root / "control.db", create=False) as log:
        export_checkpoint(log.sign_checkpoint(key), root)
    return root


def _transfer_entries(db: Path) -> dict[str, dict[str, Any]]:
    with SqliteAuditLog(db, create=False) as log:
        recs = ChainRecords.of(log.entries(kind="decision"))
    return {tid: e.payload for tid, e in recs.transfers.items()}


def _forge(root: Path) -> list[str]:
    """I-2 as fresh user 7 did it: the library, no key. Every denied transfer gets a forged
    newer decision (permit, excepted) with the SAME transfer id, appended well-formed to the
    chain (clock after the real entries), and the table is edited to match. Returns the ids."""
    db = root / "control.db"
    forged: list[tuple[str, dict[str, Any]]] = []
    for _tid, p in sorted(_transfer_entries(db).items()):
        if p["effect"] != "deny":
            continue
        forged.append(("decision", {**p, "effect": "permit", "excepted": True}))
    assert forged, "the fixture must hold a denied transfer"
    clock = FixedClock(AT + timedelta(days=1))
    with SqliteAuditLog(db, create=False, clock=clock) as log:
        log.append_many(forged)
    ids = [p["context"]["transfer_id"] for _k, p in forged]
    con = sqlite3.connect(db)
    con.executemany(
        "UPDATE transfers SET decision='permit', excepted=1 WHERE transfer_id=?",
        [(i,) for i in ids],
    )
    con.commit()
    con.close()
    return ids


def test_untampered_folder_verifies_with_every_row_signed(job_folder: Path) -> None:
    code, out = _verify("--log", str(job_folder / "control.db"))
    flat = _flat(out)
    assert code == 0, out
    assert "cross-check transfers: 3 rows, 3 match the chain, 0 discrepancies" in flat
    assert "every chained entry compared is covered by a signed checkpoint (up to #24)" in flat
    assert check_store(job_folder / "control.db").ok


def test_i2_forged_entries_with_real_ids_and_an_edited_table_fail(job_folder: Path) -> None:
    db = job_folder / "control.db"
    ids = _forge(job_folder)
    # the gap as it was: without the folder's key the newest entry wins, and the table agrees
    code, out = _verify("--log", str(db), "--no-beside")
    assert code == 0, out
    assert "signatures not required" in _flat(out)
    (job_folder / PUBLIC_KEY_FILE).rename(job_folder / "elsewhere.pub")
    assert check_store(db).ok
    (job_folder / "elsewhere.pub").rename(job_folder / PUBLIC_KEY_FILE)

    # with audit.pub beside the log (every job folder): the rows rest on unsigned entries
    code, out = _verify("--log", str(db))
    flat = _flat(out)
    assert code == 1, out
    n = len(ids)
    assert f"chain intact: {24 + n} entries" in flat  # the forged entries chain fine
    assert f"cross-check transfers: 3 rows, {3 - n} match the chain, {n} discrepancies" in flat
    assert f"{n} row(s) rest only on entries no signed checkpoint covers (signed up to #24)" in (
        flat
    )
    assert "[PG340]" in flat
    for i in ids:
        assert f"transfers[{i}].signature" in flat
    res = check_store(db)
    bad = res.table("transfers")
    assert bad is not None and set(bad.unsigned) == set(ids)
    assert {d.field for d in bad.discrepancies} == {SIGNATURE_FIELD}
    assert [d.seq for d in bad.discrepancies] == list(range(25, 25 + n))
    # --public-key given explicitly: the same
    code, out = _verify("--log", str(db), "--public-key", str(job_folder / PUBLIC_KEY_FILE))
    assert code == 1 and "[PG340]" in out


def test_a_genuine_rerun_signed_by_the_key_passes(job_folder: Path) -> None:
    """A job re-run appends the same transfer ids again and signs: newest wins, and it is
    covered, so the folder verifies (make demo's flow run twice)."""
    db = job_folder / "control.db"
    again = [("decision", p) for _tid, p in sorted(_transfer_entries(db).items())]
    key, _ = folder_signing_key(job_folder)
    with SqliteAuditLog(db, create=False, clock=FixedClock(AT + timedelta(days=2))) as log:
        log.append_many(again)
        export_checkpoint(log.sign_checkpoint(key), job_folder)
    code, out = _verify("--log", str(db), "--require-signed")
    assert code == 0, out
    assert "cross-check transfers: 3 rows, 3 match the chain, 0 discrepancies" in _flat(out)
    # the re-run's entries are the compared ones (#25-#27), all under the signature
    recs = _transfer_entries(db)
    assert len(recs) == 3


def test_an_unsigned_rerun_of_the_same_decisions_is_still_flagged(job_folder: Path) -> None:
    """Even identical decisions appended without a signature do not vouch: the cross-check
    names the rows (it cannot tell a replay from a forgery), and a signature clears it."""
    db = job_folder / "control.db"
    again = [("decision", p) for _tid, p in sorted(_transfer_entries(db).items())]
    with SqliteAuditLog(db, create=False, clock=FixedClock(AT + timedelta(days=2))) as log:
        log.append_many(again)
    code, out = _verify("--log", str(db))
    assert code == 1 and "3 row(s) rest only on entries no signed checkpoint covers" in _flat(out)


def _row(i: int) -> TransferRow:
    return TransferRow(
        transfer_id=f"trf_{i}",
        grant_id=f"grt_{i}",
        subject_id=i,
        provider="wechat",
        from_app="douyin",
        to_app="duoshan",
        first_used_at=None,
        decision="deny",
        rule_id=None,
        excepted=False,
    )


def _payload(r: TransferRow) -> dict[str, Any]:
    return {
        "stage": "transfer_audit",
        "effect": r.decision,
        "excepted": r.excepted,
        "rules": [],
        "request": {"app": r.from_app, "recipient": r.to_app, "origins": [r.provider]},
        "context": {
            "grant_id": r.grant_id,
            "subject_id": r.subject_id,
            "transfer_id": r.transfer_id,
        },
    }


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), signed=st.integers(0, 14))
def test_rows_after_the_signed_cover_are_exactly_the_unsigned_ones(n: int, signed: int) -> None:
    """Pure: with entries #1..#n (one per row) and a signed cover at #signed, the rows whose
    entry is after it are exactly the signature discrepancies; without a key (signed=None)
    there are none."""
    rows = [_row(i) for i in range(n)]
    prev = None
    entries = []
    for i, r in enumerate(rows):
        prev = make_entry(prev, "decision", _payload(r), AT + timedelta(seconds=i))
        entries.append(prev)
    chained = ChainRecords.of(entries).transfers
    res = check_transfers(rows, chained, VerifiedRange(1, n, signed))
    want = {f"trf_{i}" for i in range(n) if i + 1 > signed}
    assert set(res.unsigned) == want
    assert res.matched == n - len(want)
    assert all(d.field == SIGNATURE_FIELD for d in res.discrepancies)
    assert check_transfers(rows, chained, VerifiedRange(1, n)).ok


# ------------------------------------------------------------------------- time order


def _stamps(offsets: list[float]) -> list[tuple[int, str]]:
    return [(i + 1, format_at(AT + timedelta(seconds=s))) for i, s in enumerate(offsets)]


def test_time_order_pure() -> None:
    assert check_time_order(_stamps([0, 0, 1, 5, 5.5])).ok
    # a step back inside the tolerance (a writer's batch stamped at submission): fine
    assert check_time_order(_stamps([0, 10, 10 - 59.9, 100])).ok
    # one backdated entry is one regression; the entry after it (forward again) is not
    res = check_time_order(_stamps([0, 10, 20, 20 - 86400 * 90, 30, 40]))
    assert not res.ok and [r.seq for r in res.regressions] == [4]
    assert res.regressions[0].behind == timedelta(days=90)
    assert "entry #4 is stamped 2023-10-03T12:00:20.000000Z, 90.0 days before entry #3" in (
        res.message()
    )
    # the tolerance is the option: 0 s flags any step back, 1 day does not flag 61 s
    assert [r.seq for r in check_time_order(_stamps([0, 5, 4.999]), timedelta(0)).regressions] == [
        3
    ]
    assert check_time_order(_stamps([0, 100, 39]), timedelta(days=1)).ok
    assert not check_time_order(_stamps([0, 100, 39])).ok  # 61 s > the default 60 s
    assert timedelta(seconds=60) == DEFAULT_TIME_TOLERANCE
    # unreadable text is listed, not compared
    res = check_time_order([(1, format_at(AT)), (2, "yesterday"), (3, format_at(AT))])
    assert res.ok and res.unreadable == (2,) and res.checked == 3
    with pytest.raises(ValueError):
        check_time_order([], timedelta(seconds=-1))


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(st.integers(-200, 200), st.booleans()), min_size=0, max_size=30),
    st.integers(0, 100),
)
def test_time_order_matches_a_pairwise_reading(steps: list[tuple[int, bool]], tol: int) -> None:
    """Differential: the regressions are exactly the pairs (n-1, n) with t(n) < t(n-1) - tol,
    whether a stamp is in the stored fixed-width form (compared as text) or in another form
    ``parse_at`` reads (``...:SSZ`` without microseconds: parsed)."""
    times = [AT]
    for d, _short in steps:
        times.append(times[-1] + timedelta(seconds=d))
    shorts = [False] + [short for _d, short in steps]
    stamps = [
        (i + 1, format_at(t)[:-8] + "Z" if short else format_at(t))
        for i, (t, short) in enumerate(zip(times, shorts, strict=True))
    ]
    res = check_time_order(stamps, timedelta(seconds=tol))
    want = [i + 1 for i in range(1, len(times)) if times[i] < times[i - 1] - timedelta(seconds=tol)]
    assert [r.seq for r in res.regressions] == want
    assert all(r.at == times[r.seq - 1] and r.prev_at == times[r.seq - 2] for r in res.regressions)
    assert res.unreadable == ()


def test_verify_reports_a_backdated_entry(tmp_path: Path) -> None:
    db = tmp_path / "control.db"
    with SqliteAuditLog(db, clock=FixedClock(AT)) as log:
        log.append("note", {"n": 1})
        log.append("note", {"n": 2}, at=AT + timedelta(seconds=30))
        log.append("instrument_event", {"n": 3}, at=datetime(2019, 4, 1, 9, tzinfo=UTC))
        log.append("note", {"n": 4}, at=AT + timedelta(seconds=40))
    code, out = _verify("--log", str(db))
    flat = _flat(out)
    assert code == 1, out
    assert "chain intact: 4 entries" in flat  # the chain alone cannot tell
    assert "[PG311]" in flat and "1 entry is stamped earlier" in flat
    assert "entry #3 is stamped 2019-04-01T09:00:00.000000Z" in flat
    assert AuditTimeOrderError("x", 3).code == "PG311"
    # a tolerance wide enough to accept it (a documented clock step): exit 0, and it says so
    code, out = _verify("--log", str(db), "--time-tolerance", str(6 * 365 * 86400))
    assert code == 0, out
    assert "timestamps: non-decreasing along the chain (4 entries" in _flat(out)
    code, out = _verify("--log", str(db), "--time-tolerance", "-1")
    assert code == 2


def test_verify_accepts_a_small_step_back(tmp_path: Path) -> None:
    db = tmp_path / "control.db"
    with SqliteAuditLog(db, clock=FixedClock(AT)) as log:
        log.append("note", {"n": 1}, at=AT + timedelta(seconds=30))
        log.append("note", {"n": 2}, at=AT + timedelta(seconds=1))  # 29 s back
    code, out = _verify("--log", str(db))
    assert code == 0, out
    code, out = _verify("--log", str(db), "--time-tolerance", "10")
    assert code == 1 and "[PG311]" in _flat(out)

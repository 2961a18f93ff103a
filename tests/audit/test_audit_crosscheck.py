"""The control store's tables against the hash-chained audit log (provguard.audit.crosscheck).

Pure checks on rows and entries (each field of each table, both directions, entries outside
the verified chain, a hypothesis property that one changed field is exactly one discrepancy),
then the control store's read path: ``SqlControlStore.record_event`` writes the row and its
chained entry together, ``events()`` refuses (PG340 / PG310) an event that does not verify --
the F4 reproduction -- and proves an entry against a signed checkpoint instead of the head.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provguard.adapters import control_sqlite
from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.adapters.control_sqlite import (
    SqlControlStore,
    check_store,
    read_chain_records,
    verify_event_entries,
)
from provguard.audit.chain import GENESIS_HASH, build_entry, make_entry
from provguard.audit.crosscheck import (
    NOT_IN_CHAIN,
    CampaignRow,
    ChainRecords,
    EventRow,
    StoreChainMismatchError,
    StoreTables,
    TransferRow,
    VerifiedRange,
    check_campaigns,
    check_instrument_events,
    check_transfers,
    crosscheck,
)
from provguard.audit.folder import PUBLIC_KEY_FILE
from provguard.audit.signing import generate_private_key, public_key_pem
from provguard.clock import FixedClock
from provguard.errors import AuditChainError

INJ = "cn-tj-binhai-2019-douyin-duoshan"
AT = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
ALL = VerifiedRange(1, 10_000)


def _chain(items: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    out: list[Any] = []
    prev = None
    for i, (kind, payload) in enumerate(items):
        prev = make_entry(prev, kind, payload, AT + timedelta(seconds=i))
        out.append(prev)
    return out


def _transfer_payload(r: TransferRow) -> dict[str, Any]:
    """The payload the main job's DecisionRecorder writes for a transfer-audit decision."""
    return {
        "stage": "transfer_audit",
        "effect": r.decision,
        "excepted": bool(r.excepted),
        "rules": [r.rule_id] if r.rule_id else [],
        "instruments": [INJ] if r.rule_id else [],
        "request": {
            "action": "transfer",
            "app": r.from_app,
            "at": "2019-06-30T00:00:00+00:00",
            "category": "grant.login",
            "grant_first_used_by_recipient_at": (
                r.first_used_at.replace(tzinfo=UTC).isoformat() if r.first_used_at else None
            ),
            "origins": [r.provider],
            "recipient": r.to_app,
        },
        "shadow": [],
        "context": {
            "grant_id": r.grant_id,
            "subject_id": r.subject_id,
            "transfer_id": r.transfer_id,
        },
    }


def _row(i: int, decision: str = "deny", excepted: bool = False) -> TransferRow:
    return TransferRow(
        transfer_id=f"trf_{i}",
        grant_id=f"grt_{i}",
        subject_id=i,
        provider="qq" if i % 2 else "wechat",
        from_app="douyin",
        to_app="duoshan",
        first_used_at=datetime(2019, 4, 29, 22, 3, 51) + timedelta(hours=i),  # naive UTC
        decision=decision,
        rule_id="no-login-grant-transfer",
        excepted=excepted,
    )


# ---------------------------------------------------------------------------- pure checks


def test_event_rows_against_chained_entries() -> None:
    entries = _chain(
        [
            ("instrument_event", {"instrument": INJ, "event": "final_judgment",
                                  "date": "2019-05-01", "replaces": None}),
            ("instrument_event", {"instrument": INJ, "event": "final_judgment",
                                  "date": "2019-06-01", "replaces": "2019-05-01"}),
            ("instrument_event", {"instrument": "other", "event": "repeal",
                                  "date": "2020-01-01", "replaces": None}),
        ]
    )  # fmt: skip
    rec = ChainRecords.of(entries)
    assert rec.events[(INJ, "final_judgment")].seq == 2  # the newest entry wins
    ok = check_instrument_events(
        [
            EventRow(INJ, "final_judgment", date(2019, 6, 1)),
            EventRow("other", "repeal", date(2020, 1, 1)),
        ],
        rec.events,
        ALL,
    )
    assert ok.ok and ok.matched == 2 and ok.entries == 2
    # F4: a backdated row with no entry; the older (replaced) date is not good enough either
    bad = check_instrument_events(
        [
            EventRow(INJ, "final_judgment", date(2019, 5, 1)),
            EventRow("x", "final_judgment", date(2019, 4, 1)),
        ],
        rec.events,
        ALL,
    )
    got = {(d.key, d.field, d.table_value, d.chain_value, d.seq) for d in bad.discrepancies}
    assert got == {
        (f"{INJ}/final_judgment", "on_date", "2019-05-01", "2019-06-01", 2),
        ("x/final_judgment", "on_date", "2019-04-01", None, None),
        ("other/repeal", "on_date", None, "2020-01-01", 3),  # chained, row deleted
    }
    assert bad.matched == 0
    # an entry the caller did not verify does not vouch for its row
    outside = check_instrument_events(
        [EventRow(INJ, "final_judgment", date(2019, 6, 1))],
        {(INJ, "final_judgment"): rec.events[(INJ, "final_judgment")]},
        VerifiedRange(1, 1),
    )
    assert [(d.field, d.seq) for d in outside.discrepancies] == [("chain", 2)]
    assert "outside the verified chain (#1–#1)" in str(outside.discrepancies[0])


def test_transfer_fields_each_compared() -> None:
    rows = [_row(0), _row(1, "permit", True)]
    entries = _chain([("decision", _transfer_payload(r)) for r in rows])
    rec = ChainRecords.of(entries)
    assert check_transfers(rows, rec.transfers, ALL).ok
    # F5: a denial turned into a grandfathered permit, first use moved before the order
    forged = TransferRow(
        **{
            **_row(0).__dict__,
            "decision": "permit",
            "excepted": True,
            "first_used_at": datetime(2019, 3, 1),
        }
    )
    res = check_transfers([forged, rows[1]], rec.transfers, ALL)
    assert {(d.key, d.field, d.table_value, d.chain_value) for d in res.discrepancies} == {
        ("trf_0", "decision", "permit", "deny"),
        ("trf_0", "excepted", "true", "false"),
        ("trf_0", "first_used_at", "2019-03-01T00:00:00+00:00", "2019-04-29T22:03:51+00:00"),
    }
    assert res.matched == 1 and res.rows == 2
    # a row deleted, and a row inserted without a decision
    res = check_transfers([rows[0], _row(7)], rec.transfers, ALL)
    assert {(d.key, d.field, d.table_value, d.chain_value) for d in res.discrepancies} == {
        ("trf_1", "decision", None, "permit"),
        ("trf_7", "decision", "deny", None),
    }


FIELDS = ("decision", "excepted", "rule_id", "first_used_at", "grant_id", "subject_id",
          "provider", "from_app", "to_app")  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=12),
    which=st.integers(min_value=0, max_value=11),
    name=st.sampled_from(FIELDS),
)
def test_one_changed_field_is_one_discrepancy(n: int, which: int, name: str) -> None:
    """Property: rows equal to their chained decisions check clean; changing any one field of
    any one row gives exactly one discrepancy, naming that row and field."""
    rows = [_row(i, *(("permit", True) if i % 3 == 0 else ("deny", False))) for i in range(n)]
    rec = ChainRecords.of(_chain([("decision", _transfer_payload(r)) for r in rows]))
    assert check_transfers(rows, rec.transfers, ALL).ok
    target = rows[which % n]
    changed: dict[str, Any] = {
        "decision": "not_applicable",
        "excepted": not target.excepted,
        "rule_id": "another-rule",
        "first_used_at": datetime(2019, 1, 1),
        "grant_id": "grt_forged",
        "subject_id": 99_999,
        "provider": "apple",
        "from_app": "huoshan",
        "to_app": "xigua",
    }
    forged = TransferRow(**{**target.__dict__, name: changed[name]})
    res = check_transfers(
        [forged if r is target else r for r in rows], rec.transfers, VerifiedRange(1, n)
    )
    assert [(d.key, d.field) for d in res.discrepancies] == [(target.transfer_id, name)]
    assert res.matched == n - 1


def test_campaigns_against_the_chained_record() -> None:
    states = {"changed": 0, "escalated": 0, "exempt": 18, "ignored": 0, "notified": 1031,
              "pending": 0}  # fmt: skip
    payload = {"campaign_id": "c1", "rule_id": "duoshan-no-platform-profile",
               "instrument_id": INJ, "targets": 1049, "exempt": 18, "states": states}  # fmt: skip
    rec = ChainRecords.of(_chain([("campaign", payload)]))
    start = {**states, "notified": 0, "pending": 1031}
    row = CampaignRow("c1", "duoshan-no-platform-profile", INJ, 1049, (start, states))
    later = CampaignRow("manual", "r", "i", 3, ())  # started by 'provguard campaign start'
    ok = check_campaigns([row, later], rec.campaigns, ALL)
    assert ok.ok and ok.matched == 1 and ok.unchained == ("manual",)
    res = check_campaigns(
        [CampaignRow("c1", "duoshan-no-platform-profile", "x", 1000, (start,))],
        rec.campaigns,
        ALL,
    )
    assert [(d.field, d.table_value, d.chain_value) for d in res.discrepancies] == [
        ("instrument_id", "x", INJ),
        ("targets", "1000", "1049"),
        (
            "history",
            "changed 0, escalated 0, exempt 18, ignored 0, notified 0, pending 1031",
            "changed 0, escalated 0, exempt 18, ignored 0, notified 1031, pending 0",
        ),
    ]
    gone = check_campaigns([], rec.campaigns, ALL)
    assert [(d.key, d.table_value) for d in gone.discrepancies] == [("c1", None)]


def test_crosscheck_result_and_error() -> None:
    rows = (_row(0),)
    entries = _chain([("decision", _transfer_payload(rows[0])), ("note", {"x": 1})])
    tables = StoreTables(events=(EventRow(INJ, "final_judgment", date(2019, 4, 1)),),
                         transfers=rows, campaigns=None)  # fmt: skip
    res = crosscheck(tables, entries, VerifiedRange(1, 2))
    assert not res.ok and res.failed_tables() == ("instrument_events",)
    assert res.table("campaigns") is not None and not res.table("campaigns").present  # type: ignore[union-attr]
    assert dict(res.not_in_chain) == dict(NOT_IN_CHAIN)
    with pytest.raises(StoreChainMismatchError) as info:
        res.raise_for_failure()
    assert info.value.code == "PG340" and len(info.value.discrepancies) == 1
    assert f"instrument_events[{INJ}/final_judgment].on_date" in str(info.value)
    assert crosscheck(StoreTables(transfers=rows), entries, VerifiedRange(1, 2)).ok


# ---------------------------------------------------------------------- the control store


def _store(tmp_path: Path) -> tuple[Path, SqlControlStore]:
    db = tmp_path / "control.db"
    return db, SqlControlStore(db)


def test_record_event_writes_row_and_entry_together(tmp_path: Path) -> None:
    db, store = _store(tmp_path)
    with SqliteAuditLog(db, clock=FixedClock(AT)) as log:
        log.append("note", {"n": 1})
    first = store.record_event(INJ, "final_judgment", date(2019, 5, 1), at=AT)
    second = store.record_event(INJ, "final_judgment", date(2019, 6, 1), at=AT)
    assert (first.seq, second.seq) == (2, 3)
    assert second.payload == {"instrument": INJ, "event": "final_judgment",
                              "date": "2019-06-01", "replaces": "2019-05-01"}  # fmt: skip
    assert store.events() == {(INJ, "final_judgment"): date(2019, 6, 1)}
    with SqliteAuditLog(db, create=False) as log:
        assert log.verify().ok and log.count() == 3
    # a failed write leaves neither the row nor the entry
    with pytest.raises(Exception, match="timezone-aware"):
        store.record_event("other", "final_judgment", date(2019, 7, 1), at=datetime(2024, 1, 1))
    assert store.raw_events() == {(INJ, "final_judgment"): date(2019, 6, 1)}
    with SqliteAuditLog(db, create=False) as log:
        assert log.count() == 3


def test_events_refuse_what_the_chain_does_not_hold(tmp_path: Path) -> None:
    """F4: a hand-inserted (backdated) final judgment is not applied; nor is an edited date,
    nor a row whose entry was edited."""
    db, store = _store(tmp_path)
    assert store.events() == {}  # no rows: nothing to verify
    con = sqlite3.connect(db)
    con.execute(f"INSERT INTO instrument_events VALUES ('{INJ}', 'final_judgment', '2019-04-01')")
    con.commit()
    with pytest.raises(StoreChainMismatchError) as info:
        store.events()
    assert info.value.code == "PG340"
    assert f"instrument_events[{INJ}/final_judgment].on_date: table has '2019-04-01', the chain" \
        " has nothing" in str(info.value)  # fmt: skip
    assert store.raw_events() == {(INJ, "final_judgment"): date(2019, 4, 1)}
    # recorded properly, then the row's date edited by hand
    con.execute("DELETE FROM instrument_events")
    con.commit()
    store.record_event(INJ, "final_judgment", date(2019, 7, 1), at=AT)
    assert store.events() == {(INJ, "final_judgment"): date(2019, 7, 1)}
    con.execute("UPDATE instrument_events SET on_date = '2019-04-01'")
    con.commit()
    with pytest.raises(StoreChainMismatchError, match="entry #1 has '2019-07-01'"):
        store.events()
    # the entry edited to match the row: its hash no longer matches (PG310)
    con.execute(
        "UPDATE audit_log SET payload = replace(payload, '2019-07-01', '2019-04-01') "
        "WHERE kind = 'instrument_event'"
    )
    con.commit()
    with pytest.raises(AuditChainError) as chain:
        store.events()
    assert chain.value.code == "PG310" and chain.value.seq == 1
    con.close()


def _append_raw(db: Path, entry: Any) -> None:
    con = sqlite3.connect(db)
    con.execute(
        "INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?)",
        (entry.seq, entry.stored_at(), entry.kind, entry.stored_payload(), entry.prev_hash,
         entry.hash),
    )  # fmt: skip
    con.commit()
    con.close()


def test_a_rewritten_entry_with_a_relinked_successor_is_caught(tmp_path: Path) -> None:
    """The entry rewritten with a correct hash, and the next entry relinked to it: the break
    two entries later is found by walking to the head (not only the neighbours)."""
    db, store = _store(tmp_path)
    store.record_event(INJ, "final_judgment", date(2019, 7, 1), at=AT)
    with SqliteAuditLog(db, clock=FixedClock(AT)) as log:
        log.append_many([("note", {"n": i}) for i in range(3)])
    con = sqlite3.connect(db)
    rows = con.execute("SELECT seq, at, kind, payload FROM audit_log ORDER BY seq").fetchall()
    forged = build_entry(1, GENESIS_HASH, "instrument_event",
                         {"instrument": INJ, "event": "final_judgment", "date": "2019-04-01",
                          "replaces": None}, AT)  # fmt: skip
    relinked = build_entry(2, forged.hash, "note", {"n": 0}, AT)
    con.execute("DELETE FROM audit_log WHERE seq <= 2")
    con.execute("UPDATE instrument_events SET on_date = '2019-04-01'")
    con.commit()
    con.close()
    _append_raw(db, forged)
    _append_raw(db, relinked)
    assert len(rows) == 4
    with pytest.raises(AuditChainError) as info:
        store.events()
    assert info.value.seq == 3  # entry #3 still links to the genuine #2


def test_entries_are_proven_against_a_signed_checkpoint(tmp_path: Path) -> None:
    """With audit.pub beside the log, the walk stops at the first signed checkpoint after the
    event's entry; without it, it goes to the head. A forged signature is not an end point."""
    db, store = _store(tmp_path)
    store.record_event(INJ, "final_judgment", date(2019, 7, 1), at=AT)
    key = generate_private_key()
    with SqliteAuditLog(db, clock=FixedClock(AT)) as log:
        log.append_many([("note", {"n": i}) for i in range(5)])
        log.sign_checkpoint(key)  # at #6
        log.append_many([("note", {"n": i}) for i in range(5, 9)])  # #7-#10
    with store.engine.connect() as conn:
        entries = list(read_chain_records(conn).events.values())
        assert verify_event_entries(conn, entries, None) == VerifiedRange(1, 10)
        assert verify_event_entries(conn, entries, key.public_key()) == VerifiedRange(1, 6)
        other = generate_private_key().public_key()
        assert verify_event_entries(conn, entries, other) == VerifiedRange(1, 10)
    (tmp_path / PUBLIC_KEY_FILE).write_text(public_key_pem(key.public_key()))
    assert store.public_key() is not None
    # an edit after the checkpoint does not matter to the event; one before it does
    con = sqlite3.connect(db)
    con.execute("UPDATE audit_log SET payload = '{\"n\":99}' WHERE seq = 9")
    con.commit()
    assert store.events() == {(INJ, "final_judgment"): date(2019, 7, 1)}
    con.execute("UPDATE audit_log SET payload = '{\"n\":98}' WHERE seq = 4")
    con.commit()
    con.close()
    # this process already proved entry #1 against checkpoint #6: that proof stays true (the
    # entry still hashes to what was proven); a fresh process walks again and finds #4
    assert store.events() == {(INJ, "final_judgment"): date(2019, 7, 1)}
    control_sqlite._VERIFIED.clear()
    with pytest.raises(AuditChainError) as info:
        store.events()
    assert info.value.seq == 4


def test_check_store_on_a_store_with_transfers(tmp_path: Path) -> None:
    import pyarrow as pa

    db, store = _store(tmp_path)
    rows = [_row(i, *(("permit", True) if i == 2 else ("deny", False))) for i in range(4)]
    store.save_transfers(
        pa.Table.from_pylist(
            [
                {
                    **r.__dict__,
                    "first_used_at": r.first_used_at.replace(tzinfo=UTC),  # type: ignore[union-attr]
                    "excepted": int(bool(r.excepted)),
                }
                for r in rows
            ]
        )
    )
    with SqliteAuditLog(db, clock=FixedClock(AT)) as log:
        log.append_many([("decision", _transfer_payload(r)) for r in rows])
        log.append("decision", {"stage": "recommend", "effect": "deny"})
    res = check_store(db)
    assert res.ok and res.table("transfers").matched == 4  # type: ignore[union-attr]
    con = sqlite3.connect(db)
    con.execute("UPDATE transfers SET decision='permit', excepted=1 WHERE decision='deny'")
    con.commit()
    con.close()
    res = check_store(db)
    assert res.failed_tables() == ("transfers",) and len(res.discrepancies) == 6
    # the caller's verified range is honoured (entries #4-#5 not verified)
    res = check_store(db, verified=VerifiedRange(1, 3))
    assert any(d.field == "chain" and d.key == "trf_3" for d in res.discrepancies)


def test_check_store_never_writes_to_evidence(tmp_path: Path) -> None:
    """A bare audit log (no control tables): nothing is created, the tables read as absent."""
    db = tmp_path / "audit.db"
    with SqliteAuditLog(db, clock=FixedClock(AT)) as log:
        log.append("note", {"n": 1})

    def tables() -> list[str]:
        con = sqlite3.connect(db)
        try:
            return sorted(r[0] for r in con.execute("SELECT name FROM sqlite_master"))
        finally:
            con.close()

    before = tables()
    res = check_store(db)
    assert tables() == before and "transfers" not in before
    assert res.ok and [t.present for t in res.tables] == [False, False, False]

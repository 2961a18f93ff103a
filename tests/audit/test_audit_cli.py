"""``provguard audit verify|show`` through Typer's CliRunner."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.cli.audit import audit_app
from provguard.clock import FixedClock

runner = CliRunner()


def make_log(path: Path) -> SqliteAuditLog:
    log = SqliteAuditLog(path, clock=FixedClock(datetime(2019, 3, 20, tzinfo=UTC)))
    log.append_many([("decision", {"i": i, "handle": "<script>小明"}) for i in range(8)])
    log.append("grant.transfer", {"recipient": "duoshan", "effect": "deny"})
    return log


def test_verify_intact(tmp_path: Path) -> None:
    log = make_log(tmp_path / "a.db")
    head = log.head()
    assert head is not None
    result = runner.invoke(audit_app, ["verify", "--log", str(tmp_path / "a.db")])
    assert result.exit_code == 0, result.output
    assert f"chain intact: 9 entries, head {head.hash}" in result.output


def test_verify_broken(tmp_path: Path) -> None:
    make_log(tmp_path / "a.db")
    con = sqlite3.connect(tmp_path / "a.db")
    con.execute("UPDATE audit_log SET kind = 'decision.permit' WHERE seq = 4")
    con.commit()
    con.close()
    result = runner.invoke(audit_app, ["verify", "--log", str(tmp_path / "a.db")])
    assert result.exit_code == 1
    assert "chain broken at entry #4: entry #4 was edited" in result.output


def test_verify_against_checkpoint(tmp_path: Path) -> None:
    log = make_log(tmp_path / "a.db")
    cp = log.checkpoint()
    args = [
        "verify",
        "--log",
        str(tmp_path / "a.db"),
        "--expect-count",
        str(cp.count),
        "--expect-head",
        cp.head_hash,
    ]
    assert runner.invoke(audit_app, args).exit_code == 0
    con = sqlite3.connect(tmp_path / "a.db")
    con.execute("DELETE FROM audit_log WHERE seq = 9")
    con.commit()
    con.close()
    result = runner.invoke(audit_app, args)
    assert result.exit_code == 1 and "chain broken at entry #9" in result.output
    assert "truncated" in result.output
    assert runner.invoke(audit_app, args[:5]).exit_code == 2  # count without head


def test_missing_log_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(audit_app, ["verify", "--log", str(tmp_path / "none.db")])
    assert result.exit_code == 2 and "no audit log" in result.output
    assert not (tmp_path / "none.db").exists()


def test_show_table_and_json(tmp_path: Path) -> None:
    make_log(tmp_path / "a.db")
    result = runner.invoke(
        audit_app, ["show", "--log", str(tmp_path / "a.db"), "--kind", "grant.transfer"]
    )
    assert result.exit_code == 0, result.output
    assert "grant.transfer" in result.output
    assert "(1 shown)" in result.output
    result = runner.invoke(
        audit_app, ["show", "--log", str(tmp_path / "a.db"), "--limit", "3", "--json"]
    )
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [r["seq"] for r in lines] == [1, 2, 3]
    assert lines[0]["payload"] == {"i": 0, "handle": "<script>小明"}

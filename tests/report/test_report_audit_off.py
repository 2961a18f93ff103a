"""An HTTP service run with its audit off is named, not counted as zero (fresh user 12, M2).

``provguard serve --audit-mode off`` appends one ``service.audit_off`` entry (start time, pid)
and then answers decisions without recording them. ``provguard report --store`` must name each
such entry in sections 2, 6 and 7 and count the service's recorded decisions as "at least N";
``provguard audit verify`` must name it too (a warning: the chain itself is intact, exit 0).
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from html import unescape
from pathlib import Path

import typer
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.audit.records import decision_payload
from provguard.cli.audit import audit_app
from provguard.cli.report import report_cmd
from provguard.decide import Request, decide
from provguard.policy import load_policy_dir
from provguard.report.audit_text import AUDIT_OFF_KIND
from provguard.report.from_store import build_model_from_store
from provguard.service.app import ServiceSettings, start_writer

from .conftest import build_small_store

runner = CliRunner()
cli = typer.Typer()
cli.command("report")(report_cmd)
cli.add_typer(audit_app, name="audit")
POLICY = Path(__file__).parents[2] / "policies"


def _text(html: str) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def _service_decisions(root: Path, n: int) -> None:
    """``n`` decisions as the service records them (``stage="service"``)."""
    policy = load_policy_dir(POLICY)
    log = SqliteAuditLog(root / "control.db", create=False)
    for _ in range(n):
        d = decide(
            policy,
            Request(
                app="douyin",
                action="use",
                category="user.avatar",
                origins=frozenset({"wechat"}),
                at=datetime(2019, 7, 1, tzinfo=UTC),
                purpose="social.friend_recommendation",
            ),
        )
        log.append("decision", decision_payload(d, stage="service", context={"client": "t"}))
    log.close()


def _serve_audit_off(root: Path) -> int:
    """What ``serve --audit-mode off`` does first (the real code path); returns the seq."""
    log = SqliteAuditLog(root / "control.db", create=False)
    try:
        assert start_writer(ServiceSettings(store=root, audit_mode="off"), log) is None
        entry = next(iter(log.entries(kind=AUDIT_OFF_KIND)))
        return entry.seq
    finally:
        log.close()


def _report(root: Path) -> str:
    res = runner.invoke(cli, ["report", "--store", str(root)], env={"COLUMNS": "300"})
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    return (root / "report.html").read_text(encoding="utf-8")


def test_report_and_verify_name_the_unaudited_period(tmp_path: Path) -> None:
    root = tmp_path / "out"
    build_small_store(root, POLICY)
    _service_decisions(root, 2)
    seq = _serve_audit_off(root)
    model = build_model_from_store(root)
    (off,) = model.service_audit_off
    assert off.seq == seq and off.pid == os.getpid()
    started = datetime.fromisoformat(off.started_at)
    assert abs((datetime.now(UTC) - started).total_seconds()) < 120
    sentence = (
        f"audit entry #{seq} (service.audit_off): the HTTP service answered decisions without "
        f"recording them from {off.started_at} (pid {os.getpid()}); their number is unknown"
    )
    html = _text(_report(root))
    two = html[html.index("2. Policy decisions") : html.index("3. Login-grant transfers")]
    assert sentence in two and "it made at least 2 decisions" in two
    assert "Decisions made by the HTTP service (at least 2)" in two
    six = html[html.index("6. Audit log") : html.index("7. Notes")]
    assert f"HTTP service with its audit off {sentence}" in six
    seven = html[html.index("7. Notes") :]
    assert "at least 2 made by the HTTP service" in seven
    assert "A" + sentence[1:] in seven
    res = runner.invoke(cli, ["audit", "verify", "--log", str(root / "control.db")])
    flat = " ".join(res.output.split())
    assert f"warning: {sentence}" in flat
    assert "chain intact" in flat


def test_without_a_marker_the_count_is_exact(tmp_path: Path) -> None:
    root = tmp_path / "out"
    build_small_store(root, POLICY)
    _service_decisions(root, 3)
    assert build_model_from_store(root).service_audit_off == ()
    html = _text(_report(root))
    assert "Decisions made by the HTTP service (3)" in html
    assert "3 made by the HTTP service" in html and "at least" not in html
    assert "service.audit_off" not in html
    res = runner.invoke(cli, ["audit", "verify", "--log", str(root / "control.db")])
    assert "service.audit_off" not in res.output and "warning: audit entry" not in res.output


def test_a_marker_without_service_decisions_reads_at_least_zero(tmp_path: Path) -> None:
    root = tmp_path / "out"
    build_small_store(root, POLICY)
    seq = _serve_audit_off(root)
    html = _text(_report(root))
    assert f"audit entry #{seq} (service.audit_off)" in html
    assert "at least 0 made by the HTTP service" in html
    assert "it made at least 0 decisions" in html

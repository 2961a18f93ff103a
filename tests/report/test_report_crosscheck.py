"""A court reader never sees tampered numbers next to "signed, intact" (findings F4, F5).

The main job runs once on the first 600 lines of the real ego-Facebook graph; each test tampers
a copy of its output folder as the findings did, by hand in SQLite, and checks that the report
withholds the section (PG340, naming the discrepancy), that ``provguard query`` and ``provguard
decide`` refuse under a store whose events do not verify, and that the untampered folder
reports exactly the figures its tables hold with every cross-checked section chain-backed.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from datetime import date
from html import unescape
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.adapters.control_sqlite import SqlControlStore
from provguard.audit.folder import cover_own_entry
from provguard.cli.policy import decide_cmd
from provguard.cli.query import query_app
from provguard.cli.report import report_cmd
from provguard.config import RunSettings
from provguard.job.run import run_main_job
from provguard.report.from_store import build_model_from_store
from provguard.report.render import render_html

INJ = "cn-tj-binhai-2019-douyin-duoshan"
runner = CliRunner()
cli = typer.Typer()
cli.command("decide")(decide_cmd)
cli.command("report")(report_cmd)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> Path:
    work = tmp_path_factory.mktemp("xcheck")
    lines = (repo_root / "data/graphs/snap-ego-facebook.txt").read_text().splitlines()
    graph = work / "ego-facebook-600.txt"
    graph.write_text("\n".join(lines[:600]) + "\n")
    out = work / "demo"
    run_main_job(RunSettings(out=out, graph=graph, policy=repo_root / "policies"))
    return out


def _copy(demo: Path, tmp_path: Path, sql: str | None = None) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(demo, out)
    if sql is not None:
        con = sqlite3.connect(out / "control.db")
        con.execute(sql)
        con.commit()
        con.close()
    return out


def _counts(folder: Path) -> tuple[int, int, int]:
    con = sqlite3.connect(folder / "control.db")
    total, denied, excepted = con.execute(
        "SELECT count(*), sum(decision = 'deny'), sum(excepted = 1) FROM transfers"
    ).fetchone()
    con.close()
    return int(total), int(denied), int(excepted)


def _text(html: str) -> str:
    html = re.sub(r"<svg.*?</svg>", "", html, flags=re.S)
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def _section(html: str, name: str) -> str:
    start = html.index(f'aria-labelledby="{name}">')
    return html[start : html.index("</section>", start)]


def test_untampered_store_reports_its_figures_chain_backed(demo: Path, tmp_path: Path) -> None:
    folder = _copy(demo, tmp_path)
    total, denied, excepted = _counts(folder)
    assert denied > 0 and excepted > 0
    model = build_model_from_store(folder)
    check = model.chain_check
    assert check is not None and check.ok
    con = sqlite3.connect(folder / "grants.db")
    evidence = {
        t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        for t in ("recipient_first_use", "separate_consents", "oauth_tokens")
    }
    con.close()
    assert evidence["recipient_first_use"] > 0 and evidence["oauth_tokens"] > 0
    assert {t.table: (t.rows, t.matched) for t in check.tables} == {
        "instrument_events": (0, 0),
        "transfers": (total, total),
        "campaigns": (1, 1),
        # the rules against the run's job.policy entry (fresh user 10, H4)
        "rules": (3, 3),
        # the instrument row against the same entry (findings I, M1)
        "instruments": (1, 1),
        # the grant registry beside the log, checked as `audit verify` checks it
        "oauth_grants": (16, 16),
        "revocation_jobs": (4, 4),
        # its evidence tables (findings F3 / G11): every row matches its chained entry
        **{t: (n, n) for t, n in evidence.items()},
        "transfer_attempts": (16, 16),
        # the report files the run anchored in its job.report entry (fresh user 10, H3)
        "evidence.json": (1, 1),
        "data/profile_scan.parquet": (1, 1),
        "data/recommendations.parquet": (1, 1),
    }
    t = model.transfers
    assert t is not None and (t.total, t.denied, t.grandfathered_permitted) == (
        total,
        denied,
        excepted,
    )
    assert all(i.in_force is True for i in model.instruments)
    # exactly as before: without the check the HTML differs only in section 6's new rows
    plain = render_html(model.model_copy(update={"chain_check": None}))
    html = render_html(model)
    for name in ("s-summary", "s-instruments", "s-decisions", "s-transfers", "s-campaigns"):
        assert _section(html, name) == _section(plain, name)
    six = _text(_section(html, "s-audit"))
    assert "Store tables checked against the chain agree" in six
    assert f"transfers 3. Login-grant transfers {total:,} {total:,} {total:,} 0 chain-backed" in six
    assert "Not recorded in the chain" in six and "grants.db (grant registry)" not in six
    assert "oauth_grants 3a. Sign-ins and token exchanges 16 16 16 0 chain-backed" in six
    # the job's own report says the same
    job_html = _text((folder / "report.html").read_text(encoding="utf-8"))
    assert "chain-backed" in job_html and "PG340" not in job_html


def test_f5_edited_transfers_are_withheld(demo: Path, tmp_path: Path) -> None:
    """F5: denials turned into grandfathered permits in the mutable table."""
    total, denied, excepted = _counts(demo)
    folder = _copy(
        demo,
        tmp_path,
        "UPDATE transfers SET decision='permit', excepted=1, "
        "first_used_at='2019-03-01 00:00:00.000000' WHERE decision='deny'",
    )
    res = runner.invoke(cli, ["report", "--store", str(folder)], env={"COLUMNS": "300"})
    assert res.exit_code == 1, res.output
    flat = " ".join(res.output.split())
    assert f"error [PG340] {3 * denied:,} discrepancies" in flat
    assert "(transfers " in flat and "first: transfers[trf_" in flat
    assert "table 'permit', chain 'deny'" in flat
    html = (folder / "report.html").read_text(encoding="utf-8")
    three = _text(_section(html, "s-transfers"))
    assert "[PG340] Withheld: the control store's transfers table disagrees" in three
    assert f"in {3 * denied:,} places ({excepted:,} of {total:,} rows match)" in three
    assert "Permitted — grandfathered" not in three  # no tampered figure is shown
    summary = _text(_section(html, "s-summary"))
    assert f"{total:,} permitted" not in summary and "[PG340] Withheld" in summary
    evidence = json.loads((folder / "evidence.json").read_text(encoding="utf-8"))
    assert evidence["report"]["transfers"] is None
    assert evidence["report"]["chain_check"]["total_discrepancies"] == 3 * denied
    first = evidence["report"]["chain_check"]["discrepancies"][0]
    assert (first["table"], first["field"], first["table_value"], first["chain_value"]) == (
        "transfers",
        "decision",
        "permit",
        "deny",
    )
    # the decisions (chain-backed) are still reported
    assert "no-login-grant-transfer" in _text(_section(html, "s-decisions"))


def test_f4_backdated_event_is_refused_everywhere(demo: Path, tmp_path: Path) -> None:
    """F4: a final judgment inserted by hand ends nothing: decide, query and the report refuse
    with the discrepancy named."""
    folder = _copy(
        demo,
        tmp_path,
        f"INSERT INTO instrument_events VALUES ('{INJ}', 'final_judgment', '2019-04-01')",
    )
    db = folder / "control.db"
    named = f"instrument_events[{INJ}/final_judgment].on_date: table has '2019-04-01'"
    dec = runner.invoke(
        cli,
        ["decide", "--app", "douyin", "--action", "use", "--purpose",
         "social.friend_recommendation", "--category", "user.avatar", "--origin", "wechat",
         "--at", "2019-06-30", "--store", str(db)],
        env={"COLUMNS": "400"},
    )  # fmt: skip
    assert dec.exit_code == 2, dec.output
    assert "[PG340]" in dec.output and named in " ".join(dec.output.split())
    assert "NOT_APPLICABLE" not in dec.output
    q = runner.invoke(
        query_app,
        ["--app", "douyin", "--purpose", "social.friend_recommendation", "--store",
         str(folder / "data"), "SELECT subject_id, handle FROM profiles LIMIT 3"],
        env={"COLUMNS": "400"},
    )  # fmt: skip
    assert q.exit_code == 2, q.output
    assert "[PG340]" in q.output and named in " ".join(q.output.split())
    model = build_model_from_store(folder)
    assert model.chain_check is not None and model.chain_check.failed("instrument_events")
    assert all(i.in_force is None for i in model.instruments)
    html = render_html(model)
    one = _text(_section(html, "s-instruments"))
    assert "withheld [PG340] Withheld: the control store's instrument_events table" in one
    assert "in force" not in one.replace("in force / ended", "")
    assert "status withheld (PG340)" in _text(html[: html.index("</header>")])


def test_edited_campaign_is_withheld(demo: Path, tmp_path: Path) -> None:
    folder = _copy(demo, tmp_path, "UPDATE campaigns SET rule_id = 'no-such-rule'")
    model = build_model_from_store(folder)
    assert model.campaigns is None and model.transfers is not None
    assert model.chain_check is not None and model.chain_check.failed("campaigns")
    d = model.chain_check.discrepancies[0]
    assert (d.table, d.field, d.table_value, d.chain_value) == (
        "campaigns",
        "rule_id",
        "no-such-rule",
        "duoshan-no-platform-profile",
    )
    campaigns = _text(_section(render_html(model), "s-campaigns"))
    assert "[PG340] Withheld: the control store's campaigns table" in campaigns


def test_recorded_event_verifies_and_ends_the_injunction(demo: Path, tmp_path: Path) -> None:
    """The documented way (the row and its chained entry in one transaction) is applied by
    decide and reported as chain-backed, with the instrument no longer in force."""
    folder = _copy(demo, tmp_path)
    own = SqlControlStore(folder / "control.db").record_event(
        INJ, "final_judgment", date(2019, 5, 1)
    )
    # the job's folder has audit.pub: an event applies once a signed checkpoint covers it
    with SqliteAuditLog(folder / "control.db", create=False) as log:
        assert cover_own_entry(log, folder, own).foreign is None
    dec = runner.invoke(
        cli,
        ["decide", "--app", "douyin", "--action", "use", "--purpose",
         "social.friend_recommendation", "--category", "user.avatar", "--origin", "wechat",
         "--at", "2019-06-30", "--store", str(folder / "control.db")],
    )  # fmt: skip
    assert dec.exit_code == 0 and "NOT_APPLICABLE" in dec.output, dec.output
    model = build_model_from_store(folder, as_of=date(2019, 6, 30))
    assert model.chain_check is not None and model.chain_check.ok
    assert [i.in_force for i in model.instruments] == [False]
    assert "(recorded on 2019-05-01)" in model.instruments[0].effective_until


def test_audit_verify_cross_checks_the_tables(demo: Path, tmp_path: Path) -> None:
    """``provguard audit verify`` compares the tables with the chain too: intact and matching
    on the job's own folder, PG340 (exit 1) once a denial is turned into a permit."""
    from provguard.cli.audit import audit_app

    total, denied, _ = _counts(demo)
    clean = runner.invoke(
        audit_app, ["verify", "--log", str(demo / "control.db")], env={"COLUMNS": "300"}
    )
    assert clean.exit_code == 0, clean.output
    assert f"cross-check transfers: {total} rows, {total} match the chain, 0 discrepancies" in (
        clean.output
    )
    folder = _copy(demo, tmp_path, "UPDATE transfers SET decision='permit' WHERE decision='deny'")
    bad = runner.invoke(
        audit_app, ["verify", "--log", str(folder / "control.db")], env={"COLUMNS": "300"}
    )
    assert bad.exit_code == 1, bad.output
    flat = " ".join(bad.output.split())
    assert "chain intact" in flat  # the chain itself is untouched ...
    assert f"cross-check transfers: {total} rows, {total - denied} match the chain" in flat
    assert "error [PG340]" in flat and "table has 'permit'" in flat  # ... the table is not


def test_a_tampered_grant_registry_withholds_sign_ins(demo: Path, tmp_path: Path) -> None:
    """Fresh user 9, G13: with grants.db edited, `audit verify` failed (PG340) while the
    rebuilt report said the tables agree and showed the edited figures."""
    folder = _copy(demo, tmp_path)
    con = sqlite3.connect(folder / "grants.db")
    (n,) = con.execute("SELECT count(*) FROM oauth_grants").fetchone()
    con.execute("UPDATE oauth_grants SET scopes = 'snsapi_userinfo friends'")
    con.commit()
    con.close()
    model = build_model_from_store(folder)
    check = model.chain_check
    assert check is not None and not check.ok
    grants = next(t for t in check.tables if t.table == "oauth_grants")
    assert grants.discrepancies == n > 0
    assert model.sign_ins is None  # withheld, as the transfers are for an edited table
    html = render_html(model)
    assert "PG340 disagree" in _text(_section(html, "s-audit"))
    withheld = _text(_section(html, "s-signins"))
    assert "[PG340] Withheld: the grant registry's oauth_grants table disagrees" in withheld

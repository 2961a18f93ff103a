"""Report section 3a "Sign-ins and token exchanges", read from the grant registry the main
job's grants stage leaves behind (real sign-ins over HTTP on a slice of ego-Facebook), checked
against what the stage itself counted from the HTTP answers, and against raw SQL."""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from provguard.report.from_store import build_model_from_store
from provguard.report.render import render_html, to_evidence_json

from .conftest import build_small_store, copy_registry

NOW = datetime(2019, 7, 1, tzinfo=UTC)
RULE = "no-login-grant-transfer"
INSTRUMENT = "cn-tj-binhai-2019-douyin-duoshan"


@pytest.fixture
def folder(tmp_path: Path, repo_root: Path, grants_stage: tuple[Path, Any]) -> tuple[Path, Any]:
    root = tmp_path / "out"
    build_small_store(root, repo_root / "policies")
    db, result = grants_stage
    copy_registry(db, root / "grants.db")
    return root, result


def test_section_counts_equal_the_stage_and_the_registry(folder: tuple[Path, Any]) -> None:
    root, result = folder
    model = build_model_from_store(root, generated_at=NOW)
    s = model.sign_ins
    assert s is not None and s.source == str(root / "grants.db")
    # what the stage counted from its HTTP answers: 16 sign-ins, 8 denied, 8 permitted (all 8
    # grandfathered), denied by the injunction's transfer rule
    assert (result.signed_in, result.exchanges_denied, result.exchanges_permitted) == (16, 8, 8)
    assert s.completed == s.started == result.signed_in
    assert s.exchanges_total == len(result.exchanges) == 16
    assert s.exchanges_denied == result.exchanges_denied
    assert s.exchanges_permitted == result.exchanges_permitted
    assert s.exchanges_grandfathered == result.exchanges_grandfathered == 8
    assert result.denied_by == ((RULE, INSTRUMENT),)
    by_outcome = {(e.outcome, e.rule_id, e.instrument_id): e.count for e in s.exchanges}
    assert by_outcome == {("denied", RULE, INSTRUMENT): 8, ("grandfathered", RULE, INSTRUMENT): 8}
    assert {(e.from_app, e.to_app, e.kind) for e in s.exchanges} == {
        ("douyin", "duoshan", "token_exchange")
    }
    # per provider: the subjects the stage signed in through each
    per_provider = Counter(provider for _, provider, _, _ in result.exchanges)
    assert {r.provider: r.completed for r in s.sign_ins} == dict(per_provider)
    assert {r.app for r in s.sign_ins} == {"douyin"}
    # grant status now: the 4 revoked at the platform were purged, the rest are active
    status: Counter[str] = Counter()
    for r in s.sign_ins:
        status.update(r.statuses)
    assert status == Counter({"active": 16 - result.revoked, "purged": result.revoked})
    # differential against raw SQL on the file
    with sqlite3.connect(root / "grants.db") as conn:
        raw = dict(
            conn.execute(
                "SELECT effect || ':' || excepted, count(*) FROM transfer_attempts GROUP BY 1"
            ).fetchall()
        )
        grants = conn.execute("SELECT count(*) FROM oauth_grants").fetchone()[0]
    conn.close()
    assert raw == {"deny:0": 8, "permit:1": 8} and grants == 16


def test_section_renders_with_rule_and_chart(folder: tuple[Path, Any]) -> None:
    root, _ = folder
    model = build_model_from_store(root, generated_at=NOW)
    html = render_html(model)
    section = html.split('id="s-signins"')[1].split("</section>")[0]
    assert "3a. Sign-ins and token exchanges" in section
    summary = r"16 sign-ins; token exchanges:\s*<span class=\"deny\">8 denied</span>"
    assert re.search(summary, section)
    assert "8 permitted (8 grandfathered)" in section
    assert section.count(RULE) == 2 and section.count(INSTRUMENT) == 2
    # the sign-in table: qq + wechat rows and the total row
    table = section.split('id="sign-ins"')[1].split("</table>")[0]
    total = '<th colspan="2">Total</th><th class="n">16</th><th class="n">16</th>'
    assert total in table
    # the exchange chart: one bar, segments denied 8 and grandfathered 8
    bars = re.findall(r'data-value="(\d+)" data-name="([\w ]+)"', section)
    assert ("8", "denied") in bars and ("8", "grandfathered") in bars
    assert "3b. Revocations and purges" in html and "3c. Remediation campaign progress" in html
    doc = json.loads(to_evidence_json(model))
    assert doc["report"]["sign_ins"]["sign_ins"][0]["app"] == "douyin"
    assert sum(e["count"] for e in doc["report"]["sign_ins"]["exchanges"]) == 16


def test_no_registry_says_not_run(small_store: tuple[Path, dict[str, object]]) -> None:
    root, _ = small_store
    model = build_model_from_store(root, generated_at=NOW)
    assert model.sign_ins is None
    assert "No grant registry with sign-ins was found" in render_html(model)


def test_zero_denials_are_not_red(folder: tuple[Path, Any]) -> None:
    """Red marks real denials only: a registry where no exchange was denied shows 0 in ink."""
    root, _ = folder
    with sqlite3.connect(root / "grants.db") as conn:
        conn.execute("DELETE FROM transfer_attempts WHERE effect = 'deny'")
    conn.close()
    model = build_model_from_store(root, generated_at=NOW)
    assert model.sign_ins is not None and model.sign_ins.exchanges_denied == 0
    section = render_html(model).split('id="s-signins"')[1].split("</section>")[0]
    assert '<span class="">0 denied</span>' in section
    assert 'class="deny"' not in section


def test_report_cli_prints_the_sign_ins_and_reads_a_registry_elsewhere(
    folder: tuple[Path, Any], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from provguard.cli.main import app

    root, _ = folder
    elsewhere = tmp_path / "registry" / "grants.db"
    elsewhere.parent.mkdir()
    (root / "grants.db").rename(elsewhere)
    runner = CliRunner()
    plain = runner.invoke(app, ["report", "--store", str(root)])
    assert plain.exit_code == 0, plain.output
    assert "sign-ins:" not in plain.output  # no registry in the folder
    given = runner.invoke(app, ["report", "--store", str(root), "--grant-db", str(elsewhere)])
    assert given.exit_code == 0, given.output
    assert "sign-ins: 16; token exchanges denied 8, permitted 8 (grandfathered 8)" in given.output
    doc = json.loads((root / "evidence.json").read_text())
    assert doc["report"]["sign_ins"]["source"] == str(elsewhere)
    assert doc["report"]["revocations"]["jobs"] == 4  # read from the same registry

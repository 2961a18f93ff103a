"""Report sections read from the stores: revocations and purges, campaign progress over time,
instrument titles; and no double counting when two runs share a folder."""

from __future__ import annotations

import re
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from markupsafe import escape

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.campaign.model import STATES
from provguard.report.from_store import RUN_END_KIND, build_model_from_store
from provguard.report.render import campaign_chart_svg, render_html, to_evidence_json

from .conftest import CAMPAIGN, T0, add_campaign, add_revocations, build_small_store


@pytest.fixture
def folder(tmp_path: Path, repo_root: Path) -> tuple[Path, dict[str, object]]:
    root = tmp_path / "out"
    expected = build_small_store(root, repo_root / "policies")
    add_revocations(root)
    add_campaign(root)
    return root, expected


def test_revocations_section_from_the_registry(folder: tuple[Path, dict[str, object]]) -> None:
    root, _ = folder
    model = build_model_from_store(root, generated_at=T0 + timedelta(days=40))
    r = model.revocations
    assert r is not None and r.source.endswith("grants.db")
    assert (r.jobs, r.purged, r.purged_late, r.quarantined, r.open) == (3, 2, 1, 1, 0)
    assert r.overdue == 1  # g2: quarantined, deadline passed at day 15
    assert r.rows_purged["tokens"] == 2
    by_grant = {row.grant_id: row for row in r.rows}
    assert by_grant["g0"].on_time is True and by_grant["g1"].on_time is False
    assert by_grant["g2"].on_time is None and by_grant["g2"].state == "quarantined"
    html = render_html(model)
    assert "3b. Revocations and purges" in html and "Revocation jobs by outcome" in html
    assert "(late)" in html


def test_campaign_progress_chart_from_the_store(folder: tuple[Path, dict[str, object]]) -> None:
    root, _ = folder
    model = build_model_from_store(root, generated_at=T0 + timedelta(days=40))
    assert model.campaigns is not None and len(model.campaigns) == 1
    c = model.campaigns[0]
    assert c.targets == 7 and c.states["changed"] == 4 and c.states["exempt"] == 1
    ops = [p.operation for p in c.history]
    assert ops[-2:] == ["rescan", "rescan"]
    assert [p.counts["changed"] for p in c.history][-2:] == [2, 4]
    assert c.history[-1].counts == {s: c.states[s] for s in STATES}
    svg = str(campaign_chart_svg(c, title=f"Campaign {c.campaign_id}: targets per state over time"))
    # one column per history point; its segments add up to the targets
    cols = svg.split('<g class="col">')[1:]
    assert len(cols) == len(c.history)
    last = dict(re.findall(r'data-value="(\d+)" data-name="(\w+)"', cols[-1]))
    assert {name: int(v) for v, name in last.items()} == {s: n for s, n in c.states.items() if n}
    html = render_html(model)
    assert "3c. Remediation campaign progress" in html and svg in html
    assert to_evidence_json(model).count(CAMPAIGN) >= 1


def test_empty_folder_says_not_run(small_store: tuple[Path, dict[str, object]]) -> None:
    root, _ = small_store
    model = build_model_from_store(root)
    assert model.revocations is None and model.campaigns is None
    html = render_html(model)
    assert "No grant registry with revocation jobs" in html
    assert "No remediation campaign was found" in html


def test_instrument_title_heads_with_citation_below(
    small_store: tuple[Path, dict[str, object]],
) -> None:
    root, _ = small_store
    model = build_model_from_store(root)
    inst = next(i for i in model.instruments if i.id == "cn-tj-binhai-2019-douyin-duoshan")
    assert inst.title.startswith("Conduct-preservation order")
    html = render_html(model)
    h3 = html.index(f"<h3>{escape(inst.title)}</h3>")
    assert html.index(str(escape(inst.citation)), h3) > h3


def _append_second_run(root: Path) -> int:
    """Append the first run's job decisions again, as a second ``provguard run`` in the same
    folder would, each run closed by its ``campaign`` entry. Returns decisions appended."""
    log = SqliteAuditLog(root / "control.db")
    first = [e for e in log.entries() if e.kind == "decision"]
    log.append(RUN_END_KIND, {"campaign_id": "run-1"})
    for e in first:
        log.append("decision", e.payload)
    log.append(RUN_END_KIND, {"campaign_id": "run-2"})
    log.close()
    return len(first)


def test_two_runs_in_one_folder_are_not_counted_twice(
    small_store: tuple[Path, dict[str, object]],
) -> None:
    root, expected = small_store
    once = build_model_from_store(root)
    n = _append_second_run(root)
    assert n == expected["decisions"]
    twice = build_model_from_store(root)
    assert twice.decision_counts == once.decision_counts
    counts = expected["counts"]
    assert isinstance(counts, dict)
    deny = sum(r.count for r in twice.decision_counts if r.effect == "deny")
    assert deny == Counter(counts)["deny"] > 0
    assert any("2 job runs" in note for note in twice.notes)
    # service decisions are live traffic: each counts, whatever the runs, but in a table of
    # their own (each evaluated at its own time, some on asserted facts), never in the run's
    log = SqliteAuditLog(root / "control.db")
    payload = dict(next(e for e in log.entries(kind="decision")).payload)
    payload["stage"] = "service"
    log.append("decision", payload)
    log.append("decision", payload)
    log.close()
    after = build_model_from_store(root)
    assert after.decision_counts == once.decision_counts
    assert sum(r.count for r in after.service_decision_counts) == 2 * max(1, len(payload["rules"]))
    assert {r.rule_id for r in after.service_decision_counts} <= set(payload["rules"]) | {None}
    html = render_html(after)
    assert "HTTP service decisions" in html and "not part of the figures above" in html
    assert "HTTP service decisions" not in render_html(once)


def test_a_run_still_open_is_the_latest(small_store: tuple[Path, dict[str, object]]) -> None:
    """Job decisions after the last ``campaign`` entry belong to a newer, unfinished run."""
    root, _ = small_store
    log = SqliteAuditLog(root / "control.db")
    payloads = [e.payload for e in log.entries(kind="decision")]
    log.append(RUN_END_KIND, {"campaign_id": "run-1"})
    log.append("decision", payloads[0])
    log.close()
    model = build_model_from_store(root)
    assert sum(r.count for r in model.decision_counts) == max(1, len(payloads[0]["rules"]))


def test_job_report_title_is_the_court_orders_short_title(repo_root: Path) -> None:
    from provguard.job.report import report_title
    from provguard.policy import load_policy_dir

    bundles = load_policy_dir(repo_root / "policies").bundles
    order = next(b.instrument for b in bundles if b.instrument.kind.startswith("court_order"))
    assert order.title
    assert report_title(bundles) == f"Compliance report: {order.title}"
    assert report_title([]) == "Compliance report"

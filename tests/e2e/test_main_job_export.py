"""``provguard run --platform DIR``: the main job on a platform export (one Parquet file per
table, as ``provguard sandbox build`` and every run's ``platform/`` folder write it) decides
exactly as the run that built the same platform in memory, and its report names the export as
its data source (DESIGN.md section 6: the job takes a platform export or builds the sandbox)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from provguard.cli.main import app
from provguard.config import RunSettings
from provguard.job.run import run_main_job


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> Path:
    lines = (repo_root / "data/graphs/snap-ego-facebook.txt").read_text().splitlines()
    path = tmp_path_factory.mktemp("export-graph") / "ego-facebook-600.txt"
    path.write_text("\n".join(lines[:600]) + "\n")
    return path


def test_a_platform_export_runs_as_the_sandbox_it_was_written_from(
    graph: Path, repo_root: Path, tmp_path: Path
) -> None:
    policy = repo_root / "policies"
    built = run_main_job(RunSettings(out=tmp_path / "built", graph=graph, policy=policy))
    export = tmp_path / "built" / "platform"
    assert (export / "app_profiles.parquet").exists()
    read = run_main_job(RunSettings(out=tmp_path / "read", platform=export, policy=policy))
    for name in ("app_profiles", "grants", "transfers", "edges", "subjects"):
        assert getattr(read.platform, name).equals(getattr(built.platform, name)), name
    assert read.decision_counts == built.decision_counts
    assert read.transfers.equals(built.transfers)
    assert read.labelled.equals(built.labelled)
    assert read.recommendations.cards.equals(built.recommendations.cards)
    assert read.verify.ok
    assert read.graph_stats["nodes"] == read.platform.subjects.num_rows
    assert read.graph_stats["edges"] == read.platform.edges.num_rows
    html = (tmp_path / "read" / "report.html").read_text(encoding="utf-8")
    assert f"Platform export read from {export}" in html
    assert "Sandbox platform built on this graph" not in html


def test_run_refuses_a_platform_that_is_not_an_export(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["run", "--out", str(tmp_path / "o"), "--platform", str(tmp_path)])
    assert res.exit_code == 2, res.output
    assert "missing platform table" in res.output
    res = runner.invoke(
        app, ["run", "--out", str(tmp_path / "o"), "--platform", str(tmp_path / "nope")]
    )
    assert res.exit_code == 2 and "is not a folder" in res.output

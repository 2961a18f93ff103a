"""``provguard recommend evaluate`` is readable at 80 columns (session 4 fresh-user finding D):
no cell cut with an ellipsis, abbreviations explained, the same numbers as ``--out`` JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from provguard.cli.main import app
from provguard.cli.recommend import LEGEND, METHOD_ABBREVIATIONS, render_rows
from provguard.recommend.protocol import ComplianceRow

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[ComplianceRow]]:
    """One real run on the first 1,500 lines of ego-Facebook, printed at 80 columns (~10 s)."""
    work = tmp_path_factory.mktemp("rec-eval")
    lines = (ROOT / "data/graphs/snap-ego-facebook.txt").read_text().splitlines()
    graph = work / "fb1500.txt"
    graph.write_text("\n".join(lines[:1500]) + "\n")
    # COLUMNS, not console.width: setting the shared console's width would pin it for every
    # later test
    r = runner.invoke(
        app,
        ["recommend", "evaluate", "--graph", str(graph), "--policy", "none=none", "--policy",
         f"injunction={ROOT / 'policies'}", "--out", str(work / "rows.json")],
        env={"COLUMNS": "80"},
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = json.loads((work / "rows.json").read_text())
    rows = [
        ComplianceRow(**(d | {"signals_used": tuple(d["signals_used"]),
                              "signals_removed": tuple(d["signals_removed"])}))
        for d in doc
    ]  # fmt: skip
    return r.output, rows


def test_eighty_columns_abbreviates_and_explains(
    evaluated: tuple[str, list[ComplianceRow]],
) -> None:
    output, rows = evaluated
    lines = output.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert "…" not in output
    assert " ".join(LEGEND.split()) in " ".join(output.split())  # wrapped, but all there
    # every row printed with the same numbers as the JSON rows
    table = [line.split() for line in lines if line.startswith((" none ", " injunction "))]
    assert len(table) == len(rows) == 16
    for cells, row in zip(table, rows, strict=True):
        assert cells[:3] == [row.policy, METHOD_ABBREVIATIONS[row.method], row.slice]
        assert cells[3:8] == [
            f"{v:.4f}"
            for v in (row.recall_at_10, row.mrr, row.hits_at_50, row.coverage,
                      row.catalogue_coverage_at_10)
        ]  # fmt: skip
        assert cells[8] == str(len(row.signals_removed))
    assert {r.policy for r in rows if r.signals_removed} == {"injunction"}


def test_wide_and_very_narrow_terminals(evaluated: tuple[str, list[ComplianceRow]]) -> None:
    _output, rows = evaluated
    wide = Console(width=200, record=True)
    render_rows(rows, wide)
    text = wide.export_text()
    assert "resource_allocation" in text and "catalogue coverage@10" in text
    assert "R@10 = " not in text
    forced = Console(width=80, record=True)
    render_rows(rows, forced, wide=True)
    assert "R@10 = " not in forced.export_text()  # --wide: the full table, squeezed by Rich
    narrow = Console(width=40, record=True)
    render_rows(rows, narrow)
    blocks = narrow.export_text()
    assert all(len(line) <= 40 for line in blocks.splitlines())
    assert "…" not in blocks
    first = rows[0]
    assert f"  Recall@10              {first.recall_at_10:.4f}" in blocks

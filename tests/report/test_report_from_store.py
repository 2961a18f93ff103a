"""``provguard report --store``: the report rebuilt from a real (small) output folder."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from provguard.report.from_store import build_model_from_store
from provguard.report.render import pivot

runner = CliRunner()


def test_model_matches_the_store(small_store: tuple[Path, dict[str, object]]) -> None:
    root, expected = small_store
    model = build_model_from_store(root)
    counts = expected["counts"]
    assert isinstance(counts, dict)
    by_effect = {e: sum(r.count for r in model.decision_counts if r.effect == e) for e in counts}
    assert by_effect == counts
    rules = {r.key: r for r in pivot(model.decision_counts, "rule_id")}
    assert rules["no-platform-profile-in-friend-recommendation"].deny == 10
    assert model.transfers is not None
    assert (model.transfers.total, model.transfers.denied) == (3, 2)
    assert model.transfers.grandfathered_permitted == 1
    assert model.audit is not None and model.audit.verify_ok
    assert model.audit.entries == expected["entries"]
    assert [i.in_force for i in model.instruments] == [True]
    assert model.as_of.isoformat() == "2019-06-30"
    # 23 decisions, 7 s apart from 12:00:00: buckets cover them all, in time order
    assert sum(b.permit + b.deny + b.not_applicable for b in model.decisions_over_time) == 23
    starts = [b.start for b in model.decisions_over_time]
    assert starts == sorted(starts)


def test_cli_writes_report_and_evidence(small_store: tuple[Path, dict[str, object]]) -> None:
    import typer

    from provguard.cli.report import report_cmd

    root, _ = small_store
    app = typer.Typer()
    app.command()(report_cmd)
    r = runner.invoke(app, ["--store", str(root)])
    assert r.exit_code == 0, r.output
    assert "chain intact (24 entries)" in r.output
    # the small store signs no checkpoint: the CLI says nothing beyond the chain is proven
    assert (
        "coverage: none: no signed checkpoint is stored in the log, so nothing beyond the chain "
        "itself is proven" in " ".join(r.output.split())
    )
    bundle = json.loads((root / "evidence.json").read_text())
    html = (root / "report.html").read_text()
    assert bundle["report_sha256"] in html
    assert bundle["report"]["audit"]["verify_ok"] is True
    # a broken chain is reported, not hidden
    con = sqlite3.connect(root / "control.db")
    con.execute(
        "UPDATE audit_log SET payload = replace(payload, 'recommend', 'recommenx') WHERE seq = 5"
    )
    con.commit()
    con.close()
    r = runner.invoke(app, ["--store", str(root)])
    assert r.exit_code == 1 and "chain BROKEN at entry #5" in r.output
    r = runner.invoke(app, ["--store", str(root / "nope")])
    assert r.exit_code == 2 and "PG200" in r.output


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian package 'chromium' not installed")
def test_report_renders_in_chromium(
    small_store: tuple[Path, dict[str, object]], tmp_path: Path
) -> None:
    from PIL import Image

    root, _ = small_store
    from provguard.report.render import render_html, write_report

    model = build_model_from_store(root)
    write_report(model, root / "report.html")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1000,1400",
            f"--screenshot={shot}",
            (root / "report.html").as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    img = Image.open(shot).convert("RGB")
    assert img.size == (1000, 1400)
    colours = img.getcolors(maxcolors=1 << 20) or []
    # the deny red of the charts is painted, and the page is not blank
    assert any(c == (0xB3, 0x26, 0x1E) for _, c in colours)
    assert len(colours) > 50
    assert "<script" not in render_html(model)

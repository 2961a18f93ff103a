"""``audit verify`` compares the report files beside the log with the signed ``job.report`` entry
(fresh user 12, H3): an edited ``report.html`` (denial counts set to 0) passed with exit 0,
although entry ``job.report`` records its SHA-256; ``report --store`` overwrote it silently.

Every test works on a copy of :func:`small_job_folder` (``folder`` fixture)."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import typer
from typer.testing import CliRunner

from provguard.cli.audit import audit_app
from provguard.cli.report import report_cmd
from provguard.report.anchor import REPORT_FILE, file_sha256, replaced_files, set_aside

runner = CliRunner()
report_cli = typer.Typer()
report_cli.command()(report_cmd)


def _verify(root: Path) -> tuple[int, str]:
    res = runner.invoke(audit_app, ["verify", "--log", str(root / "control.db")])
    return res.exit_code, res.output


def _report_entries(root: Path) -> list[tuple[int, dict[str, Any]]]:
    with sqlite3.connect(root / "control.db") as db:
        rows = db.execute(
            "SELECT seq, payload FROM audit_log WHERE kind = 'job.report' ORDER BY seq"
        ).fetchall()
    return [(int(seq), json.loads(p)) for seq, p in rows]


def _forge_denials(html: Path) -> tuple[str, int]:
    """The finding's edit: every figure of the report's denial table set to 0. Returns a
    number that was replaced and how many places."""
    text = html.read_text(encoding="utf-8")
    counts = re.findall(r"<td[^>]*>\s*([0-9][0-9,]{2,})\s*</td>", text)
    assert counts, "the report shows no counts to forge"
    figure = max(counts, key=lambda c: int(c.replace(",", "")))
    html.write_text(text.replace(f">{figure}<", ">0<"), encoding="utf-8")
    return figure, text.count(f">{figure}<")


def test_the_job_anchors_report_html_and_an_untouched_folder_verifies(folder: Path) -> None:
    (seq, payload), *_ = _report_entries(folder)
    files = payload["files"]
    assert files[REPORT_FILE] == hashlib.sha256((folder / REPORT_FILE).read_bytes()).hexdigest()
    assert files["evidence.json"] == file_sha256(folder / "evidence.json")
    assert set(files) == {
        REPORT_FILE,
        "evidence.json",
        "data/profile_scan.parquet",
        "data/recommendations.parquet",
    }
    code, out = _verify(folder)
    assert code == 0, out
    for name in files:
        assert f"report file {name}: matches job.report entry #{seq}" in out


def test_an_edited_report_html_fails_verify(folder: Path) -> None:
    before = file_sha256(folder / REPORT_FILE)
    figure, places = _forge_denials(folder / REPORT_FILE)
    assert places >= 1
    assert f">{figure}<" not in (folder / REPORT_FILE).read_text(encoding="utf-8")
    after = file_sha256(folder / REPORT_FILE)
    (seq, _), *_ = _report_entries(folder)
    code, out = _verify(folder)
    assert code == 1, out
    assert "[PG340]" in out
    assert f"report file {REPORT_FILE}: its SHA-256 is {after[:16]}…" in out
    assert f"job.report entry #{seq} records {before[:16]}…" in out
    assert f"{REPORT_FILE} sha256 '{after}', chain '{before}'" in out
    # the other files still match: only the edited one is named
    assert "report file evidence.json: matches" in out
    assert "report file data/profile_scan.parquet: matches" in out


def test_an_edited_scan_parquet_fails_verify(folder: Path) -> None:
    path = folder / "data/profile_scan.parquet"
    table = pq.read_table(path)
    pq.write_table(table.slice(1), path)
    code, out = _verify(folder)
    assert code == 1, out
    assert "report file data/profile_scan.parquet: its SHA-256 is" in out
    assert f"report file {REPORT_FILE}: matches" in out


def test_a_folder_with_only_its_log_checks_no_file(folder: Path, tmp_path: Path) -> None:
    alone = tmp_path / "alone"
    alone.mkdir()
    (folder / "control.db").rename(alone / "control.db")
    (folder / "audit.pub").rename(alone / "audit.pub")
    code, out = _verify(alone)
    assert code == 0, out
    assert "report file" not in out


def test_report_store_names_and_keeps_the_differing_file_and_anchors_the_new_one(
    folder: Path,
) -> None:
    _forge_denials(folder / REPORT_FILE)
    forged = (folder / REPORT_FILE).read_bytes()
    (old_seq, _), *_ = _report_entries(folder)
    res = runner.invoke(report_cli, ["--store", str(folder)])
    assert res.exit_code == 0, res.output
    kept = folder / f"{REPORT_FILE}.differed-{old_seq}"
    assert (
        f"warning: {REPORT_FILE} differed from the anchored one (job.report entry #{old_seq}"
        in (res.output)
    )
    assert kept.read_bytes() == forged  # the forged file is kept, not destroyed
    entries = _report_entries(folder)
    new_seq, new = entries[-1]
    assert [s for s, _ in entries] == [old_seq, new_seq]
    assert f"report anchored: job.report entry #{new_seq}" in res.output
    assert new["rebuilt"] == {"previous": old_seq, "replaced": [REPORT_FILE]}
    assert new["files"][REPORT_FILE] == file_sha256(folder / REPORT_FILE)
    assert new["run"] == entries[0][1]["run"]
    # the scan and cards digests are the run's, carried over, not recomputed
    for name in ("data/profile_scan.parquet", "data/recommendations.parquet"):
        assert new["files"][name] == entries[0][1]["files"][name]
    code, out = _verify(folder)
    assert code == 0, out
    assert f"report file {REPORT_FILE}: matches job.report entry #{new_seq}" in out
    assert f"(up to #{new_seq})" in out  # the new entry is signed with the folder's key
    # a second rebuild replaces an anchored file: no warning, nothing set aside
    res2 = runner.invoke(report_cli, ["--store", str(folder)])
    assert res2.exit_code == 0, res2.output
    assert "differed" not in res2.output
    assert sorted(p.name for p in folder.glob(f"{REPORT_FILE}.differed-*")) == [kept.name]
    assert _verify(folder)[0] == 0


def test_a_rebuild_does_not_anchor_an_edited_scan(folder: Path) -> None:
    path = folder / "data/profile_scan.parquet"
    pq.write_table(pq.read_table(path).slice(1), path)
    res = runner.invoke(report_cli, ["--store", str(folder)])
    assert res.exit_code == 1, res.output  # PG340: section 4 withheld
    code, out = _verify(folder)
    assert code == 1, out
    assert "report file data/profile_scan.parquet: its SHA-256 is" in out
    assert f"report file {REPORT_FILE}: matches" in out


def test_set_aside_never_overwrites(tmp_path: Path) -> None:
    first = tmp_path / "report.html"
    for n in range(3):
        first.write_text(f"v{n}")
        set_aside(first, 7)
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == [
        "report.html.differed-7",
        "report.html.differed-7-2",
        "report.html.differed-7-3",
    ]
    assert (tmp_path / "report.html.differed-7-3").read_text() == "v2"


def test_replaced_files_without_an_entry_is_empty(folder: Path) -> None:
    from provguard.report.anchor import ReportEntry

    assert replaced_files(folder, ReportEntry(None)) == {}

"""The carried-over evidence and the scan file are chain-backed (fresh user 10, H3).

The main job runs once on the first 600 lines of the real ego-Facebook graph; it anchors its
``evidence.json`` report and the scan / recommendation files in one signed ``job.report``
entry. Each test edits a copy of the folder as the finding did (recall +0.2 in
``evidence.json``, the scan's verdicts zeroed, a log from before the entry existed) and checks
that ``provguard report --store`` carries over only what the entry still vouches for, withholds
the rest with a PG340 line at the section and a row in section 6, and never quotes the digest
the file states.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sqlite3
from html import unescape
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.audit.crosscheck import VerifiedRange
from provguard.audit.folder import export_checkpoint
from provguard.cli.report import report_cmd
from provguard.config import RunSettings
from provguard.job.run import RunResult, run_main_job
from provguard.report.anchor import (
    REPORT_ENTRY_KIND,
    canonical_sha256,
    evidence_report_digest,
    find_report_entry,
)
from provguard.report.from_store import build_model_from_store
from provguard.report.model import ReportModel
from provguard.report.render import render_html, report_digest, to_evidence_json

from .conftest import sample_model

runner = CliRunner()
cli = typer.Typer()
cli.command()(report_cmd)

SCAN_VERDICTS = (
    "handle_exact",
    "handle_normalized",
    "picture_equal",
    "any_match",
    "handle_match",
    "picture_match",
    "copy_match",
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> tuple[Path, RunResult]:
    work = tmp_path_factory.mktemp("anchor")
    lines = (repo_root / "data/graphs/snap-ego-facebook.txt").read_text().splitlines()
    graph = work / "ego-facebook-600.txt"
    graph.write_text("\n".join(lines[:600]) + "\n")
    out = work / "demo"
    result = run_main_job(RunSettings(out=out, graph=graph, policy=repo_root / "policies"))
    return out, result


def _copy(demo: tuple[Path, RunResult], tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(demo[0], out)
    return out


def _text(html: str) -> str:
    html = re.sub(r"<svg.*?</svg>", "", html, flags=re.S)
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def _section(html: str, name: str) -> str:
    tag = f'aria-labelledby="{name}">'
    start = html.index(tag) + len(tag)
    return _text(html[start : html.index("</section>", start)])


def _forge_recall(folder: Path, *, fix_digest: bool) -> dict[str, Any]:
    """Add 0.2 to every policy row's Recall@10 in evidence.json (H3); with ``fix_digest`` the
    file's report_sha256 is recomputed so the file is self-consistent."""
    path = folder / "evidence.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    for row in doc["report"]["recommendations"]["compliance"]:
        if row["policy"] != "none":
            row["recall_at_10"] += 0.2
    if fix_digest:
        doc["report_sha256"] = evidence_report_digest(doc)
    path.write_text(json.dumps(doc), encoding="utf-8")
    return dict(doc)


def _zero_scan(folder: Path) -> None:
    path = folder / "data" / "profile_scan.parquet"
    t = pq.read_table(path)
    for c in SCAN_VERDICTS:
        if c in t.column_names:
            t = t.set_column(t.schema.get_field_index(c), c, pa.array([False] * t.num_rows))
    pq.write_table(t, path)


def _discrepancy(model: ReportModel, table: str) -> Any:
    assert model.chain_check is not None
    found = [d for d in model.chain_check.discrepancies if d.table == table]
    assert len(found) == 1, model.chain_check.discrepancies
    return found[0]


def test_the_run_anchors_its_report_in_a_signed_entry(demo: tuple[Path, RunResult]) -> None:
    out, result = demo
    anchor = result.report_anchor
    assert anchor is not None and result.checkpoint is not None
    # one entry after the run's own, signed; the run's verification is the one before it
    assert anchor.seq == result.checkpoint.count + 1 == result.verify.count + 1
    assert anchor.checkpoint.count == anchor.seq
    assert json.loads((out / "checkpoint.json").read_text())["count"] == anchor.seq
    with SqliteAuditLog(out / "control.db", create=False) as log:
        head = log.head()
        assert head is not None and head.kind == REPORT_ENTRY_KIND and head.seq == anchor.seq
        assert log.verify(anchor.checkpoint.checkpoint).ok
        payload = head.payload
    doc = json.loads((out / "evidence.json").read_text(encoding="utf-8"))
    assert payload["report_sha256"] == doc["report_sha256"] == evidence_report_digest(doc)
    assert payload["run"] == {"first_seq": 1, "last_seq": result.checkpoint.count}
    assert set(payload["files"]) == {
        "evidence.json",
        "report.html",
        "data/profile_scan.parquet",
        "data/recommendations.parquet",
    }
    for name, digest in payload["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    # the job's own report says the entry comes after what section 6 counts
    assert "After this report was written the run appended one more audit entry, job.report" in (
        _text((out / "report.html").read_text(encoding="utf-8"))
    )


def test_untouched_folder_carries_over_and_names_the_entry(
    demo: tuple[Path, RunResult], tmp_path: Path
) -> None:
    folder = _copy(demo, tmp_path)
    anchor = demo[1].report_anchor
    assert anchor is not None
    job = json.loads((folder / "evidence.json").read_text(encoding="utf-8"))["report"]
    model = build_model_from_store(folder)
    assert model.recommendations is not None
    assert model.recommendations.model_dump(mode="json") == job["recommendations"]
    assert model.scan is not None
    assert [s.model_dump(mode="json") for s in model.scan] == job["scan"]
    assert model.title == job["title"]
    assert all(n in model.notes for n in job["notes"])
    carried = [n for n in model.notes if "carried over" in n and "chain-backed" in n]
    assert len(carried) == 1 and f"job.report entry #{anchor.seq}" in carried[0]
    assert str(anchor.payload["report_sha256"]) in carried[0]
    check = model.chain_check
    assert check is not None and check.ok
    rows = {t.table: (t.rows, t.matched) for t in check.tables}
    assert rows["evidence.json"] == rows["data/profile_scan.parquet"] == (1, 1)
    assert "data/profile_scan.parquet" not in check.not_in_chain
    html = render_html(model)
    assert "PG340" not in _section(html, "s-scan") and "PG340" not in _section(html, "s-recs")
    assert 'id="recs-quality"' in html and 'id="scan-withheld"' not in html
    # a rebuilt report written into the folder is rebuilt again with the same carried parts
    for _ in range(2):
        r = runner.invoke(cli, ["--store", str(folder)])
        assert r.exit_code == 0, r.output
    again = build_model_from_store(folder)
    assert again.recommendations == model.recommendations and again.scan == model.scan
    assert again.title == model.title and again.chain_check is not None and again.chain_check.ok


def test_edited_evidence_is_withheld_with_the_reason(
    demo: tuple[Path, RunResult], tmp_path: Path
) -> None:
    folder = _copy(demo, tmp_path)
    anchor = demo[1].report_anchor
    assert anchor is not None
    doc = _forge_recall(folder, fix_digest=False)
    stated = doc["report_sha256"]
    model = build_model_from_store(folder)
    assert model.recommendations is None
    assert model.title == "Compliance report"
    assert model.data_source.citation == "(not recorded in the stores)"
    assert model.scan is not None and all(s.truth_either is None for s in model.scan)
    assert not any(n in model.notes for n in doc["report"]["notes"])
    d = _discrepancy(model, "evidence.json")
    assert (d.field, d.seq) == ("report_sha256", anchor.seq)
    assert d.table_value == evidence_report_digest(doc) != stated
    assert d.chain_value == anchor.payload["report_sha256"]
    html = render_html(model)
    # the file still states the run's digest: it is shown only as what the entry records,
    # beside the digest recomputed from the edited file, never as the carried report's
    assert stated == d.chain_value
    assert not any("Rebuilt with sections carried over" in n for n in model.notes)
    recs = _section(html, "s-recs")
    assert recs.startswith("5. Friend recommendations with and without the policy PG340")
    assert f"evidence.json is not chain-backed -- its report digest is {d.table_value[:16]}" in recs
    assert f"job.report entry #{anchor.seq} records {d.chain_value[:16]}" in recs
    assert "0.6" not in recs and "not run" not in recs
    assert "ground truth columns" in _section(html, "s-scan")
    six = _section(html, "s-audit")
    assert "evidence.json 5. Recommendation quality" in six and "1 1 0 1 withheld" in six
    r = runner.invoke(cli, ["--store", str(folder)])
    assert r.exit_code == 1 and "evidence.json 1" in r.output


def test_a_self_consistent_forged_evidence_is_still_withheld(
    demo: tuple[Path, RunResult], tmp_path: Path
) -> None:
    folder = _copy(demo, tmp_path)
    anchor = demo[1].report_anchor
    assert anchor is not None
    doc = _forge_recall(folder, fix_digest=True)
    assert doc["report_sha256"] == evidence_report_digest(doc)
    model = build_model_from_store(folder)
    assert model.recommendations is None
    d = _discrepancy(model, "evidence.json")
    assert (
        d.table_value == doc["report_sha256"] and d.chain_value == anchor.payload["report_sha256"]
    )
    assert "PG340" in _section(render_html(model), "s-recs")


def test_zeroed_scan_file_is_withheld(demo: tuple[Path, RunResult], tmp_path: Path) -> None:
    folder = _copy(demo, tmp_path)
    anchor = demo[1].report_anchor
    assert anchor is not None
    _zero_scan(folder)
    model = build_model_from_store(folder)
    assert model.scan is None
    d = _discrepancy(model, "data/profile_scan.parquet")
    assert d.field == "sha256" and d.seq == anchor.seq
    files = anchor.payload["files"]
    assert isinstance(files, dict) and d.chain_value == files["data/profile_scan.parquet"]
    # the untouched evidence is still carried over
    assert model.recommendations is not None
    html = render_html(model)
    scan = _section(html, "s-scan")
    assert "PG340" in scan and "data/profile_scan.parquet is not chain-backed" in scan
    assert "Profiles scanned" not in scan


def _without_report_entry(folder: Path) -> int:
    """Make ``folder``'s log one from before this change: drop the job.report entry and the
    checkpoint signed over it, re-export the previous signed checkpoint. Returns the head."""
    con = sqlite3.connect(folder / "control.db")
    (seq,) = con.execute(
        "SELECT seq FROM audit_log WHERE kind = ?", (REPORT_ENTRY_KIND,)
    ).fetchone()
    con.execute("DELETE FROM audit_log WHERE seq = ?", (seq,))
    con.execute("DELETE FROM audit_checkpoints WHERE count = ?", (seq,))
    con.commit()
    con.close()
    with SqliteAuditLog(folder / "control.db", create=False) as log:
        export_checkpoint(log.signed_checkpoints()[-1], folder)
        assert log.checkpoint().count == seq - 1
    return int(seq) - 1


def test_a_log_without_a_report_entry_withholds_and_copies_nothing(
    demo: tuple[Path, RunResult], tmp_path: Path
) -> None:
    folder = _copy(demo, tmp_path)
    head = _without_report_entry(folder)
    job = json.loads((folder / "evidence.json").read_text(encoding="utf-8"))["report"]
    model = build_model_from_store(folder)
    assert model.audit is not None and model.audit.verify_ok and model.audit.entries == head
    assert model.recommendations is None and model.scan is None
    assert model.title == "Compliance report"
    assert not any(n in model.notes for n in job["notes"])
    for table in ("evidence.json", "data/profile_scan.parquet"):
        d = _discrepancy(model, table)
        assert d.chain_value is None and d.seq is None
    html = render_html(model)
    for name in ("s-scan", "s-recs"):
        assert "no job.report entry of the latest run records it" in _section(html, name)


def test_an_entry_outside_the_signed_cover_vouches_for_nothing(
    demo: tuple[Path, RunResult],
) -> None:
    out, result = demo
    anchor = result.report_anchor
    assert anchor is not None
    with SqliteAuditLog(out / "control.db", create=False) as log:
        entries = log.find(kind=REPORT_ENTRY_KIND)
    counted = (2, anchor.seq - 1)
    ok = find_report_entry(entries, counted, VerifiedRange(1, anchor.seq, anchor.seq))
    assert ok.seq == anchor.seq and ok.problem is None
    unsigned = find_report_entry(entries, counted, VerifiedRange(1, anchor.seq, anchor.seq - 1))
    assert unsigned.problem is not None and "not covered by a signed checkpoint" in unsigned.problem
    broken = find_report_entry(entries, counted, VerifiedRange(1, anchor.seq - 1))
    assert broken.problem == f"entry #{anchor.seq} is outside the verified chain"
    # a later run (decisions after this run's range) has no entry of its own
    later = find_report_entry(entries, (anchor.seq + 1, anchor.seq + 5), VerifiedRange(1, 10**6))
    assert later.entry is None


def test_report_digest_is_recomputable_from_the_evidence_file() -> None:
    model = sample_model()
    doc = json.loads(to_evidence_json(model))
    assert evidence_report_digest(doc) == report_digest(model) == doc["report_sha256"]
    assert canonical_sha256(doc["report"]) == report_digest(model)
    doc["report"]["title"] += " (edited)"
    assert evidence_report_digest(doc) != report_digest(model)

"""The job's own report carries the "Decisions recorded over time" series, the same one
``provguard report --store`` rebuilds from the folder (W3)."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import pytest

from provguard.config import RunSettings
from provguard.job.run import RunResult, run_main_job
from provguard.report.from_store import build_model_from_store
from provguard.report.model import TimeBucket

CHART_TITLE = "Decisions recorded over time"


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> tuple[Path, RunResult]:
    """``provguard run`` on the first 1,200 lines of the real ego-Facebook graph (~10 s)."""
    work = tmp_path_factory.mktemp("job-series")
    lines = (repo_root / "data/graphs/snap-ego-facebook.txt").read_text().splitlines()
    graph = work / "ego-facebook-1200.txt"
    graph.write_text("\n".join(lines[:1200]) + "\n")
    out = work / "out"
    result = run_main_job(RunSettings(out=out, graph=graph, policy=repo_root / "policies"))
    return out, result


def _series(doc: dict[str, object]) -> list[TimeBucket]:
    report = doc["report"]
    assert isinstance(report, dict)
    return [TimeBucket.model_validate(b) for b in report["decisions_over_time"]]


def test_job_report_has_the_same_series_as_the_rebuilt_one(
    small_run: tuple[Path, RunResult],
) -> None:
    out, result = small_run
    job_series = _series(json.loads((out / "evidence.json").read_text()))
    assert job_series, "the job's evidence.json has no decisions_over_time"
    assert CHART_TITLE in (out / "report.html").read_text()
    rebuilt = build_model_from_store(out)
    assert list(rebuilt.decisions_over_time) == job_series
    # the series counts every decision the job recorded, once
    recorded = sum(int(row["count"]) for row in result.decision_counts)  # type: ignore[call-overload]
    assert sum(b.permit + b.deny + b.not_applicable for b in job_series) == recorded
    starts = [b.start for b in job_series]
    assert starts == sorted(starts) and len(set(b.seconds for b in job_series)) == 1
    assert all(
        (later - earlier).total_seconds() == job_series[0].seconds
        for earlier, later in pairwise(starts)
    )


def test_job_report_shows_the_same_signed_checkpoint_as_the_rebuilt_one(
    small_run: tuple[Path, RunResult],
) -> None:
    out, result = small_run
    report = json.loads((out / "evidence.json").read_text())["report"]
    rebuilt = build_model_from_store(out)
    assert rebuilt.audit is not None and rebuilt.audit.checkpoint is not None
    assert result.checkpoint is not None and result.report_anchor is not None
    # the job's report shows the checkpoint the run verified; the run then anchored the report
    # in one more entry (job.report) and signed it: the rebuilt report shows that newest one
    job_cp = report["audit"]["checkpoint"]
    assert job_cp["count"] == result.checkpoint.count == result.verify.count
    newest = rebuilt.audit.checkpoint.model_dump(mode="json")
    assert newest["count"] == result.report_anchor.seq == result.checkpoint.count + 1
    assert {k: v for k, v in job_cp.items() if k not in ("count", "head_hash", "signed_at")} == {
        k: v for k, v in newest.items() if k not in ("count", "head_hash", "signed_at")
    }
    assert "Signed checkpoint (Ed25519)" in (out / "report.html").read_text()


def test_job_report_states_what_recommendations_were_stored(
    small_run: tuple[Path, RunResult],
) -> None:
    import pyarrow.parquet as pq

    out, result = small_run
    recs = json.loads((out / "evidence.json").read_text())["report"]["recommendations"]
    cards = pq.read_table(out / "data" / "recommendations.parquet")
    stored = recs["stored"]
    assert stored["rows"] == cards.num_rows == result.recommendations.cards.num_rows
    per_viewer: dict[int, int] = {}
    for v in cards.column("viewer").to_pylist():
        per_viewer[v] = per_viewer.get(v, 0) + 1
    k = recs["recs_per_user"]
    assert stored["viewers"] == len(per_viewer)
    assert stored["short_viewers"] == sum(1 for n in per_viewer.values() if n < k)
    assert stored["empty_viewers"] == recs["users"] - len(per_viewer)
    # the quality rows carry what they are a share of
    units = {m["name"]: (m["unit"], m["denominator"]) for m in recs["metrics"]}
    headline = next(
        r
        for r in recs["compliance"]
        if (r["policy"], r["method"], r["slice"]) == ("none", "learned_ranker", "all")
    )
    assert units["Recall@10"] == ("queries", headline["queries"])
    assert units["Hits@50"] == ("querying users", headline["users"])
    assert units["MRR@50"] == (None, None)
    html = (out / "report.html").read_text()
    assert f"data/recommendations.parquet holds {cards.num_rows:,} recommendations" in html


def test_job_report_verifies_the_checkpoint_with_audit_pub_and_lists_the_weights(
    small_run: tuple[Path, RunResult],
) -> None:
    """Section 6 of the job's own report checks the checkpoint with the audit.pub the job
    exported (no "not checked" next to "covered"); section 5 lists every policy's fusion
    weight, the same numbers as evidence.json's ``ranker_weights``."""
    out, result = small_run
    assert (out / "audit.pub").is_file() and result.checkpoint is not None
    report = json.loads((out / "evidence.json").read_text())["report"]
    cp = report["audit"]["checkpoint"]
    assert (cp["signature_ok"], cp["key_file"], cp["head_in_log"]) == (True, "audit.pub", True)
    assert cp["key_id"] == cp["public_key_id"] == result.checkpoint.key_id
    html = " ".join((out / "report.html").read_text().split())
    assert (
        f"every entry (#1–#{result.verify.count}) is covered by a checkpoint signed by key "
        f"{result.checkpoint.key_id}, signature verified with audit.pub." in html
    )
    assert "not checked" not in html
    weights = report["recommendations"]["ranker_weights"]
    assert set(weights) == {"none", "injunction", "strict"}
    listed = ", ".join(f"{p} {weights[p]:g}" for p in ("none", "injunction", "strict"))
    assert (
        '<p id="recs-weights">Fusion weight of the learned ranker, chosen on validation users '
        f"under each policy: {listed} (0 = resource allocation&#39;s ranking alone, 1 = the "
        "model&#39;s alone).</p>" in html
    )

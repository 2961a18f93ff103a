"""``provguard run --platform``: a platform export's impossible transfer facts are refused up
front (PG141, rows named, nothing written), never grandfathered (fresh user 12, M4).

The exports are the sandbox platform on real SNAP graphs, written as ``provguard run`` writes
its ``platform/`` folder, then edited with pyarrow as the finding did."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from provguard.adapters.graph_files import read_edge_list
from provguard.adapters.platform_files import read_platform, write_platform
from provguard.cli.main import app
from provguard.config import RunSettings
from provguard.job.export_facts import (
    ACCOUNT_CLOCK_SKEW,
    ImpossibleExportFactsError,
    check_transfer_facts,
    transfer_fact_problems,
)
from provguard.job.run import run_main_job
from provguard.sandbox import Platform, build_platform

UTC = dt.UTC
AT = dt.datetime(2019, 6, 30, tzinfo=UTC)  # the run's default --as-of
ORDER = dt.datetime(2019, 3, 19, tzinfo=UTC)  # the finding's cut-off
BEFORE_GRANT = "first use before the grant"
BEFORE_ACCOUNT = "first use before the recipient's account was created"
Row = dict[str, Any]


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> Path:
    """The sandbox platform (seed 7) on the first 600 lines of ego-Facebook, as Parquet."""
    lines = (repo_root / "data/graphs/snap-ego-facebook.txt").read_text().splitlines()
    work = tmp_path_factory.mktemp("export-facts")
    graph = work / "ego-facebook-600.txt"
    graph.write_text("\n".join(lines[:600]) + "\n")
    out = work / "platform"
    write_platform(build_platform(read_edge_list(graph), seed=7), out)
    return out


def _edited(export: Path, tmp_path: Path, edit: Callable[[list[Row]], None]) -> Path:
    """A copy of ``export`` whose ``transfers`` rows went through ``edit`` (in place)."""
    out = tmp_path / "edited"
    out.mkdir()
    for f in export.glob("*.parquet"):
        (out / f.name).write_bytes(f.read_bytes())
    t = pq.read_table(out / "transfers.parquet")
    rows = t.to_pylist()
    edit(rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=t.schema), out / "transfers.parquet")
    return out


def _granted(export: Path) -> dict[str, dt.datetime]:
    return {
        r["grant_id"]: r["granted_at"] for r in pq.read_table(export / "grants.parquet").to_pylist()
    }


def _policy(repo_root: Path) -> Path:
    return repo_root / "policies"


@pytest.mark.parametrize(
    ("graph", "lines", "seed"),
    [
        ("snap-ego-facebook.txt", 600, 7),
        ("snap-ego-facebook.txt", 600, 11),
        ("snap-collegemsg.txt", 3000, 7),
    ],
)
def test_the_sandbox_platform_has_no_impossible_transfer_fact(
    repo_root: Path, tmp_path: Path, graph: str, lines: int, seed: int
) -> None:
    text = (repo_root / "data/graphs" / graph).read_text().splitlines()[:lines]
    path = tmp_path / "g.txt"
    path.write_text("\n".join(text) + "\n")
    platform = build_platform(read_edge_list(path), seed=seed)
    assert platform.transfers.num_rows > 0
    assert transfer_fact_problems(platform, AT) == ()
    # the sandbox's ground truth: the recipient account is made at the first use
    created = {
        (r["app_id"], r["subject_id"]): r["created_at"]
        for r in platform.app_profiles.select(["app_id", "subject_id", "created_at"]).to_pylist()
    }
    for r in platform.transfers.to_pylist():
        assert created[(r["to_app"], r["subject_id"])] == r["first_used_at"]


def test_the_findings_backdated_first_uses_are_refused_and_nothing_is_written(
    export: Path, tmp_path: Path, repo_root: Path
) -> None:
    granted = _granted(export)
    backdated: list[str] = []

    def backdate(rows: list[Row]) -> None:  # the finding's edit, verbatim
        for r in rows:
            if granted[r["grant_id"]] < ORDER and r["first_used_at"] >= ORDER:
                r["first_used_at"] = min(granted[r["grant_id"]] + dt.timedelta(hours=1), ORDER)
                backdated.append(r["transfer_id"])

    edited = _edited(export, tmp_path, backdate)
    assert len(backdated) > 10
    out = tmp_path / "out"
    with pytest.raises(ImpossibleExportFactsError) as info:
        run_main_job(RunSettings(out=out, platform=edited, policy=_policy(repo_root)))
    err = info.value
    assert err.code == "PG141"
    assert sorted(p.transfer_id for p in err.problems) == sorted(backdated)
    assert {p.kind for p in err.problems} == {BEFORE_ACCOUNT}
    assert f"impossible in {len(backdated)} row(s)" in err.message
    assert (
        f"{edited / 'transfers.parquet'} row " in err.message
        and "nothing was written" in err.message
    )
    assert not out.exists()


def test_first_uses_before_their_grant_are_refused_by_the_cli_not_pg000(
    export: Path, tmp_path: Path
) -> None:
    day = dt.datetime(2019, 1, 15, tzinfo=UTC)
    granted = _granted(export)

    def same_day(rows: list[Row]) -> None:  # the finding's "impossible dates" edit
        for r in rows:
            r["first_used_at"] = day

    edited = _edited(export, tmp_path, same_day)
    problems = transfer_fact_problems(read_platform(edited), AT, edited)
    rows = pq.read_table(edited / "transfers.parquet").to_pylist()
    want = {n for n, r in enumerate(rows, start=1) if granted[r["grant_id"]] > day}
    assert want
    got = {int(p.where.rsplit(" ", 1)[1]) for p in problems if p.kind == BEFORE_GRANT}
    assert got == want
    res = CliRunner().invoke(app, ["run", "--out", str(tmp_path / "o"), "--platform", str(edited)])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "PG141" in text and "PG000" not in text, text
    assert f"{BEFORE_GRANT}: {len(want)}" in text and "... and " in text
    assert not (tmp_path / "o").exists()


def _one(platform: Platform, **changes: Any) -> Platform:
    """``platform`` with its first transfer row changed."""
    rows = platform.transfers.to_pylist()
    rows[0].update(changes)
    t = pa.Table.from_pylist(rows, schema=platform.transfers.schema)
    tables = platform.tables() | {"transfers": t}
    return Platform(**tables)


def test_each_impossible_fact_is_named(export: Path) -> None:
    p = read_platform(export)
    first = p.transfers.to_pylist()[0]
    created = next(
        r["created_at"]
        for r in p.app_profiles.to_pylist()
        if (r["app_id"], r["subject_id"]) == (first["to_app"], first["subject_id"])
    )

    def kinds(q: Platform) -> list[tuple[str, str]]:
        return [(x.field, x.kind) for x in transfer_fact_problems(q, AT)]

    assert kinds(p) == []
    assert kinds(_one(p, grant_id="grt_nope")) == [("grant_id", "no such grant")]
    assert kinds(_one(p, subject_id=first["subject_id"] + 10**9)) == [
        ("subject_id", "contradicts its grant"),
        ("to_app", "no recipient account"),
    ]
    assert ("from_app", "contradicts its grant") in kinds(_one(p, from_app="duoshan"))
    assert kinds(_one(p, first_used_at=AT + dt.timedelta(seconds=1))) == [
        ("first_used_at", "first use after --as-of")
    ]
    # the clock difference allowed between the transfer log and the account table
    inside = created - ACCOUNT_CLOCK_SKEW
    outside = inside - dt.timedelta(seconds=1)
    assert kinds(_one(p, first_used_at=inside)) == []
    assert kinds(_one(p, first_used_at=outside)) == [("first_used_at", BEFORE_ACCOUNT)]
    rows = p.transfers.to_pylist()
    rows[1]["transfer_id"] = rows[0]["transfer_id"]
    dup = Platform(
        **(p.tables() | {"transfers": pa.Table.from_pylist(rows, schema=p.transfers.schema)})
    )
    (problem,) = transfer_fact_problems(dup, AT)
    assert (problem.where, problem.kind, problem.field) == (
        "transfers row 2",
        "duplicate transfer",
        "transfer_id",
    )
    assert "also on row 1" in str(problem)
    with pytest.raises(
        ImpossibleExportFactsError, match=r"impossible in 1 row\(s\) \(duplicate transfer: 1\)"
    ):
        check_transfer_facts(dup, AT)
    with pytest.raises(ValueError, match="timezone-aware"):
        transfer_fact_problems(p, AT.replace(tzinfo=None))

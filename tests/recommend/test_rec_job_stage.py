"""The main job's recommendation stage runs the documented protocol on a real graph (an induced
SNAP ego-Facebook subgraph, sandbox profiles) and its report figures are the run's, recomputed
independently."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from provguard.adapters.graph_files import read_edge_list
from provguard.decide import DecisionPoint
from provguard.job.decisions import DecisionRecorder
from provguard.job.ingest import label_profiles
from provguard.job.recommendations import (
    RecommendationResult,
    ranker_margins,
    recommendation_summary,
    run_recommendations,
    strict_variant,
)
from provguard.policy import load_policy_dir
from provguard.provenance import default_registry
from provguard.recommend.graph import adjacency
from provguard.recommend.heuristics import adamic_adar, resource_allocation
from provguard.recommend.protocol import random_edge_split, slice_metrics
from provguard.recommend.rank import allow_all, recommend
from provguard.recommend.signals import common_neighbours
from provguard.report.model import DataSource, ReportModel
from provguard.report.render import render_html
from provguard.sandbox import Platform, build_platform

ROOT = Path(__file__).resolve().parents[2]
AT = datetime(2019, 6, 30, tzinfo=UTC)
SUBGRAPH = 700
"""Induced subgraph of ego-Facebook on nodes 0..699 (the ego networks of nodes 0 and 348 and
part of 414's): real structure, small enough for a fast test."""
RULE1 = "no-platform-profile-in-friend-recommendation"


class Stage:
    def __init__(self) -> None:
        full = read_edge_list(ROOT / "data/graphs/snap-ego-facebook.txt")
        keep = (full.src < SUBGRAPH) & (full.dst < SUBGRAPH)
        el = replace(
            full,
            src=full.src[keep],
            dst=full.dst[keep],
            nodes=full.nodes[full.nodes < SUBGRAPH],
        )
        self.platform: Platform = build_platform(el, seed=7)
        registry = default_registry()
        labelled = label_profiles(self.platform.app_profiles, self.platform.grants, registry)
        self.app = labelled.filter(pc.equal(labelled.column("app_id"), "douyin"))
        self.src = np.asarray(self.platform.edges.column("src").to_numpy(), np.int64)
        self.dst = np.asarray(self.platform.edges.column("dst").to_numpy(), np.int64)
        self.recorder = DecisionRecorder()
        self.policy = load_policy_dir(ROOT / "policies")
        self.result: RecommendationResult = run_recommendations(
            self.src,
            self.dst,
            self.app,
            registry,
            DecisionPoint(self.policy),
            AT,
            self.recorder,
            subjects=self.platform.subjects,
            pictures=self.platform.pictures,
            eval_users=None,
        )


@pytest.fixture(scope="module")
def stage() -> Stage:
    return Stage()


def _row(result: RecommendationResult, policy: str, method: str, slice_: str = "all") -> object:
    (row,) = [
        r for r in result.compliance if (r.policy, r.method, r.slice) == (policy, method, slice_)
    ]
    return row


def test_table_shape_and_bundles(stage: Stage) -> None:
    rows = stage.result.compliance
    assert [r.policy for r in rows[::8]] == ["none", "injunction", "strict"]
    methods = {r.method for r in rows}
    assert methods == {"common_neighbours", "adamic_adar", "resource_allocation", "learned_ranker"}
    assert len(rows) == 3 * 4 * 2
    ranker = {r.policy: r for r in rows if r.method == "learned_ranker" and r.slice == "all"}
    assert ranker["none"].signals_removed == ()
    inj = set(ranker["injunction"].signals_removed)
    # the court's rule removes exactly the handle/picture pairs touching a WeChat/QQ value
    assert inj and all(n.startswith(("handle_similarity[", "picture_similarity[")) for n in inj)
    assert all(("wechat" in n or "qq" in n) for n in inj)
    # two user-typed handles stay usable under the court's rule
    assert "handle_similarity[user_input]" in ranker["injunction"].signals_used
    strict = set(ranker["strict"].signals_removed)
    assert inj < strict
    assert {"provider_contacts[wechat]", "provider_contacts[qq]"} <= strict


def test_heuristic_figures_are_recomputed_from_the_graph(stage: Stage) -> None:
    """Differential: the table's heuristic rows equal an independent recomputation."""
    n = stage.result.users
    split = random_edge_split(stage.src, stage.dst, n, fraction=0.1, seed=7)
    assert stage.result.test_edges == split.test[0].size
    adj = adjacency(split.train[0], split.train[1], n)
    for name, fn in (
        ("resource_allocation", resource_allocation),
        ("adamic_adar", adamic_adar),
        ("common_neighbours", common_neighbours),
    ):
        recs = recommend(adj, [fn(adj)], allow_all, 50)
        m = slice_metrics(recs, split.test, k=10, hits_k=50)
        for policy in ("none", "injunction", "strict"):
            row = _row(stage.result, policy, name)
            assert (row.recall_at_10, row.mrr, row.hits_at_50, row.coverage) == (  # type: ignore[attr-defined]
                m.recall_at_k,
                m.mrr,
                m.hits,
                m.coverage,
            )
            assert row.queries == m.queries == 2 * split.test[0].size  # type: ignore[attr-defined]


def test_quality_rows_are_the_ranker_rows(stage: Stage) -> None:
    q = {row.metric: row for row in stage.result.quality}
    none = _row(stage.result, "none", "learned_ranker")
    inj = _row(stage.result, "injunction", "learned_ranker")
    assert q["Recall@10"].without_policy == none.recall_at_10  # type: ignore[attr-defined]
    assert q["Recall@10"].with_policy == inj.recall_at_10  # type: ignore[attr-defined]
    assert q["MRR@50"].with_policy == inj.mrr  # type: ignore[attr-defined]
    assert q["Hits@50"].without_policy == none.hits_at_50  # type: ignore[attr-defined]
    assert 0.0 < inj.recall_at_10 < 1.0  # type: ignore[attr-defined]


def test_only_the_run_policy_is_audited(stage: Stage) -> None:
    stages = {p["stage"] for kind, p in stage.recorder.entries if kind == "decision"}
    assert stages == {"recommendation_evaluation", "recommendation_signal", "recommendation_card"}
    denied = [
        p
        for _k, p in stage.recorder.entries
        if p["stage"] == "recommendation_evaluation" and p["effect"] == "deny"
    ]
    assert denied and all(p["rules"] == [RULE1] for p in denied)
    assert stage.result.removed_names and all(
        g.rules == (RULE1,) for g in stage.result.signals_removed
    )


def test_cards_show_only_permitted_handles_and_pictures(stage: Stage) -> None:
    prof = {
        r["subject_id"]: r
        for r in stage.platform.app_profiles.filter(
            pc.equal(stage.platform.app_profiles.column("app_id"), "douyin")
        ).to_pylist()
    }
    cards = stage.result.cards.to_pylist()
    assert len(cards) > 1000
    for card in cards:
        p = prof[card["candidate"]]
        if p["handle_source"] == "provider":
            assert card["handle_decision"] == "deny" and card["shown_handle"] != p["handle"]
        else:
            assert card["shown_handle"] == p["handle"]
        if p["avatar_source"] == "provider":
            assert card["shown_avatar_key"] == "placeholder:default"
    # cards never recommend an existing friend or the viewer
    friends = set(zip(stage.src.tolist(), stage.dst.tolist(), strict=True))
    for card in cards[:5000]:
        v, c = card["viewer"], card["candidate"]
        assert v != c and (v, c) not in friends and (c, v) not in friends


def test_report_section_shows_the_run_figures(stage: Stage) -> None:
    summary = recommendation_summary(stage.result, 10)
    model = ReportModel(
        title="t",
        generated_at=AT,
        as_of=AT.date(),
        data_source=DataSource(graph_name="CollegeMsg", citation="Panzarasa et al. 2009"),
        instruments=(),
        recommendations=summary,
    )
    html = render_html(model)
    table = html[html.index('id="cost-of-compliance"') :]
    table = table[: table.index("</table>")]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", table)
    for r in stage.result.compliance:
        assert f"{r.recall_at_10:.4f}" in cells and f"{r.mrr:.4f}" in cells
    assert table.count("<tr>") == len(stage.result.compliance) + 1
    margins = ranker_margins(stage.result.compliance)
    assert [m.policy for m in margins] == ["none", "injunction", "strict"]
    for m in margins:
        lr = _row(stage.result, m.policy, "learned_ranker")
        best = _row(stage.result, m.policy, m.baseline)
        assert m.recall_at_10 == lr.recall_at_10 - best.recall_at_10  # type: ignore[attr-defined]
    assert 'id="ranker-margins"' in html


def test_strict_variant_adds_one_rule() -> None:
    policy = load_policy_dir(ROOT / "policies")
    strict = strict_variant(policy)
    assert len(strict.bundles) == len(policy.bundles) + 1
    assert strict.bundles[-1].instrument.id == "internal-strict-no-platform-data"


def test_k_above_50_is_refused(stage: Stage) -> None:
    from provguard.errors import InputError

    with pytest.raises(InputError, match="k must be"):
        run_recommendations(
            stage.src,
            stage.dst,
            stage.app,
            default_registry(),
            DecisionPoint(stage.policy),
            AT,
            DecisionRecorder(),
            k=51,
        )


def test_no_subjects_no_pictures_still_runs() -> None:
    """Without logins there are no imported contacts; without pictures no picture signal."""
    el = read_edge_list(ROOT / "data/graphs/snap-collegemsg.txt")
    edges = np.unique(np.sort(np.stack([el.src, el.dst], axis=1), axis=1), axis=0)
    edges = edges[(edges[:, 0] != edges[:, 1]) & (edges.max(axis=1) < 300)]
    n = int(edges.max()) + 1
    profiles = pa.table(
        {
            "app_id": ["douyin"] * n,
            "subject_id": pa.array(range(n), pa.int64()),
            "account_id": [f"a{i}" for i in range(n)],
            "handle": [f"user{i}" for i in range(n)],
            "handle_origins": pa.array([0] * n, pa.uint64()),
            "avatar_key": [None] * n,
            "avatar_origins": pa.array([0] * n, pa.uint64()),
        }
    )
    result = run_recommendations(
        edges[:, 0],
        edges[:, 1],
        profiles,
        default_registry(),
        DecisionPoint(load_policy_dir(ROOT / "policies")),
        AT,
        DecisionRecorder(),
        eval_users=100,
    )
    assert result.eval_users == 100
    none = [r for r in result.compliance if r.policy == "none" and r.method == "learned_ranker"]
    assert not any(n.startswith("provider_contacts") for n in none[0].signals_used)
    assert all(r.users <= 100 for r in result.compliance)

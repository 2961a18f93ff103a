"""Report section 5 says exactly what was stored and measured (session 4 fresh-user finding C):
the stored cards and who got fewer than k (on the real ego-Facebook graph), the sample in the
quality table's caption, net counts and a Change column that agrees with the rounded figures,
why the cost is nil, the ranker row identical to resource allocation's, and thin rows."""

from __future__ import annotations

import html as html_text
import re
from collections.abc import Callable
from pathlib import Path

import networkx as nx
import numpy as np
import pyarrow as pa
import pytest

from provguard.adapters.graph_files import read_edge_list, undirected_simple_edges
from provguard.job.report import stored_cards
from provguard.report.model import (
    ComplianceMetricRow,
    MetricRow,
    RecommendationSummary,
    RemovedSignal,
    ReportModel,
)
from provguard.report.recommend_text import (
    cost_sentence,
    headline_caption,
    identical_sentences,
    ranker_weights_sentence,
)
from provguard.report.render import render_html

GRAPH = Path(__file__).resolve().parents[2] / "data" / "graphs" / "snap-ego-facebook.txt"
RULE = "no-platform-profile-in-friend-recommendation"


@pytest.fixture(scope="module")
def facebook() -> pa.Table:
    s, d = undirected_simple_edges(read_edge_list(GRAPH))
    return pa.table({"src": pa.array(s, pa.int64()), "dst": pa.array(d, pa.int64())})


def _cards(per_viewer: dict[int, int], users: int, k: int = 10) -> pa.Table:
    viewers: list[int] = []
    for v in range(users):
        viewers += [v] * per_viewer.get(v, k)
    return pa.table({"viewer": pa.array(viewers, pa.int64())})


def test_stored_cards_on_ego_facebook_explain_the_short_list(facebook: pa.Table) -> None:
    # the demo's cards: every user 10, user 3980 only 4 (its whole candidate pool)
    st = stored_cards(_cards({3980: 4}, 4039), facebook, 4039, 10)
    assert (st.rows, st.viewers, st.users, st.short_viewers, st.empty_viewers) == (
        40384,
        4039,
        4039,
        1,
        0,
    )
    assert st.pool_bound == 1
    assert [(e.viewer, e.cards, e.pool) for e in st.examples] == [(3980, 4, 4)]


def test_pool_sizes_agree_with_networkx(facebook: pa.Table) -> None:
    graph = nx.Graph()
    graph.add_edges_from(
        zip(facebook.column("src").to_pylist(), facebook.column("dst").to_pylist(), strict=True)
    )
    rng = np.random.default_rng(4)
    picked = sorted(int(v) for v in rng.choice(4039, 10, replace=False))
    st = stored_cards(_cards(dict.fromkeys(picked, 0), 4039), facebook, 4039, 10)
    assert st.empty_viewers == 10 and st.viewers == 4039 - 10
    for e in st.examples:
        two_steps = nx.single_source_shortest_path_length(graph, e.viewer, cutoff=2)
        assert e.pool == sum(1 for dist in two_steps.values() if dist == 2), e.viewer
    # a short list the pool does not explain is counted apart
    big = max(picked, key=lambda v: next(e.pool for e in st.examples if e.viewer == v) or 0)
    st2 = stored_cards(_cards({big: 3}, 4039), facebook, 4039, 10)
    assert st2.short_viewers == 1 and st2.pool_bound == 0


def _demo_summary() -> RecommendationSummary:
    """Section 5 of the session-4 fresh user's demo (seed 7, ego-Facebook), as its
    evidence.json recorded it, plus the units the job now adds."""

    def row(
        policy: str,
        method: str,
        sl: str,
        r: float,
        mrr: float,
        h: float,
        cat: float,
        q: int,
        u: int,
    ) -> ComplianceMetricRow:
        return ComplianceMetricRow(
            policy=policy,
            method=method,
            slice=sl,
            recall_at_10=r,
            mrr=mrr,
            hits_at_50=h,
            coverage=1.0,
            catalogue_coverage_at_10=cat,
            queries=q,
            users=u,
        )

    rows = []
    for policy in ("none", "injunction", "strict"):
        rows += [
            row(
                policy,
                "resource_allocation",
                "all",
                0.4741826381059752,
                0.69,
                0.9632446134347274,
                0.668729883634563,
                4435,
                789,
            ),
            row(
                policy,
                "resource_allocation",
                "cold_start",
                0.7272727272727273,
                0.5,
                0.75,
                0.10200544689279524,
                22,
                20,
            ),
        ]
    rows += [
        row(
            "none",
            "learned_ranker",
            "all",
            0.5343855693348365,
            0.7723906367688675,
            0.9645120405576679,
            0.7333498390690765,
            4435,
            789,
        ),
        row(
            "injunction",
            "learned_ranker",
            "all",
            0.534836527621195,
            0.7724934121092857,
            0.9645120405576679,
            0.7333498390690765,
            4435,
            789,
        ),
        row(
            "strict",
            "learned_ranker",
            "all",
            0.4741826381059752,
            0.69,
            0.9632446134347274,
            0.668729883634563,
            4435,
            789,
        ),
        row(
            "strict",
            "learned_ranker",
            "cold_start",
            0.7272727272727273,
            0.5,
            0.75,
            0.10200544689279524,
            22,
            20,
        ),
    ]
    removed = [
        ("handle_similarity[qq+user_input]", 2946),
        ("handle_similarity[qq+wechat]", 2782),
        ("handle_similarity[qq]", 698),
        ("handle_similarity[user_input+wechat]", 5418),
        ("handle_similarity[wechat]", 2204),
        ("picture_similarity[qq+wechat]", 2),
        ("picture_similarity[user_input+wechat]", 4),
        ("picture_similarity[wechat]", 2),
    ]
    return RecommendationSummary(
        users=4039,
        recs_per_user=10,
        eval_users=1000,
        metrics=(
            MetricRow(name="Recall@10", value_without=0.5343855693348365,
                      value_with=0.534836527621195, unit="queries", denominator=4435),
            MetricRow(name="MRR@50", value_without=0.7723906367688675,
                      value_with=0.7724934121092857),
            MetricRow(name="Hits@50", value_without=0.9645120405576679,
                      value_with=0.9645120405576679, unit="querying users", denominator=789),
        ),
        removed_signals=tuple(RemovedSignal(signal=n, count=c, rule_id=RULE) for n, c in removed),
        compliance=tuple(rows),
        protocol="Random 10% edge hold-out; queries of 1,000 of 4,039 users (seeded sample).",
    )  # fmt: skip


def test_demo_numbers_read_as_net_counts() -> None:
    r = _demo_summary()
    recall, mrr, hits = r.metrics
    # 0.534837 * 4435 = 2372 hits, 0.534386 * 4435 = 2370: two queries more, none fewer net
    assert recall.net_change == 2 and hits.net_change == 0 and mrr.net_change is None
    assert recall.rounded_delta(4) == pytest.approx(0.0004)  # 0.5348 - 0.5344 as shown
    assert headline_caption(r).startswith(
        "The learned ranker's quality without and with the policy, on held-out friendships: "
        "1,000 of 4,039 users sampled; 789 of them have a held-out friend and ask 4,435 queries"
    )
    why = cost_sentence(r)
    assert "The policy removed 8 signals from the learned ranker (rule " + RULE in why
    assert "handle_similarity[user_input+wechat] (5,418)" in why
    assert "14,056 candidate scores in all on the whole graph, each computed from values" in why
    assert (
        "Without them, Recall@10 changed by a net +2 of 4,435 queries and Hits@50 by a net "
        "+0 of 789" in why
    )
    assert "the cost of compliance is nil here" in why
    (same,) = identical_sentences(r)
    assert same.startswith(
        "Under strict, the learned ranker's rows (slices all, cold_start) equal "
        "resource_allocation's on every metric."
    )
    assert len(r.identical_rows()) == 2  # strict: all and cold_start


def test_a_real_loss_is_not_called_nil() -> None:
    r = _demo_summary()
    lost = MetricRow(name="Recall@10", value_without=0.55, value_with=0.50, unit="queries",
                     denominator=4435)  # fmt: skip
    r2 = r.model_copy(update={"metrics": (lost,)})
    why = cost_sentence(r2)
    assert "net -222 of 4,435 queries" in why and "nil" not in why
    assert "That is the cost of compliance in recommendation quality." in why
    assert "removed no signal" in cost_sentence(r.model_copy(update={"removed_signals": ()}))


def test_section_5_renders_what_is_stored_and_what_is_thin(
    make_model: Callable[..., ReportModel], facebook: pa.Table
) -> None:
    st = stored_cards(_cards({3980: 4}, 4039), facebook, 4039, 10)
    r = _demo_summary().model_copy(update={"stored": st})
    html = render_html(make_model(recommendations=r))
    section = html.split('id="s-recs"')[1].split("</section>")[0]
    text = html_text.unescape(" ".join(re.sub(r"<[^>]+>", " ", section).split()))
    assert "computed once, without the policy and once with it" not in text
    assert (
        "data/recommendations.parquet holds 40,384 recommendations for 4,039 of 4,039 users, "
        "computed once, with the policy" in text
    )
    assert "1 user got fewer than 10: this user has fewer than 10 candidates" in text
    assert "Example: user 3980: 4 recommendations, 4 candidates." in text
    assert "Recommendations without the policy are not stored" in text
    assert "Recall@10 0.5344 0.5348 +0.0004 +2 of 4,435 queries" in text
    assert "Hits@50 0.9645 0.9645 +0.0000 +0 of 789 querying users" in text
    assert "MRR@50 0.7724 0.7725 +0.0001 —" in text
    assert "1,000 of 4,039 users sampled" in text.split("Recall@10")[0]  # in the caption
    # cold-start rows are flagged: 4 of the rows above rest on 22 queries
    assert text.count("22 †") == 4 and text.count("†") == 5  # 4 rows + the note
    assert "4 rows of this table rest on fewer than 100 queries" in text
    assert "(slices all, cold_start) equal resource_allocation's on every metric" in text


def test_old_evidence_without_stored_cards_says_so(make_model: Callable[..., ReportModel]) -> None:
    r = _demo_summary().model_copy(update={"stored": None, "eval_users": None})
    html = render_html(make_model(recommendations=r))
    assert "does not record how many recommendations were stored" in html
    assert "all 4,039 users; 789 of them" in html


def test_intervals_and_the_chosen_weight_are_stated_when_recorded() -> None:
    r = _demo_summary()
    recall, mrr, hits = r.metrics
    with_ci = r.model_copy(
        update={
            "metrics": (
                recall.model_copy(update={"interval": (-0.0009, 0.0018)}),
                mrr.model_copy(update={"interval": (-0.0021, 0.0023)}),
                hits,
            ),
            "ranker_weights": {"none": 0.6, "injunction": 0.6, "strict": 0.0},
        }
    )
    why = cost_sentence(with_ci)
    assert (
        "95 % paired-bootstrap intervals of the change over the evaluated users: Recall@10 "
        "[-0.0009, +0.0018]; MRR@50 [-0.0021, +0.0023] -- every one contains 0" in why
    )
    assert "No confidence interval" not in why and "No confidence interval" in cost_sentence(r)
    (same,) = identical_sentences(with_ci)
    assert "the weight chosen under strict is 0" in same and "not recorded" not in same
    moved = with_ci.model_copy(
        update={"metrics": (recall.model_copy(update={"interval": (0.001, 0.004)}),)}
    )
    assert "contains 0" not in cost_sentence(moved)


def test_every_policys_fusion_weight_is_listed(make_model: Callable[..., ReportModel]) -> None:
    """The demo's weights (none 0.8, injunction 0.8, strict 0) appear in section 5, in the
    cost-of-compliance table's policy order, not only strict's 0 (finding M2 of session 4)."""
    r = _demo_summary().model_copy(
        update={"ranker_weights": {"strict": 0.0, "injunction": 0.8, "none": 0.8}}
    )
    expected = (
        "Fusion weight of the learned ranker, chosen on validation users under each policy: "
        "none 0.8, injunction 0.8, strict 0 (0 = resource allocation's ranking alone, 1 = the "
        "model's alone)."
    )
    assert ranker_weights_sentence(r) == expected
    html = render_html(make_model(recommendations=r))
    para = html.split('<p id="recs-weights">')[1].split("</p>")[0]
    assert para.replace("&#39;", "'") == expected
    # an older run's evidence without weights: no sentence, no empty paragraph
    old = render_html(make_model(recommendations=r.model_copy(update={"ranker_weights": {}})))
    assert ranker_weights_sentence(r.model_copy(update={"ranker_weights": {}})) == ""
    assert 'id="recs-weights"' not in old

"""Issue 7, round 5: common-neighbourhood clustering features (LCL / CAR / CRA), the exposure
re-ranking for catalogue coverage, and the cross-fitted directed ranker (``"lgbm-cv"``).

References are brute force over Python sets / networkx on small graphs and a real
ego-Facebook subgraph."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from provguard.adapters.graph_files import read_edge_list, undirected_simple_edges
from provguard.errors import InputError
from provguard.recommend.features import common_neighbour_links
from provguard.recommend.graph import adjacency
from provguard.recommend.heuristics import resource_allocation
from provguard.recommend.protocol import (
    Profiles,
    catalogue_coverage,
    cost_of_compliance,
    random_edge_split,
    slice_metrics,
    split_views,
)
from provguard.recommend.rank import GateResult, allow_all, recommend
from provguard.recommend.ranker import (
    BETAS,
    STRENGTHS,
    LearnedRanker,
    _row_log_ranks,
    choose_strength,
    exposure_rerank,
    pair_features,
)
from provguard.recommend.signals import Signal, common_neighbours, two_hop_candidates

ROOT = Path(__file__).resolve().parents[2]
G = frozenset({"douyin"})
AT = datetime(2019, 6, 30, tzinfo=UTC)


class Untouchable:
    def __getattribute__(self, name: str) -> Any:
        raise AssertionError(f"refused signal's scores were read ({name})")


def _brute_links(g: nx.Graph, u: int, v: int) -> tuple[int, int, float]:
    cn = set(g[u]) & set(g[v])
    lcl = sum(1 for x in cn for y in cn if x < y and g.has_edge(x, y))
    cra = sum(len(set(g[z]) & cn) / g.degree(z) for z in cn)
    return lcl, len(cn) * lcl, cra


@pytest.mark.parametrize(
    "graph",
    [nx.karate_club_graph(), nx.gnp_random_graph(45, 0.18, seed=3), nx.les_miserables_graph()],
    ids=["karate", "gnp", "lesmis"],
)
def test_common_neighbour_links_equal_brute_force(graph: nx.Graph) -> None:
    g = nx.convert_node_labels_to_integers(graph)
    s, d = (np.array(x, dtype=np.int64) for x in zip(*g.edges(), strict=True))
    n = g.number_of_nodes()
    a = adjacency(s, d, n)
    pool = two_hop_candidates(a)
    lcl, car, cra = common_neighbour_links(a, pool, origins=G)
    assert [x.name for x in (lcl, car, cra)] == ["cn_links", "car", "cra"]
    assert lcl.origins == G and lcl.category == "user.social.friend_list"
    rows, cols = pool.nonzero()
    checked = 0
    for u, v in zip(rows.tolist(), cols.tolist(), strict=True):
        if u == v or g.has_edge(u, v):
            continue
        want = _brute_links(g, u, v)
        got = (lcl.scores[u, v], car.scores[u, v], cra.scores[u, v])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        checked += 1
    assert checked > 100
    # symmetric, and nothing outside the pool (friends, the diagonal)
    for sig in (lcl, car, cra):
        assert abs(sig.scores - sig.scores.T).max() < 1e-12 if sig.scores.nnz else True
        assert sig.scores.multiply(a).nnz == 0 and sig.scores.diagonal().sum() == 0


def test_common_neighbour_links_on_degenerate_graphs() -> None:
    empty = sp.csr_matrix((0, 0))
    assert all(x.scores.shape == (0, 0) for x in common_neighbour_links(empty, empty, origins=G))
    # a path 0-1-2: one pool pair, one common neighbour, no link among the common neighbours
    a = adjacency(np.array([0, 1]), np.array([1, 2]), 3)
    lcl, car, cra = common_neighbour_links(a, two_hop_candidates(a), origins=G)
    assert lcl.scores.nnz == car.scores.nnz == cra.scores.nnz == 0
    with pytest.raises(InputError):
        common_neighbour_links(a, sp.csr_matrix((4, 4)), origins=G)


def _brute_rerank(c: np.ndarray, strength: float, k: int) -> np.ndarray:
    expo: dict[int, int] = {}
    for row in c:
        for x in row[:k]:
            if x >= 0:
                expo[int(x)] = expo.get(int(x), 0) + 1
    out = np.full_like(c, -1)
    for i, row in enumerate(c):
        items = [
            (np.log(r + 1) + strength * np.log1p(expo.get(int(x), 0)), r, int(x))
            for r, x in enumerate(row)
            if x >= 0
        ]
        items.sort()
        out[i, : len(items)] = [x for _, _, x in items]
    return out


@settings(max_examples=80, deadline=None)
@given(
    lists=st.lists(
        st.lists(st.integers(0, 15), min_size=0, max_size=8, unique=True), min_size=1, max_size=12
    ),
    strength=st.sampled_from([0.0, 0.1, 0.5, 1.0, 3.0]),
    k=st.integers(1, 5),
)
def test_exposure_rerank_equals_brute_force(
    lists: list[list[int]], strength: float, k: int
) -> None:
    c = np.full((len(lists), 8), -1, dtype=np.int64)
    for i, row in enumerate(lists):
        c[i, : len(row)] = row
    v = np.where(c >= 0, 1.0 / (1.0 + np.arange(8)), 0.0)
    ids, vals = exposure_rerank(c, v, strength=strength, k=k)
    np.testing.assert_array_equal(ids, _brute_rerank(c, strength, k))
    # same candidates per list (so Hits@depth cannot change), values decreasing, 0 on padding
    for i in range(c.shape[0]):
        assert sorted(ids[i][ids[i] >= 0].tolist()) == sorted(c[i][c[i] >= 0].tolist())
    assert np.all(np.diff(vals, axis=1) <= 1e-15) and np.all(vals[ids < 0] == 0)
    if strength == 0.0:
        np.testing.assert_array_equal(vals, v)


def test_exposure_rerank_by_hand_and_bad_input() -> None:
    # candidate 9 is in every top-1; with a strong penalty each list puts its second item first
    c = np.array([[9, 1], [9, 2], [9, 3]])
    ids, _ = exposure_rerank(c, np.ones((3, 2)), strength=2.0, k=1)
    assert ids.tolist() == [[1, 9], [2, 9], [3, 9]]
    ids, _ = exposure_rerank(c, np.ones((3, 2)), strength=0.1, k=1)
    # a weak one keeps 9 first: 0.1 * log(1 + 3) < log 2
    assert ids.tolist() == c.tolist()
    for bad in (
        {"strength": -1.0},
        {"strength": 1.0, "k": 0},
    ):
        with pytest.raises(InputError):
            exposure_rerank(c, np.ones((3, 2)), **bad)  # type: ignore[arg-type]
    with pytest.raises(InputError):
        exposure_rerank(c, np.ones((3, 3)), strength=1.0)


def test_choose_strength_rule() -> None:
    anchor = (0.30, 0.50, 0.90, 0.60)
    val = {
        0.0: (0.35, 0.55, 0.95, 0.58),  # beats on accuracy, loses on coverage
        0.1: (0.34, 0.54, 0.95, 0.605),  # coverage gain 0.005 < margin
        0.3: (0.33, 0.53, 0.95, 0.62),  # first to reach the margin
        0.5: (0.31, 0.51, 0.95, 0.70),
        1.0: (0.29, 0.49, 0.95, 0.80),  # loses Recall@10 / MRR: infeasible
    }
    assert choose_strength(val, anchor) == 0.3
    # no strength reaches the margin: the largest smallest gain among the feasible ones
    val2 = {s: (*v[:3], min(v[3], 0.605)) for s, v in val.items()}
    assert choose_strength(val2, anchor) == 0.1
    # nothing feasible: no penalty
    assert choose_strength({0.0: (0.2, 0.4, 0.9, 0.7)}, anchor) == 0.0
    assert choose_strength({}, anchor) == 0.0


@pytest.fixture(scope="module")
def ego_sub() -> Any:
    el = read_edge_list(ROOT / "data/graphs/snap-ego-facebook.txt")
    s, d = undirected_simple_edges(el)
    keep = (s < 500) & (d < 500)
    split = random_edge_split(s[keep], d[keep], 500, seed=3, name="ego-sub")
    train, fit = split_views(split, Profiles.empty(500), global_features=True, seed=3)
    return split, train, fit


def test_cross_fitted_ranker_on_ego_subgraph(ego_sub: Any) -> None:
    split, train, fit = ego_sub
    assert {"cn_links", "car", "cra"} <= {s.name for s in train.signals}
    model = LearnedRanker(
        "lgbm", seed=3, directed=True, folds=3, coverage_rerank=True, max_iter=30
    ).fit(fit.pool, fit.signals, allow_all, split.fit_positives)
    assert set(model.validation) == set(BETAS) and model.beta in BETAS
    assert set(model.coverage_validation) == set(STRENGTHS) and model.strength in STRENGTHS
    # the chosen beta has the largest smallest validation gain over the anchor (beta = 0)
    base = np.asarray(model.validation[0.0])
    best = (np.asarray(model.validation[model.beta]) - base).min()
    assert best >= 0.0 and all(
        (np.asarray(v) - base).min() <= best for v in model.validation.values()
    )
    assert model.anchor_validation[:3] == model.validation[0.0]
    assert model.strength == choose_strength(model.coverage_validation, model.anchor_validation)
    # the penalty reorders inside the top 50 only: Hits@50 is the same for every strength
    assert len({v[2] for v in model.coverage_validation.values()}) == 1
    recs = model.recommend(train.pool, train.signals, allow_all, 50)
    ra = next(s for s in train.signals if s.name == "resource_allocation")
    ra_recs = recommend(train.adj, [ra], allow_all, 50)
    m, r = slice_metrics(recs, split.test), slice_metrics(ra_recs, split.test)
    # every user with a pool list gets one, of the same candidates' count as RA (same pool)
    np.testing.assert_array_equal((recs.candidates >= 0).sum(1), (ra_recs.candidates >= 0).sum(1))
    assert m.hits >= r.hits - 0.05 and m.recall_at_k >= r.recall_at_k - 0.05
    # beta = 0 and no penalty: resource allocation's lists exactly
    model.beta, model.strength = 0.0, 0.0
    same = model.recommend(train.pool, train.signals, allow_all, 50)
    np.testing.assert_array_equal(same.candidates, ra_recs.candidates)
    # scoring a subset of users gives those users' rows of the full run (no penalty)
    model.beta = 0.6
    full = model.recommend(train.pool, train.signals, allow_all, 20)
    users = np.arange(0, 500, 7)
    part = model.recommend(train.pool, train.signals, allow_all, 20, users=users)
    np.testing.assert_array_equal(part.candidates[users], full.candidates[users])
    others = np.setdiff1d(np.arange(500), users)
    assert (part.candidates[others] == -1).all()
    # a penalty raises catalogue coverage@10 on the test lists and keeps Hits@50
    plain = model.recommend(train.pool, train.signals, allow_all, 50)
    model.strength = 1.0
    pen = model.recommend(train.pool, train.signals, allow_all, 50)
    assert catalogue_coverage(pen, 10) > catalogue_coverage(plain, 10)
    assert slice_metrics(pen, split.test).hits == slice_metrics(plain, split.test).hits


def test_directed_rank_features_by_hand() -> None:
    # edges 0-1, 1-2, 2-3, 1-3, 3-4: the rank of each candidate in each end's
    # resource-allocation list (ties by id) and each end's number of candidates, brute force
    a = adjacency(np.array([0, 1, 2, 1, 3]), np.array([1, 2, 3, 3, 4]), 5)
    pool = two_hop_candidates(a)
    ra = resource_allocation(a, origins=G)
    model = LearnedRanker("lgbm", directed=True, folds=2)
    feats = pair_features(pool, [ra, common_neighbours(a)])
    model.families = feats.names
    rows, cols, design = model._directed_design(feats)
    x = design(np.arange(rows.size))
    ra_d = sp.csr_matrix(ra.scores)
    for i, (u, v) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):

        def rank(owner: int, item: int) -> int:
            lst = [
                (-ra_d[owner, c], c)
                for c in range(5)
                if pool[owner, c] and c != owner and not a[owner, c]
            ]
            return sorted(lst).index((-ra_d[owner, item], item)) + 1

        np.testing.assert_allclose(x[i, 2], np.log(rank(u, v)))
        np.testing.assert_allclose(x[i, 3], np.log(rank(v, u)))
        np.testing.assert_allclose(x[i, 4], np.log1p((rows == u).sum()))
        np.testing.assert_allclose(x[i, 5], np.log1p((rows == v).sum()))
    assert _row_log_ranks(rows, cols, np.ones(rows.size)).min() == 0.0


def test_cross_fitted_ranker_gates_before_training_and_bad_arguments() -> None:
    el = read_edge_list(ROOT / "data/graphs/snap-ego-facebook.txt")
    s, d = undirected_simple_edges(el)
    keep = (s < 300) & (d < 300)
    split = random_edge_split(s[keep], d[keep], 300, seed=5, name="ego-300")
    train, fit = split_views(split, Profiles.empty(300), seed=5)
    poisoned = Signal(
        "provider_contacts[wechat]",
        "user.social.friend_list",
        frozenset({"wechat"}),
        1.0,
        cast(sp.csr_matrix, Untouchable()),
    )

    def gate(sig: Signal) -> GateResult:
        return GateResult("wechat" not in sig.origins, "test")

    model = LearnedRanker("logistic", directed=True, folds=2, coverage_rerank=True)
    model.fit(fit.pool, [*fit.signals, poisoned], gate, split.fit_positives)
    assert model.removed_at_training == ("provider_contacts[wechat]",)
    recs = model.recommend(train.pool, [*train.signals, poisoned], gate, 10)
    assert recs.removed == ("provider_contacts[wechat]",) and recs.candidates.shape == (300, 10)
    for bad in (
        {"folds": 1},
        {"directed": True},
        {"coverage_rerank": True},
        {"folds": 2, "rerank_top": 10},
    ):
        with pytest.raises(InputError):
            LearnedRanker("lgbm", **bad)
    with pytest.raises(InputError, match="not fitted"):
        LearnedRanker("lgbm", folds=2).recommend(train.pool, train.signals, allow_all, 5)


def test_cost_of_compliance_with_lgbm_cv() -> None:
    el = read_edge_list(ROOT / "data/graphs/snap-ego-facebook.txt")
    s, d = undirected_simple_edges(el)
    keep = (s < 250) & (d < 250)
    split = random_edge_split(s[keep], d[keep], 250, seed=4, name="ego-250")
    models: dict[str, LearnedRanker] = {}
    kept: dict[tuple[str, str], Any] = {}
    rows = cost_of_compliance(
        split,
        Profiles.empty(250),
        {"none": None},
        at=AT,
        ranker="lgbm-cv",
        seed=4,
        keep_models=models,
        keep_recs=kept,
    )
    model = models["none"]
    assert model.folds == 4 and model.directed and model.coverage_rerank
    assert {"cn_links", "car", "cra", "ppr"} <= set(model.families)
    by = {(r.method, r.slice): r for r in rows}
    ranked = kept[("none", "learned_ranker")]
    assert (
        by[("learned_ranker", "all")].recall_at_10 == slice_metrics(ranked, split.test).recall_at_k
    )
    with pytest.raises(InputError):
        cost_of_compliance(split, Profiles.empty(250), {"none": None}, at=AT, ranker="xgb")

"""Anchored rank fusion of the learned ranker (issue 7) and the paired bootstrap of the bench:
hand-computed cases, hypothesis properties, and a real ego-Facebook subgraph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from provguard.adapters.graph_files import read_edge_list, undirected_simple_edges
from provguard.errors import InputError
from provguard.recommend.protocol import (
    Profiles,
    paired_bootstrap,
    random_edge_split,
    slice_metrics,
    split_views,
)
from provguard.recommend.rank import Recommendations, allow_all, recommend, top_k_rows
from provguard.recommend.ranker import BETAS, LearnedRanker, _slice, fuse_ranks

ROOT = Path(__file__).resolve().parents[2]


def test_fuse_ranks_by_hand() -> None:
    # one user (row 0), three candidates: model prefers 3 > 2 > 1, anchor 1 > 2 > 3
    rows = np.array([0, 0, 0])
    cols = np.array([1, 2, 3])
    model = np.array([0.1, 0.5, 0.9])
    anchor = np.array([3.0, 2.0, 1.0])
    log = np.log
    np.testing.assert_allclose(
        fuse_ranks(rows, cols, model, anchor, 1.0), 1 / (1 + log([3.0, 2.0, 1.0]))
    )
    np.testing.assert_allclose(
        fuse_ranks(rows, cols, model, anchor, 0.0), 1 / (1 + log([1.0, 2.0, 3.0]))
    )
    half = fuse_ranks(rows, cols, model, anchor, 0.5)
    np.testing.assert_allclose(half, 1 / (1 + 0.5 * log([3.0, 4.0, 3.0])))
    # without an anchor the model's ranking alone, whatever beta
    np.testing.assert_allclose(
        fuse_ranks(rows, cols, model, None, 0.3), 1 / (1 + log([3.0, 2.0, 1.0]))
    )
    with pytest.raises(InputError):
        fuse_ranks(rows, cols, model, anchor, 1.5)
    with pytest.raises(InputError):
        fuse_ranks(rows, cols, model[:2], anchor, 0.5)


@settings(max_examples=60, deadline=None)
@given(
    cells=st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 7), st.integers(1, 4), st.floats(0.01, 1.0)),
        min_size=1,
        max_size=40,
        unique_by=lambda c: (c[0], c[1]),
    ),
    beta=st.sampled_from(BETAS),
    k=st.integers(1, 8),
)
def test_beta_zero_is_the_anchor_and_one_is_the_model(
    cells: list[tuple[int, int, int, float]], beta: float, k: int
) -> None:
    rows = np.array([c[0] for c in cells], dtype=np.int64)
    cols = np.array([c[1] for c in cells], dtype=np.int64)
    anchor = np.array([c[2] for c in cells], dtype=np.float64)  # ties on purpose
    model = np.array([c[3] for c in cells], dtype=np.float64)
    fused = fuse_ranks(rows, cols, model, anchor, beta)
    assert ((fused > 0) & (fused <= 1)).all()

    def top(values: np.ndarray) -> np.ndarray:
        return top_k_rows(sp.csr_matrix((values, (rows, cols)), shape=(6, 8)), k)[0]

    if beta == 0.0:
        np.testing.assert_array_equal(top(fused), top(anchor))
    if beta == 1.0:
        np.testing.assert_array_equal(top(fused), top(model))
    # a candidate ranked first by both rankings stays first
    for r in np.unique(rows):
        sel = np.flatnonzero(rows == r)
        a_first = sel[np.lexsort((cols[sel], -anchor[sel]))[0]]
        m_first = sel[np.lexsort((cols[sel], -model[sel]))[0]]
        if a_first == m_first:
            assert fused[a_first] == 1.0


@pytest.fixture(scope="module")
def ego_subgraph() -> Any:
    el = read_edge_list(ROOT / "data/graphs/snap-ego-facebook.txt")
    s, d = undirected_simple_edges(el)
    keep = (s < 1200) & (d < 1200)
    s, d = s[keep], d[keep]
    split = random_edge_split(s, d, 1200, seed=3, name="ego-sub")
    train, fit = split_views(split, Profiles.empty(1200))
    return split, train, fit


def test_ranker_never_loses_to_resource_allocation_on_validation(ego_subgraph: Any) -> None:
    split, train, fit = ego_subgraph
    model = LearnedRanker("logistic", seed=3).fit(
        fit.pool, fit.signals, allow_all, split.fit_positives
    )
    assert set(model.validation) == set(BETAS)
    base = np.asarray(model.validation[0.0])
    chosen = np.asarray(model.validation[model.beta]) - base
    # the chosen weight is never worse than the anchor alone on any validation metric, and no
    # other weight has a larger smallest gain
    assert chosen.min() >= 0.0
    for b in BETAS:
        assert (np.asarray(model.validation[b]) - base).min() <= chosen.min()
    # on the test pairs (never seen by the fit): within a small tolerance of RA on every metric
    recs = model.recommend(train.pool, train.signals, allow_all, 50)
    ra = next(s for s in train.signals if s.name == "resource_allocation")
    ra_recs = recommend(train.adj, [ra], allow_all, 50)
    m = slice_metrics(recs, split.test)
    r = slice_metrics(ra_recs, split.test)
    for got, want in ((m.recall_at_k, r.recall_at_k), (m.mrr, r.mrr), (m.hits, r.hits)):
        assert got >= want - 0.02
    # beta = 0 reproduces resource allocation's ranking exactly
    model.beta = 0.0
    same = model.recommend(train.pool, train.signals, allow_all, 50)
    np.testing.assert_array_equal(same.candidates, ra_recs.candidates)


def test_ranker_without_anchor_is_the_classifier(ego_subgraph: Any) -> None:
    split, train, fit = ego_subgraph
    model = LearnedRanker("logistic", seed=3, anchor=None).fit(
        fit.pool, fit.signals, allow_all, split.fit_positives
    )
    assert model.beta == 1.0 and model.validation == {}
    recs = model.recommend(train.pool, train.signals, allow_all, 20)
    from provguard.recommend.ranker import pair_features

    feats = pair_features(train.pool, train.signals, model.families)
    p = model.pair_scores(feats)
    full = sp.csr_matrix(
        (
            np.concatenate([p, p]),
            (np.concatenate([feats.rows, feats.cols]), np.concatenate([feats.cols, feats.rows])),
        ),
        shape=(feats.n, feats.n),
    )
    np.testing.assert_array_equal(recs.candidates, top_k_rows(full, 20)[0])
    with pytest.raises(InputError):
        LearnedRanker(validation_users=0)


def test_validation_metrics_equal_slice_metrics(ego_subgraph: Any) -> None:
    split, train, _fit = ego_subgraph
    ra = next(s for s in train.signals if s.name == "resource_allocation")
    recs = recommend(train.adj, [ra], allow_all, 50)
    users = np.arange(0, 1200, 3)
    m = slice_metrics(recs, split.test, users=users)
    got = _slice(recs, split.test, users)
    np.testing.assert_allclose(got, (m.recall_at_k, m.mrr, m.hits), rtol=1e-12)


def test_paired_bootstrap(ego_subgraph: Any) -> None:
    split, train, _fit = ego_subgraph
    by = {s.name: s for s in train.signals}
    ra = recommend(train.adj, [by["resource_allocation"]], allow_all, 50)
    cn = recommend(train.adj, [by["common_neighbours"]], allow_all, 50)
    out = paired_bootstrap(ra, cn, split.test, n_boot=500, seed=1)
    a, b = slice_metrics(ra, split.test), slice_metrics(cn, split.test)
    want = {
        "recall_at_10": a.recall_at_k - b.recall_at_k,
        "mrr": a.mrr - b.mrr,
        "hits_at_50": a.hits - b.hits,
    }
    for iv in out:
        assert iv.delta == pytest.approx(want[iv.metric], abs=1e-12)
        assert iv.low <= iv.delta <= iv.high
    # the same recommendations: every resample's difference is exactly 0
    for iv in paired_bootstrap(ra, ra, split.test, n_boot=200):
        assert iv.low == iv.high == iv.delta == 0.0 and not iv.significant
    with pytest.raises(InputError):
        paired_bootstrap(ra, cn, split.test, n_boot=10)
    with pytest.raises(InputError):
        paired_bootstrap(ra, cn, split.test, users=np.array([], dtype=np.int64))
    empty = Recommendations(np.full((1200, 5), -1), np.zeros((1200, 5)), (), ())
    with pytest.raises(InputError):
        paired_bootstrap(empty, cn, split.test)


def test_cost_of_compliance_keeps_the_ranked_lists(ego_subgraph: Any) -> None:
    from datetime import UTC, datetime

    from provguard.recommend.protocol import cost_of_compliance

    split, train, fit = ego_subgraph
    kept: dict[tuple[str, str], Recommendations] = {}
    rows = cost_of_compliance(
        split,
        Profiles.empty(split.n),
        {"none": None},
        at=datetime(2019, 6, 30, tzinfo=UTC),
        heuristics=("resource_allocation",),
        seed=3,
        views=(train, fit),
        keep_recs=kept,
    )
    assert set(kept) == {("none", "resource_allocation"), ("none", "learned_ranker")}
    for r in rows:
        if r.slice != "all":
            continue
        m = slice_metrics(kept[(r.policy, r.method)], split.test)
        assert (m.recall_at_k, m.mrr, m.hits) == (r.recall_at_10, r.mrr, r.hits_at_50)

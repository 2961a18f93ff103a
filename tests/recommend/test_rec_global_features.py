"""Non-local pair features (issue 7, round 4) against independent computations: networkx's
Louvain partition and resource allocation, dense matrix powers, a dense eigen-decomposition;
and the LightGBM ranker that re-ranks resource allocation's top lists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import provguard.recommend.global_features as GF
from provguard.adapters.graph_files import read_edge_list, undirected_simple_edges
from provguard.errors import InputError
from provguard.recommend.graph import adjacency
from provguard.recommend.heuristics import resource_allocation
from provguard.recommend.protocol import Profiles, random_edge_split, split_views
from provguard.recommend.rank import allow_all, recommend, top_k_rows
from provguard.recommend.ranker import LearnedRanker, _rerank_anchor_top
from provguard.recommend.signals import Signal, common_neighbours, two_hop_candidates

ROOT = Path(__file__).resolve().parents[2]
G = frozenset({"douyin"})


def _ego(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    el = read_edge_list(ROOT / "data/graphs/snap-ego-facebook.txt")
    s, d = undirected_simple_edges(el)
    keep = (s < nodes) & (d < nodes)
    return s[keep], d[keep]


@pytest.fixture(scope="module")
def ego400() -> tuple[sp.csr_matrix, sp.csr_matrix, nx.Graph]:
    s, d = _ego(400)
    a = adjacency(s, d, 400)
    g = nx.Graph()
    g.add_nodes_from(range(400))
    g.add_edges_from(zip(s.tolist(), d.tolist(), strict=True))
    return a, two_hop_candidates(a), g


def test_ra_alpha_one_is_resource_allocation_and_zero_is_common_neighbours(
    ego400: Any,
) -> None:
    a, pool, g = ego400
    r, c = pool.nonzero()
    one = GF.resource_allocation_alpha(a, pool, origins=G, alpha=1.0)
    want = {
        (u, v): p
        for u, v, p in nx.resource_allocation_index(
            g, list(zip(r.tolist(), c.tolist(), strict=True))
        )
    }
    got = np.asarray(one.scores[r, c]).ravel()
    assert np.allclose(got, [want[p] for p in zip(r.tolist(), c.tolist(), strict=True)], rtol=1e-12)
    zero = GF.resource_allocation_alpha(a, pool, origins=G, alpha=0.0)
    cn = common_neighbours(a, origins=G).scores
    assert np.array_equal(np.asarray(zero.scores[r, c]).ravel(), np.asarray(cn[r, c]).ravel())
    two = GF.resource_allocation_alpha(a, pool, origins=G, alpha=2.0)
    u, v = int(r[17]), int(c[17])
    by_hand = sum(1.0 / g.degree(z) ** 2 for z in nx.common_neighbors(g, u, v))
    assert two.scores[u, v] == pytest.approx(by_hand, rel=1e-12)
    assert (two.scores != two.scores.T).nnz == 0 and two.name == "ra_alpha2"


def test_same_community_is_networkx_louvain(ego400: Any) -> None:
    a, pool, g = ego400
    sig = GF.same_community(a, pool, origins=G, resolution=1.0, seed=5)
    comms = nx.community.louvain_communities(g, resolution=1.0, seed=5)
    label = {v: i for i, c in enumerate(comms) for v in c}
    r, c = pool.nonzero()
    want = np.array(
        [label[u] == label[v] for u, v in zip(r.tolist(), c.tolist(), strict=True)], float
    )
    assert np.array_equal(np.asarray(sig.scores[r, c]).ravel(), want)
    assert 0 < want.mean() < 1 and sig.name == "same_community_r1"
    assert sig.category == "user.social.friend_list" and sig.origins == G
    with pytest.raises(InputError):
        GF.louvain_labels(a, resolution=0.0)


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(2, 14),
    edges=st.lists(st.tuples(st.integers(0, 13), st.integers(0, 13)), max_size=40),
    block=st.integers(1, 60),
)
def test_ppr_equals_dense_truncated_sum(n: int, edges: list[tuple[int, int]], block: int) -> None:
    e = [(u, v) for u, v in edges if u < n and v < n]
    a = adjacency(np.array([u for u, _ in e], np.int64), np.array([v for _, v in e], np.int64), n)
    pool = two_hop_candidates(a)
    old = GF._BLOCK_CELLS
    GF._BLOCK_CELLS = block  # exercise the row blocking
    try:
        got = GF.personalized_pagerank(a, pool, origins=G, damping=0.85, steps=4).scores.toarray()
    finally:
        GF._BLOCK_CELLS = old
    dense = a.toarray().astype(np.float64)
    deg = dense.sum(1)
    p = np.divide(dense, deg[:, None], out=np.zeros_like(dense), where=deg[:, None] > 0)
    acc = np.zeros_like(p)
    for t in range(1, 5):
        acc += 0.15 * 0.85**t * np.linalg.matrix_power(p, t)
    want = (acc + acc.T) * (pool.toarray() != 0)
    assert np.allclose(got, want, rtol=1e-10, atol=1e-15)


def test_spectral_cosine_dense_and_sparse_agree(ego400: Any) -> None:
    a, pool, _g = ego400
    sparse = GF.spectral_cosine(a, pool, origins=G, dim=8)
    # reference: dense eigh of the same normalised adjacency, 8 largest eigenvalues
    dense = a.toarray()
    deg = dense.sum(1)
    inv = np.where(deg > 0, 1 / np.sqrt(np.maximum(deg, 1)), 0)
    vals, vecs = np.linalg.eigh(inv[:, None] * dense * inv[None, :])
    emb = vecs[:, -8:]
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    r, c = pool.nonzero()
    want = (1 + (emb[r] * emb[c]).sum(1)) / 2
    got = np.asarray(sparse.scores[r, c]).ravel()
    # the 8th and 9th eigenvalues are distinct here, so the subspace (and cosines) are unique
    assert vals[-8] - vals[-9] > 1e-6
    assert np.allclose(got, want, atol=1e-6)
    assert ((got >= 0) & (got <= 1 + 1e-12)).all()
    with pytest.raises(InputError):
        GF.spectral_cosine(a, pool, origins=G, dim=0)


def test_rerank_anchor_top_by_hand() -> None:
    rows = np.zeros(5, np.int64)
    cols = np.arange(1, 6)
    anchor = np.array([5.0, 4.0, 3.0, 2.0, 1.0])  # anchor order 1, 2, 3, 4, 5
    model = np.array([0.1, 0.2, 0.9, 0.99, 0.0])  # model prefers 4, 3, 2, 1, 5
    vals = _rerank_anchor_top(rows, cols, model, anchor, 3)
    order = cols[np.argsort(-vals, kind="stable")]
    # anchor's top 3 (1, 2, 3) re-ranked by the model (3, 2, 1); then 4, 5 in anchor order
    assert order.tolist() == [3, 2, 1, 4, 5]


@pytest.fixture(scope="module")
def ego_split() -> Any:
    s, d = _ego(600)
    split = random_edge_split(s, d, 600, seed=3, name="ego-sub")
    train, fit = split_views(split, Profiles.empty(600), global_features=True, seed=3)
    return split, train, fit


def test_lgbm_ranker_reranks_resource_allocation_top_lists(ego_split: Any) -> None:
    split, train, fit = ego_split
    names = {s.name for s in train.signals}
    assert {"same_community_r1", "ppr", "spectral_cosine", "ra_alpha0.5"} <= names
    model = LearnedRanker("lgbm", seed=3, rerank_top=20, max_iter=40).fit(
        fit.pool, fit.signals, allow_all, split.fit_positives
    )
    assert "same_community_r1" in model.families and model.beta in model.validation
    model.beta = 1.0  # the re-ranked lists alone
    recs = model.recommend(train.pool, train.signals, allow_all, 30)
    ra = recommend(train.adj, [resource_allocation(train.adj, origins=G)], allow_all, 30)
    users = np.flatnonzero((ra.candidates >= 0).sum(1) == 30)
    assert users.size > 100
    # the first 20 of every list are RA's top 20 in another order; places 21..30 are RA's
    for u in users[:200]:
        assert set(recs.candidates[u, :20]) == set(ra.candidates[u, :20])
        assert np.array_equal(recs.candidates[u, 20:], ra.candidates[u, 20:])
    assert any(not np.array_equal(recs.candidates[u, :20], ra.candidates[u, :20]) for u in users)
    # beta = 0 is RA exactly (ties by id in both)
    model.beta = 0.0
    same = model.recommend(train.pool, train.signals, allow_all, 30)
    np.testing.assert_array_equal(same.candidates, ra.candidates)


def test_lgbm_ranker_gates_global_features(ego_split: Any) -> None:
    split, train, fit = ego_split

    def no_ppr(sig: Signal) -> bool:
        return sig.name != "ppr"

    model = LearnedRanker("lgbm", seed=3, rerank_top=20, max_iter=20).fit(
        fit.pool, fit.signals, no_ppr, split.fit_positives
    )
    assert "ppr" not in model.families and model.removed_at_training == ("ppr",)
    # scoring under a policy that now permits a family refused at training is an error
    with pytest.raises(InputError, match="refused when the ranker was trained"):
        model.recommend(train.pool, train.signals, allow_all, 10)
    with pytest.raises(InputError):
        LearnedRanker("lgbm", rerank_top=0)
    assert top_k_rows(sp.csr_matrix((3, 3)), 2)[0].shape == (3, 2)


@pytest.mark.parametrize("n", [0, 1, 3])
def test_global_signals_on_degenerate_graphs(n: int) -> None:
    """Empty graph, a single user with no friends, a 3-node path (one pool pair)."""
    s = np.array([0] if n == 3 else [], np.int64)
    d = np.array([1] if n == 3 else [], np.int64)
    if n == 3:
        s, d = np.array([0, 1]), np.array([1, 2])
    a = adjacency(s, d, n)
    pool = two_hop_candidates(a)
    sigs = GF.global_signals(a, pool, origins=G)
    assert [x.name for x in sigs] == [
        "same_community_r1",
        "same_community_r3",
        "ra_alpha0.5",
        "ra_alpha1.5",
        "ra_alpha2",
        "ppr",
        "spectral_cosine",
    ]
    for sig in sigs:
        assert sig.scores.shape == (n, n) and (sig.scores != sig.scores.T).nnz == 0
        # only pool pairs carry a value: never a user with themselves or an existing friend
        assert (sp.csr_matrix(sig.scores != 0) > sp.csr_matrix(pool != 0)).nnz == 0
    if n == 3:
        by = {x.name: x.scores for x in sigs}
        assert by["ra_alpha2"][0, 2] == pytest.approx(1 / 4)  # one common neighbour of degree 2
        # the truncated walk sum by hand on the path 0 - 1 - 2, both directions
        p = np.array([[0, 1, 0], [0.5, 0, 0.5], [0, 1, 0]])
        acc = np.zeros((3, 3))
        for t in range(1, 5):
            acc += 0.15 * 0.85**t * np.linalg.matrix_power(p, t)
        assert by["ppr"][0, 2] == pytest.approx(acc[0, 2] + acc[2, 0], rel=1e-12)

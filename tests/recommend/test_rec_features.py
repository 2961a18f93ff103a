"""Structural ranker features against independent definitions (networkx, dense numpy), and the
two-pass top-k against a plain full sort."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from provguard.adapters.graph_files import read_edge_list, undirected_simple_edges
from provguard.recommend import features as F
from provguard.recommend.graph import adjacency
from provguard.recommend.heuristics import resource_allocation
from provguard.recommend.rank import top_k_rows
from provguard.recommend.signals import Signal, two_hop_candidates

ROOT = Path(__file__).resolve().parents[2]
G = frozenset({"douyin"})


def _dense(sig: Signal) -> np.ndarray:
    return np.asarray(sig.scores.toarray())


def test_jaccard_and_degrees_match_networkx_on_ego_facebook_subgraph() -> None:
    el = read_edge_list(ROOT / "data/graphs/snap-ego-facebook.txt")
    s, d = undirected_simple_edges(el)
    keep = (s < 350) & (d < 350)
    s, d = s[keep], d[keep]
    a = adjacency(s, d, 350)
    pool = two_hop_candidates(a)
    jac = F.jaccard(a, pool, origins=G).scores
    g = nx.Graph()
    g.add_nodes_from(range(350))
    g.add_edges_from(zip(s.tolist(), d.tolist(), strict=True))
    r, c = pool.nonzero()
    pairs = list(zip(r.tolist(), c.tolist(), strict=True))
    assert len(pairs) > 10_000
    want = {(u, v): p for u, v, p in nx.jaccard_coefficient(g, pairs)}
    got = np.asarray(jac[r, c]).ravel()
    assert np.allclose(got, [want[p] for p in pairs], rtol=1e-12, atol=0)
    lo = F.degree_min(a, pool, origins=G).scores
    hi = F.degree_max(a, pool, origins=G).scores
    deg = dict(g.degree())
    u, v = pairs[123]
    assert lo[u, v] == min(deg[u], deg[v]) and hi[u, v] == max(deg[u], deg[v])
    assert jac.nnz == pool.nnz and (jac != jac.T).nnz == 0


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 25),
    edges=st.lists(st.tuples(st.integers(0, 24), st.integers(0, 24)), max_size=80),
    block=st.integers(1, 200),
)
def test_paths3_equals_dense_cube(n: int, edges: list[tuple[int, int]], block: int) -> None:
    e = [(u, v) for u, v in edges if u < n and v < n]
    s = np.array([u for u, _ in e], dtype=np.int64)
    d = np.array([v for _, v in e], dtype=np.int64)
    a = adjacency(s, d, n)
    pool = two_hop_candidates(a)
    old = F._BLOCK_CELLS
    F._BLOCK_CELLS = block  # exercise the row blocking
    try:
        got = _dense(F.paths_of_length_3(a, pool, origins=G))
    finally:
        F._BLOCK_CELLS = old
    ad = a.toarray()
    cube = ad @ ad @ ad
    mask = pool.toarray() != 0
    np.fill_diagonal(mask, False)
    mask &= ad == 0
    assert np.array_equal(got, np.where(mask, cube, 0.0))


def test_reciprocal_rank_features_by_hand() -> None:
    # path 0-1-2 plus 1-3, 3-4: RA pool pairs {0,2}, {0,3}, {2,3}, {1,4}
    a = adjacency(np.array([0, 1, 1, 3]), np.array([1, 2, 3, 4]), 5)
    ra = resource_allocation(a)
    hi_sig, lo_sig = F.reciprocal_rank_features(ra)
    hi, lo = hi_sig.scores, lo_sig.scores
    # every pool pair of user 0 scores 1/3 (via node 1): ranks by id -> 2 is 1st, 3 is 2nd
    assert ra.scores[0, 2] == ra.scores[0, 3] == 1 / 3
    # user 3's candidates: 0 and 2 (1/3 each, via 1) -> ranks 1, 2; user 2's: 0, 3 -> 1, 2
    assert hi[0, 2] == 1.0 and lo[0, 2] == 1.0
    assert hi[0, 3] == 1.0 and lo[0, 3] == 0.5  # 0 is 3's first; 3 is 0's second
    assert hi[2, 3] == 0.5 and lo[2, 3] == 0.5
    assert (hi != hi.T).nnz == 0 and (lo != lo.T).nnz == 0
    assert hi_sig.name == "resource_allocation_rr_max" and hi_sig.origins == ra.origins


def _reference_top_k(m: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    n = m.shape[0]
    ids = np.full((n, k), -1, dtype=np.int64)
    vals = np.zeros((n, k))
    dense = m.toarray()
    for r in range(n):
        entries = [(-dense[r, c], c) for c in range(m.shape[1]) if dense[r, c] > 0]
        for j, (negv, c) in enumerate(sorted(entries)[:k]):
            ids[r, j], vals[r, j] = c, -negv
    return ids, vals


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 12),
    cells=st.lists(
        st.tuples(st.integers(0, 11), st.integers(0, 11), st.integers(-2, 4)), max_size=100
    ),
    k=st.integers(1, 6),
)
def test_top_k_rows_equals_full_sort(n: int, cells: list[tuple[int, int, int]], k: int) -> None:
    """Ties (small integer values) and non-positive entries included."""
    cells = [(r, c, v) for r, c, v in cells if r < n and c < n]
    m = sp.csr_matrix(
        (
            [float(v) for *_, v in cells],
            ([r for r, _, _ in cells], [c for _, c, _ in cells]),
        ),
        shape=(n, n),
    )
    got = top_k_rows(m, k)
    want = _reference_top_k(m, k)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 15),
    edges=st.lists(st.tuples(st.integers(0, 14), st.integers(0, 14)), max_size=50),
    extra=st.lists(st.tuples(st.integers(0, 14), st.integers(0, 14)), max_size=20),
)
def test_pair_features_read_exactly_the_pool_values(
    n: int, edges: list[tuple[int, int]], extra: list[tuple[int, int]]
) -> None:
    """Both paths of ``pair_features``: a signal covering the pool exactly (aligned data) and a
    sparse one that partly lies outside the pool (masked), summed per family."""
    from provguard.recommend.ranker import pair_features

    e = [(u, v) for u, v in edges if u < n and v < n]
    a = adjacency(
        np.array([u for u, _ in e], dtype=np.int64), np.array([v for _, v in e], dtype=np.int64), n
    )
    pool = two_hop_candidates(a)
    ra = resource_allocation(a)
    pts = [(u, v) for u, v in extra if u < n and v < n and u != v]
    other = sp.csr_matrix(
        (
            np.arange(1, len(pts) + 1, dtype=np.float64),
            ([u for u, _ in pts], [v for _, v in pts]),
        ),
        shape=(n, n),
    )
    other = sp.csr_matrix(other + other.T)
    sig = Signal("resource_allocation[x]", "c", G, 1.0, other)
    f = pair_features(pool, [ra, sig])
    dense_ra = ra.scores.toarray()
    dense_other = other.toarray()
    assert f.names == ("resource_allocation",)
    for i, (u, v) in enumerate(zip(f.rows.tolist(), f.cols.tolist(), strict=True)):
        assert u < v and pool[u, v] != 0
        assert f.x[i, 0] == dense_ra[u, v] + dense_other[u, v]

"""Friends of friends on the real SNAP ego-Facebook graph (McAuley & Leskovec, NIPS 2012)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from provguard.recommend.evaluate import coverage, holdout_split, recall_at_k
from provguard.recommend.graph import adjacency
from provguard.recommend.rank import allow_all, recommend
from provguard.recommend.signals import common_neighbours

GRAPH = Path(__file__).resolve().parents[2] / "data" / "graphs" / "snap-ego-facebook.txt"


@pytest.fixture(scope="module")
def edge_list() -> np.ndarray:
    if not GRAPH.exists():
        pytest.skip("ego-Facebook graph not present")
    return np.loadtxt(GRAPH, dtype=np.int64, ndmin=2)


def test_counts_match_networkx(edge_list: np.ndarray) -> None:
    nx = pytest.importorskip("networkx")
    a = adjacency(edge_list[:, 0], edge_list[:, 1])
    assert a.shape == (4039, 4039) and a.nnz == 2 * 88234
    g = nx.Graph()
    g.add_edges_from(edge_list.tolist())
    cn = common_neighbours(a).scores
    rng = np.random.default_rng(0)
    rows, cols = cn.nonzero()
    pick = rng.choice(rows.size, 150, replace=False)
    pairs = list(zip(rows[pick].tolist(), cols[pick].tolist(), strict=True))
    pairs += [(int(u), int(v)) for u, v in rng.integers(0, 4039, (50, 2)) if u != v]
    for u, v in pairs:
        expected = 0 if g.has_edge(u, v) else len(list(nx.common_neighbors(g, u, v)))
        assert cn[u, v] == expected, (u, v)


def test_all_users_top20_fast_and_recall(edge_list: np.ndarray) -> None:
    a = adjacency(edge_list[:, 0], edge_list[:, 1])
    t0 = time.perf_counter()
    recs = recommend(a, [common_neighbours(a)], allow_all, k=20)
    elapsed = time.perf_counter() - t0
    assert recs.candidates.shape == (4039, 20)
    assert elapsed < 5.0
    assert coverage(recs) == 1.0

    trs, trd, tes, ted = holdout_split(edge_list[:, 0], edge_list[:, 1], 0.1, seed=0)
    assert tes.size == 8823
    train = adjacency(trs, trd, n=4039)
    held = recommend(train, [common_neighbours(train)], allow_all, k=10)
    recall = recall_at_k(held, (tes, ted), 10)
    assert 0.3 < recall < 0.7  # measured 0.458 (seed 0)

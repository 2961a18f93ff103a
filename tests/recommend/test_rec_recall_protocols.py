"""The readings of "Recall@10": micro (per query), per-user macro, and per-user normalised by
``min(k, |T_u|)`` (Liang et al., WWW 2018) -- hand example and the ego-Facebook golden values
of docs/recommendation.md."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from provguard.adapters.graph_files import read_edge_list, undirected_simple_edges
from provguard.recommend.graph import adjacency
from provguard.recommend.heuristics import resource_allocation
from provguard.recommend.protocol import random_edge_split, slice_metrics
from provguard.recommend.rank import Recommendations, allow_all, recommend

ROOT = Path(__file__).resolve().parents[2]


def test_capped_recall_by_hand() -> None:
    # user 0: targets 1, 2, 3 (k = 2): top-2 holds 1 -> 1 / min(2, 3) = 0.5
    # user 1: target 0 found at rank 1 -> 1 / 1; users 2, 3: target 0 not in top 2 -> 0
    cands = np.array([[1, 4, 2], [0, -1, -1], [4, 1, 0], [4, 1, 0], [-1, -1, -1]])
    recs = Recommendations(cands, np.ones(cands.shape), (), ())
    test = (np.array([0, 0, 0]), np.array([1, 2, 3]))
    m = slice_metrics(recs, test, k=2, hits_k=3)
    assert m.recall_at_k == pytest.approx(2 / 6)  # queries 0->1 and 1->0 of six
    assert m.recall_capped == pytest.approx((0.5 + 1 + 0 + 0) / 4)
    assert m.users == 4


def test_ra_recall_readings_on_ego_facebook() -> None:
    """Golden values (seed 7): micro 0.4823, normalised per-user 0.6101 ("about 0.62")."""
    el = read_edge_list(ROOT / "data/graphs/snap-ego-facebook.txt")
    s, d = undirected_simple_edges(el)
    n = int(el.nodes.max()) + 1
    split = random_edge_split(s, d, n, seed=7)
    adj = adjacency(split.train[0], split.train[1], n)
    recs = recommend(adj, [resource_allocation(adj)], allow_all, 10)
    m = slice_metrics(recs, split.test, k=10, hits_k=10)
    assert m.recall_at_k == pytest.approx(0.4823, abs=5e-5)
    assert m.recall_capped == pytest.approx(0.6101, abs=5e-5)
    # the normalised reading is never below the plain per-user macro recall
    qu = np.concatenate(split.test)
    qt = np.concatenate(split.test[::-1])
    hit = (recs.candidates[qu, :10] == qt[:, None]).any(axis=1)
    _, inv = np.unique(qu, return_inverse=True)
    macro = (np.bincount(inv, weights=hit) / np.bincount(inv)).mean()
    assert macro == pytest.approx(0.5773, abs=5e-5)
    assert m.recall_capped >= macro

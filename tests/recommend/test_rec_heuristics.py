"""Adamic–Adar, resource allocation, preferential attachment: differential tests against
networkx on a hand graph, random graphs (hypothesis) and the real ego-Facebook graph."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from provguard.adapters.graph_files import read_edge_list, undirected_simple_edges
from provguard.errors import InputError
from provguard.recommend.graph import adjacency
from provguard.recommend.heuristics import (
    adamic_adar,
    preferential_attachment,
    resource_allocation,
)
from provguard.recommend.signals import two_hop_candidates

ROOT = Path(__file__).resolve().parents[2]
SRC = np.array([0, 0, 1, 1, 2, 3])
DST = np.array([1, 2, 2, 3, 3, 4])


def _nx_scores(g: nx.Graph, pairs: list[tuple[int, int]], fn: str) -> list[float]:
    return [p for _, _, p in getattr(nx, fn)(g, pairs)]


def _check_against_networkx(src: np.ndarray, dst: np.ndarray, n: int) -> None:
    a = adjacency(src, dst, n)
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from((int(u), int(v)) for u, v in zip(src, dst, strict=True) if u != v)
    pool = two_hop_candidates(a)
    r, c = pool.nonzero()
    pairs = list(zip(r.tolist(), c.tolist(), strict=True))
    for sig, fn in (
        (adamic_adar(a), "adamic_adar_index"),
        (resource_allocation(a), "resource_allocation_index"),
        (preferential_attachment(a), "preferential_attachment"),
    ):
        assert sig.category == "user.social.friend_list"
        # exactly the pool pairs carry a score
        assert (sp.csr_matrix(sig.scores != 0) != pool).nnz == 0
        got = sig.scores.toarray()[r, c]
        want = np.array(_nx_scores(g, pairs, fn), dtype=np.float64)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
        assert (sig.scores != sig.scores.T).nnz == 0


def test_hand_graph_values() -> None:
    a = adjacency(SRC, DST, n=6)
    aa = adamic_adar(a).scores
    ra = resource_allocation(a).scores
    # 0-3 share 1 (deg 3) and 2 (deg 3); 1-4 / 2-4 share 3 (deg 3)
    assert aa[0, 3] == pytest.approx(2 / np.log(3))
    assert ra[0, 3] == pytest.approx(2 / 3)
    assert ra[1, 4] == pytest.approx(1 / 3)
    assert aa.nnz == 6 and ra.nnz == 6
    pa = preferential_attachment(a).scores
    assert pa[0, 3] == 2 * 3 and pa[4, 2] == 1 * 3
    _check_against_networkx(SRC, DST, 6)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(2, 25).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=80),
        )
    )
)
def test_random_graphs_match_networkx(case: tuple[int, list[tuple[int, int]]]) -> None:
    n, pairs = case
    src = np.array([p[0] for p in pairs], dtype=np.int64)
    dst = np.array([p[1] for p in pairs], dtype=np.int64)
    _check_against_networkx(src, dst, n)


def test_ego_facebook_sample_matches_networkx() -> None:
    el = read_edge_list(ROOT / "data" / "graphs" / "snap-ego-facebook.txt")
    s, d = undirected_simple_edges(el)
    a = adjacency(s, d)
    g = nx.Graph()
    g.add_edges_from(zip(s.tolist(), d.tolist(), strict=True))
    aa = adamic_adar(a).scores
    ra = resource_allocation(a).scores
    r, c = aa.nonzero()
    pick = np.random.default_rng(3).choice(r.size, 400, replace=False)
    pairs = list(zip(r[pick].tolist(), c[pick].tolist(), strict=True))
    np.testing.assert_allclose(
        np.asarray(aa[r[pick], c[pick]]).ravel(),
        _nx_scores(g, pairs, "adamic_adar_index"),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        np.asarray(ra[r[pick], c[pick]]).ravel(),
        _nx_scores(g, pairs, "resource_allocation_index"),
        rtol=1e-12,
    )


def test_bad_input() -> None:
    a = adjacency(SRC, DST, n=6)
    with pytest.raises(InputError):
        adamic_adar(sp.csr_matrix((2, 3)))
    with pytest.raises(InputError):
        preferential_attachment(a, sp.csr_matrix((5, 5)))
    empty = adjacency(np.array([], np.int64), np.array([], np.int64))
    assert resource_allocation(empty).scores.shape == (0, 0)
    # a user with no friends gets no score in any row or column
    iso = adamic_adar(a).scores
    assert iso[5].nnz == 0 and iso[:, 5].nnz == 0

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from provguard.errors import InputError
from provguard.recommend.graph import adjacency, degrees, edges
from provguard.recommend.signals import (
    common_neighbours,
    handle_similarity,
    surname_key,
    two_hop_candidates,
)

# 0-1, 0-2, 1-2, 1-3, 2-3, 3-4 ; node 5 isolated
SRC = np.array([0, 0, 1, 1, 2, 3])
DST = np.array([1, 2, 2, 3, 3, 4])


def test_adjacency_basic() -> None:
    a = adjacency(SRC, DST, n=6)
    assert a.shape == (6, 6) and a.dtype == np.int32
    assert (a != a.T).nnz == 0
    assert a.diagonal().sum() == 0
    assert degrees(a).tolist() == [2, 3, 3, 3, 1, 0]
    s, d = edges(a)
    assert list(zip(s.tolist(), d.tolist(), strict=True)) == [
        (0, 1),
        (0, 2),
        (1, 2),
        (1, 3),
        (2, 3),
        (3, 4),
    ]


def test_adjacency_collapses_duplicates_and_drops_self_loops() -> None:
    a = adjacency(np.array([0, 1, 0, 2, 2]), np.array([1, 0, 1, 2, 0]))
    assert a.shape == (3, 3)
    assert a.toarray().tolist() == [[0, 1, 1], [1, 0, 0], [1, 0, 0]]
    assert set(a.data.tolist()) == {1}


def test_adjacency_empty_and_errors() -> None:
    empty = np.array([], dtype=np.int64)
    assert adjacency(empty, empty).shape == (0, 0)
    assert adjacency(empty, empty, n=4).nnz == 0
    with pytest.raises(InputError):
        adjacency(np.array([0, 1]), np.array([1]))
    with pytest.raises(InputError):
        adjacency(np.array([-1]), np.array([1]))
    with pytest.raises(InputError):
        adjacency(np.array([0, 5]), np.array([1, 2]), n=3)
    with pytest.raises(InputError):
        adjacency(np.array([0.5]), np.array([1.0]))


def test_common_neighbours_hand_computed() -> None:
    a = adjacency(SRC, DST, n=6)
    s = common_neighbours(a)
    assert s.category == "user.social.friend_list" and s.origins == frozenset({"douyin"})
    expected = np.zeros((6, 6))
    # non-adjacent pairs: 0-3 share {1,2}; 1-4, 2-4 share {3}; 0-4 share nothing
    expected[0, 3] = expected[3, 0] = 2
    expected[1, 4] = expected[4, 1] = 1
    expected[2, 4] = expected[4, 2] = 1
    assert np.array_equal(s.scores.toarray(), expected)
    assert np.array_equal(two_hop_candidates(a).toarray(), expected > 0)


def test_surname_key() -> None:
    assert surname_key("王小明") == "王"
    assert surname_key("zhang wei") == "zhang"
    assert surname_key("coolcat99") == ""
    assert surname_key("") == ""
    assert surname_key("🐱 cat") == "🐱"  # first token of a two-token handle (v1: no emoji step)


def test_handle_similarity() -> None:
    a = adjacency(SRC, DST, n=6)
    mask = two_hop_candidates(a)
    handles = ["王小明", "li na", "x", "王芳", "li lei", None]
    s = handle_similarity(mask, handles, frozenset({"wechat"}), mask_origins=frozenset({"douyin"}))
    assert s.category == "user.name.nickname"
    assert s.origins == frozenset({"wechat", "douyin"})
    expected = np.zeros((6, 6))
    expected[0, 3] = expected[3, 0] = 1  # 王 / 王, a 2-hop pair
    # 1-4 share "li" and are a 2-hop pair
    expected[1, 4] = expected[4, 1] = 1
    assert np.array_equal(s.scores.toarray(), expected)
    with pytest.raises(InputError):
        handle_similarity(mask, handles[:3], frozenset({"wechat"}))
    with pytest.raises(InputError):
        handle_similarity(sp.csr_matrix((2, 3)), handles, frozenset({"wechat"}))

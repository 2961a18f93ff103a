"""Documented behaviour on bad input (docs/recommendation.md, "Bad input"), one test each."""

from __future__ import annotations

import numpy as np
import pytest

from provguard.errors import InputError
from provguard.recommend.graph import adjacency
from provguard.recommend.heuristics import adamic_adar, resource_allocation
from provguard.recommend.platform_signals import provider_contacts
from provguard.recommend.protocol import Profiles, build_signals, time_split
from provguard.recommend.rank import allow_all, recommend
from provguard.recommend.signals import two_hop_candidates


def test_self_loops_are_dropped() -> None:
    with_loops = adjacency(np.array([0, 1, 1, 2]), np.array([1, 1, 2, 2]), 3)
    without = adjacency(np.array([0, 1]), np.array([1, 2]), 3)
    assert (with_loops != without).nnz == 0
    assert (resource_allocation(with_loops).scores != resource_allocation(without).scores).nnz == 0
    t = time_split(np.array([0, 0, 1, 2]), np.array([0, 1, 2, 0]), np.array([1, 2, 3, 4]), 3)
    assert all(a != b for a, b in zip(*t.train, strict=True))


def test_duplicate_edges_collapse() -> None:
    dup = adjacency(np.array([0, 1, 0, 1, 1]), np.array([1, 0, 1, 2, 2]), 3)
    assert set(dup.data.tolist()) == {1}
    assert adamic_adar(dup).scores[0, 2] == pytest.approx(1 / np.log(2))  # counted once


def test_unknown_node_ids_are_an_input_error() -> None:
    with pytest.raises(InputError) as err:
        adjacency(np.array([0, 7]), np.array([1, 2]), n=3)
    assert err.value.code == "PG100"
    a = adjacency(np.array([0]), np.array([1]), 3)
    with pytest.raises(InputError):
        provider_contacts(a, {"wechat": (np.array([0]), np.array([3]))})
    with pytest.raises(InputError):
        time_split(np.array([0]), np.array([5]), np.array([1]), 3)


def test_empty_graph() -> None:
    e = np.array([], np.int64)
    empty = adjacency(e, e, 0)
    sigs = build_signals(empty, two_hop_candidates(empty), Profiles.empty(0))
    recs = recommend(empty, sigs, allow_all, 5)
    assert recs.candidates.shape == (0, 5)
    with pytest.raises(InputError):
        time_split(e, e, e, 0)  # nothing to split: a clear error, not an empty table


def test_user_with_no_friends_gets_an_empty_row() -> None:
    a = adjacency(np.array([0, 1]), np.array([1, 2]), 4)  # user 3 has no friends
    sigs = build_signals(a, two_hop_candidates(a), Profiles.empty(4))
    recs = recommend(a, sigs, allow_all, 2)
    assert recs.candidates[3].tolist() == [-1, -1]
    assert recs.candidates[0].tolist() == [2, -1]

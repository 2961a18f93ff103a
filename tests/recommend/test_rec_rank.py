from __future__ import annotations

from typing import Any, cast

import numpy as np
import pytest
import scipy.sparse as sp

from provguard.errors import InputError
from provguard.recommend.graph import adjacency
from provguard.recommend.rank import GateResult, allow_all, recommend, top_k_rows
from provguard.recommend.signals import Signal, common_neighbours, handle_similarity

SRC = np.array([0, 0, 1, 1, 2, 3])
DST = np.array([1, 2, 2, 3, 3, 4])


class Untouchable:
    """Stands in for a score matrix; any access fails the test."""

    def __getattribute__(self, name: str) -> Any:
        raise AssertionError(f"refused signal's scores were read ({name})")


def _policy_gate(calls: list[str]) -> Any:
    def gate(signal: Signal) -> GateResult:
        calls.append(signal.name)
        if signal.origins & {"wechat", "qq"} and signal.category == "user.name.nickname":
            return GateResult(False, "injunction", ("no-platform-profile",), ("cn-tj-2019",))
        return GateResult(True)

    return gate


def test_top_k_and_padding() -> None:
    a = adjacency(SRC, DST, n=6)
    recs = recommend(a, [common_neighbours(a)], allow_all, k=2)
    assert recs.candidates.tolist() == [[3, -1], [4, -1], [4, -1], [0, -1], [1, 2], [-1, -1]]
    assert recs.scores.tolist() == [[2, 0], [1, 0], [1, 0], [2, 0], [1, 1], [0, 0]]
    assert recs.used == ("common_neighbours",) and recs.removed == ()
    assert recs.origins == frozenset({"douyin"})


def test_ties_broken_by_candidate_id() -> None:
    m = sp.csr_matrix(np.array([[0, 5, 3, 5, 5], [0, 0, 0, 0, 0], [1, 1, 0, 1, 2]], float))
    ids, vals = top_k_rows(m, 3)
    assert ids.tolist() == [[1, 3, 4], [-1, -1, -1], [4, 0, 1]]
    assert vals.tolist() == [[5, 5, 5], [0, 0, 0], [2, 1, 1]]


def test_gate_removes_signal_before_scoring() -> None:
    a = adjacency(SRC, DST, n=6)
    cn = common_neighbours(a)
    hs = handle_similarity(
        cn.scores,
        ["王小明", "li na", "x", "王芳", "li lei", None],
        frozenset({"wechat"}),
        weight=5.0,
    )
    with_all = recommend(a, [cn, hs], allow_all, k=2)
    # node 4: cn gives 1 to both 1 and 2; handle +5 to 1 ("li")
    assert with_all.candidates[4].tolist() == [1, 2]
    assert with_all.scores[4].tolist() == [6.0, 1.0]
    assert with_all.scores[0].tolist() == [7.0, 0.0]

    calls: list[str] = []
    gated = recommend(a, [cn, hs], _policy_gate(calls), k=2)
    assert calls == ["common_neighbours", "handle_similarity"]  # once per signal
    assert gated.used == ("common_neighbours",)
    assert gated.removed == ("handle_similarity",)
    assert gated.gate_results["handle_similarity"].rules == ("no-platform-profile",)
    assert gated.origins == frozenset({"douyin"})
    baseline = recommend(a, [cn], allow_all, k=2)
    assert np.array_equal(gated.candidates, baseline.candidates)
    assert np.array_equal(gated.scores, baseline.scores)


def test_refused_signal_is_never_read() -> None:
    a = adjacency(SRC, DST, n=6)
    poisoned = Signal(
        "wechat_handles",
        "user.name.nickname",
        frozenset({"wechat"}),
        1.0,
        cast(sp.csr_matrix, Untouchable()),
    )
    calls: list[str] = []
    recs = recommend(a, [poisoned, common_neighbours(a)], _policy_gate(calls), k=1)
    assert calls == ["wechat_handles", "common_neighbours"]
    assert recs.removed == ("wechat_handles",)
    assert recs.candidates[:, 0].tolist() == [3, 4, 4, 0, 1, -1]


def test_bool_gate_and_no_signals() -> None:
    a = adjacency(SRC, DST, n=6)
    recs = recommend(a, [common_neighbours(a)], lambda s: False, k=3)
    assert recs.removed == ("common_neighbours",)
    assert (recs.candidates == -1).all() and (recs.scores == 0).all()
    assert recommend(a, [], allow_all, k=1).candidates.shape == (6, 1)


def test_existing_friends_and_self_never_recommended() -> None:
    a = adjacency(SRC, DST, n=6)
    dense = sp.csr_matrix(np.ones((6, 6)))
    s = Signal("everyone", "user.social.friend_list", frozenset({"douyin"}), 1.0, dense)
    recs = recommend(a, [s], allow_all, k=6)
    for u in range(6):
        got = {int(c) for c in recs.candidates[u] if c >= 0}
        friends = set(a[u].indices.tolist())
        assert got == set(range(6)) - friends - {u}


def test_empty_graph_and_user_without_friends() -> None:
    empty = adjacency(np.array([], np.int64), np.array([], np.int64))
    recs = recommend(empty, [common_neighbours(empty)], allow_all, k=3)
    assert recs.candidates.shape == (0, 3)
    a = adjacency(SRC, DST, n=6)
    assert recommend(a, [common_neighbours(a)], allow_all, k=3).candidates[5].tolist() == [
        -1,
        -1,
        -1,
    ]


def test_bad_inputs() -> None:
    a = adjacency(SRC, DST, n=6)
    cn = common_neighbours(a)
    with pytest.raises(InputError):
        recommend(a, [cn], allow_all, k=0)
    with pytest.raises(InputError):
        recommend(a, [cn, cn], allow_all, k=1)
    wrong = Signal("small", "user.social.friend_list", frozenset(), 1.0, sp.csr_matrix((3, 3)))
    with pytest.raises(InputError):
        recommend(a, [wrong], allow_all, k=1)
    with pytest.raises(InputError):
        recommend(a, [cn], lambda s: cast(Any, "yes"), k=1)
    with pytest.raises(InputError):
        recommend(sp.csr_matrix((2, 3)), [], allow_all, k=1)

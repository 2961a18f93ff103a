from __future__ import annotations

import numpy as np
import pytest

from provguard.errors import InputError
from provguard.recommend.evaluate import coverage, holdout_split, mrr, recall_at_k
from provguard.recommend.rank import Recommendations


def _recs() -> Recommendations:
    cands = np.array([[1, 2, 3], [0, -1, -1], [-1, -1, -1], [2, 0, -1]])
    return Recommendations(cands, (cands >= 0).astype(float), ("cn",), ())


def test_recall_mrr_coverage_hand_computed() -> None:
    recs = _recs()
    test = (np.array([0, 2]), np.array([3, 3]))
    # queries: 0->3 (rank 3), 2->3 (absent), 3->0 (rank 2), 3->2 (rank 1)
    assert recall_at_k(recs, test, 3) == pytest.approx(3 / 4)
    assert recall_at_k(recs, test, 1) == pytest.approx(1 / 4)
    # users 0: 1/3, 2: 0, 3: first hit rank 1 -> 1
    assert mrr(recs, test, 3) == pytest.approx((1 / 3 + 0 + 1) / 3)
    assert coverage(recs) == pytest.approx(3 / 4)
    assert coverage(recs, np.array([0, 1])) == 1.0
    assert np.isnan(recall_at_k(recs, (np.array([], int), np.array([], int)), 2))
    with pytest.raises(InputError):
        recall_at_k(recs, test, 4)
    with pytest.raises(InputError):
        recall_at_k(recs, (np.array([9]), np.array([0])), 1)


def test_holdout_split_keeps_every_node() -> None:
    rng = np.random.default_rng(1)
    src = rng.integers(0, 60, 400)
    dst = rng.integers(0, 60, 400)
    trs, trd, tes, ted = holdout_split(src, dst, 0.2, seed=3)
    lo, hi = np.minimum(src, dst), np.maximum(src, dst)
    all_edges = {(int(a), int(b)) for a, b in zip(lo, hi, strict=True) if a != b}
    train = set(zip(trs.tolist(), trd.tolist(), strict=True))
    test = set(zip(tes.tolist(), ted.tolist(), strict=True))
    assert train | test == all_edges and not train & test
    assert len(test) == round(0.2 * len(all_edges))
    nodes = {u for e in all_edges for u in e}
    assert nodes == {u for e in train for u in e}
    again = holdout_split(src, dst, 0.2, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(again, (trs, trd, tes, ted), strict=True))


def test_holdout_split_star_holds_nothing_out() -> None:
    trs, _, tes, _ = holdout_split(np.zeros(5, int), np.arange(1, 6), 0.5, seed=0)
    assert trs.size == 5 and tes.size == 0
    with pytest.raises(InputError):
        holdout_split(np.array([0]), np.array([1]), 1.0, seed=0)

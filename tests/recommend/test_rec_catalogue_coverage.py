"""Catalogue (item) coverage@k (Ge, Delgado-Battenfeld & Jannach, RecSys 2010) beside the
user coverage of the cost-of-compliance table."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provguard.errors import InputError
from provguard.recommend.protocol import catalogue_coverage, slice_metrics
from provguard.recommend.rank import Recommendations


def _recs(cands: np.ndarray) -> Recommendations:
    return Recommendations(cands, (cands >= 0).astype(float), ("x",), ())


def test_catalogue_coverage_by_hand() -> None:
    # 5 users; lists of users 0..4 (top-2 of each counted at k=2)
    cands = np.array([[1, 2, 3], [0, 2, -1], [-1, -1, -1], [1, 0, 4], [1, -1, -1]])
    recs = _recs(cands)
    # k=2: {1, 2} u {0, 2} u {} u {1, 0} u {1} = {0, 1, 2} -> 3 of 5
    assert catalogue_coverage(recs, 2) == pytest.approx(3 / 5)
    # k=3 adds 3 (user 0's list) and 4 (user 3's list)
    assert catalogue_coverage(recs, 3) == pytest.approx(1.0)
    # only the lists of users 2 and 4
    assert catalogue_coverage(recs, 3, np.array([4, 2, 4])) == pytest.approx(1 / 5)
    # user coverage does not see the difference between methods with non-empty lists; the
    # catalogue coverage does: same users covered, fewer distinct candidates
    popular = _recs(np.array([[1, 2, -1], [0, 2, -1], [-1, -1, -1], [1, 2, -1], [1, 2, -1]]))
    test = (np.array([0, 1, 3, 4]), np.array([1, 2, 0, 0]))
    a = slice_metrics(recs, test, k=2, hits_k=3)
    b = slice_metrics(popular, test, k=2, hits_k=3)
    assert a.coverage == b.coverage == pytest.approx(4 / 5)  # user 2 queries, empty list
    assert a.catalogue_coverage == pytest.approx(3 / 5)
    assert b.catalogue_coverage == pytest.approx(3 / 5)
    assert slice_metrics(recs, test, k=3, hits_k=3).catalogue_coverage == pytest.approx(1.0)
    assert slice_metrics(popular, test, k=3, hits_k=3).catalogue_coverage == pytest.approx(3 / 5)
    # slice users hold the lists even without a query (user 2 has none and an empty list)
    only = slice_metrics(recs, test, k=3, hits_k=3, users=np.array([2, 4]))
    assert only.catalogue_coverage == pytest.approx(1 / 5)


def test_catalogue_coverage_bad_input() -> None:
    recs = _recs(np.array([[1, -1], [0, -1]]))
    with pytest.raises(InputError):
        catalogue_coverage(recs, 0)
    with pytest.raises(InputError):
        catalogue_coverage(recs, 3)
    with pytest.raises(InputError):
        catalogue_coverage(recs, 1, np.array([2]))
    empty = Recommendations(np.zeros((0, 3), np.int64), np.zeros((0, 3)), (), ())
    assert np.isnan(catalogue_coverage(empty, 2))
    assert catalogue_coverage(recs, 1, np.array([], np.int64)) == 0.0


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 12).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(
                st.lists(st.integers(-1, n - 1), min_size=4, max_size=4), min_size=n, max_size=n
            ),
            st.integers(1, 4),
        )
    )
)
def test_catalogue_coverage_matches_set_definition(case: tuple[int, list[list[int]], int]) -> None:
    n, rows, k = case
    recs = _recs(np.array(rows, dtype=np.int64).reshape(n, 4))
    listed = {c for r in rows for c in r[:k] if c >= 0}
    assert catalogue_coverage(recs, k) == pytest.approx(len(listed) / n)
    # monotone in k
    if k < 4:
        assert catalogue_coverage(recs, k) <= catalogue_coverage(recs, k + 1)

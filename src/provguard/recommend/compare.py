"""Compare two top-k recommendation tables computed by different engines (scipy vs Spark vs
networkx), tolerating floating-point summation order.

Two engines that sum the same terms in another order can differ in the last bits, so
mathematically tied candidates may swap places and a tie can straddle the k-th position.
:func:`top_k_agreement` therefore checks, per row: (1) the score columns agree within ``rtol``;
(2) every group of tied scores (consecutive scores within ``rtol`` of each other) that ends
before the last column holds the same **set** of candidates in both tables; (3) a group that
reaches the last column of a full row is only checked for scores (its members beyond k are
unknown). Integer-valued scores (common neighbours) make (2) an exact order check up to
candidate-id tie-breaking.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from provguard.errors import InputError


@dataclass(frozen=True)
class Agreement:
    """Result of :func:`top_k_agreement`.

    Attributes:
        rows: rows compared.
        bad_rows: ids of rows that disagree.
        exact_rows: rows whose candidate lists are identical position by position.
        max_abs_score_diff: largest absolute score difference over all positions.
    """

    rows: int
    bad_rows: tuple[int, ...]
    exact_rows: int
    max_abs_score_diff: float

    @property
    def agree(self) -> bool:
        """True when no row disagrees."""
        return not self.bad_rows


def top_k_agreement(
    ids_a: np.ndarray,
    scores_a: np.ndarray,
    ids_b: np.ndarray,
    scores_b: np.ndarray,
    *,
    rtol: float = 1e-9,
) -> Agreement:
    """Do two ``(n, k)`` top-k tables agree up to float summation order (module docstring)?

    Args:
        ids_a, scores_a, ids_b, scores_b: ``(n, k)`` arrays as returned by
            :func:`~provguard.recommend.rank.top_k_rows` (``-1`` / ``0`` padding).
        rtol: relative tolerance for "same score".

    Returns:
        :class:`Agreement`.

    Raises:
        InputError: shapes differ.
    """
    shapes = {np.shape(x) for x in (ids_a, scores_a, ids_b, scores_b)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise InputError(f"all four arrays must have one (n, k) shape, got {shapes}")
    ia, ib = np.asarray(ids_a), np.asarray(ids_b)
    sa, sb = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    n, k = ia.shape
    close = np.isclose(sa, sb, rtol=rtol, atol=0.0) & ((ia >= 0) == (ib >= 0))
    exact = (ia == ib).all(axis=1)
    bad: list[int] = []
    for row in np.flatnonzero(~exact | ~close.all(axis=1)).tolist():
        if not close[row].all():
            bad.append(row)
            continue
        filled = int((ia[row] >= 0).sum())
        start = 0
        ok = True
        while start < filled:
            end = start + 1
            while end < filled and np.isclose(sa[row, end], sa[row, end - 1], rtol=rtol, atol=0):
                end += 1
            reaches_end = end == k
            if not reaches_end and set(ia[row, start:end].tolist()) != set(
                ib[row, start:end].tolist()
            ):
                ok = False
                break
            start = end
        if not ok:
            bad.append(row)
    diff = float(np.abs(sa - sb).max()) if sa.size else 0.0
    return Agreement(n, tuple(bad), int(exact.sum()), diff)

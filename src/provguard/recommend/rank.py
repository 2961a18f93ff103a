"""Friend recommendation with policy-gated signals.

The policy is enforced **before** scoring: :func:`recommend` calls the gate once per signal, and a
refused signal is removed from the combination -- its score matrix is never read. This is what
the 2019 injunction requires of Douyin ("stop using WeChat/QQ handles and pictures when
recommending friends"): filtering the output afterwards would still let the platform data shape
the ranking.

Score: ``total = sum(weight_s * scores_s)`` over the permitted signals, with the diagonal and
existing friendships removed. A candidate is recommended only if its total is > 0. Per user the
top-k candidates are ordered by score descending, ties broken by candidate id ascending.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from provguard.errors import InputError
from provguard.recommend.signals import Signal, drop_self_and_friends


@dataclass(frozen=True)
class GateResult:
    """The gate's answer for one signal.

    Attributes:
        allowed: whether the signal may be used.
        reason: human-readable explanation (e.g. the decision's explanation).
        rules: ids of the determining rules, if the gate is a policy decision point.
        instruments: ids of the instruments those rules belong to.
    """

    allowed: bool
    reason: str = ""
    rules: tuple[str, ...] = ()
    instruments: tuple[str, ...] = ()


Gate = Callable[[Signal], "GateResult | bool"]


def allow_all(signal: Signal) -> GateResult:
    """A gate that permits every signal (the "without policy" baseline)."""
    return GateResult(True, "no policy")


@dataclass(frozen=True, eq=False)
class Recommendations:
    """Top-k friend recommendations for every user.

    Attributes:
        candidates: ``(n_users, k) int64`` candidate ids, best first; ``-1`` pads rows with fewer
            than k candidates.
        scores: ``(n_users, k) float64`` combined scores aligned with ``candidates``; ``0.0``
            where the candidate is ``-1``.
        used: names of the signals that were scored, in input order.
        removed: names of the signals the gate refused, in input order.
        gate_results: the gate's answer per signal name.
        origins: union of the used signals' origins -- the provenance label of these
            recommendations.
    """

    candidates: np.ndarray
    scores: np.ndarray
    used: tuple[str, ...]
    removed: tuple[str, ...]
    gate_results: Mapping[str, GateResult] = field(default_factory=dict)
    origins: frozenset[str] = frozenset()

    @property
    def k(self) -> int:
        """Number of columns of ``candidates``."""
        return int(self.candidates.shape[1])

    @property
    def n_users(self) -> int:
        """Number of rows of ``candidates``."""
        return int(self.candidates.shape[0])


def _as_gate_result(answer: object, name: str) -> GateResult:
    if isinstance(answer, GateResult):
        return answer
    if isinstance(answer, bool | np.bool_):
        return GateResult(bool(answer), "allowed" if answer else "refused")
    raise InputError(f"gate returned {type(answer).__name__} for signal '{name}'")


def top_k_rows(scores: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k column ids of every row of a sparse matrix, by value desc then column id asc.

    Only stored entries with value > 0 are candidates. Two passes: rows holding more than k
    candidates are cut to the entries ``>=`` their k-th largest value (``numpy.partition`` per
    such row, O(row nnz)), then one lexsort orders the at most ``n * k`` (plus ties) survivors.

    Args:
        scores: ``(n, m)`` CSR matrix.
        k: >= 1.

    Returns:
        ``(ids, values)``: ``(n, k) int64`` (``-1`` padded) and ``(n, k) float64`` (0 padded).
    """
    csr = sp.csr_matrix(scores)
    n = csr.shape[0]
    ids = np.full((n, k), -1, dtype=np.int64)
    vals = np.zeros((n, k), dtype=np.float64)
    data = np.asarray(csr.data, dtype=np.float64)
    counts = np.diff(csr.indptr).astype(np.int64)
    rows = np.repeat(np.arange(n, dtype=np.int64), counts)
    cols = csr.indices.astype(np.int64)
    pos = data > 0
    if not pos.all():
        data, rows, cols = data[pos], rows[pos], cols[pos]
        counts = np.bincount(rows, minlength=n).astype(np.int64)
    if data.size == 0:
        return ids, vals
    heavy = np.flatnonzero(counts > k)
    if heavy.size:
        starts = np.concatenate([[0], np.cumsum(counts)])
        kth = np.full(n, -np.inf)
        for r in heavy.tolist():
            seg = data[starts[r] : starts[r + 1]]
            kth[r] = np.partition(seg, seg.size - k)[seg.size - k]
        keep = data >= kth[rows]
        data, rows, cols = data[keep], rows[keep], cols[keep]
    order = np.lexsort((cols, -data, rows))
    rows_s = rows[order]
    first = np.searchsorted(rows_s, np.arange(n, dtype=np.int64), side="left")
    rank = np.arange(rows_s.size, dtype=np.int64) - first[rows_s]
    sel = rank < k
    ids[rows_s[sel], rank[sel]] = cols[order][sel]
    vals[rows_s[sel], rank[sel]] = data[order][sel]
    return ids, vals


def recommend(
    adj: sp.csr_matrix,
    signals: Sequence[Signal],
    gate: Callable[[Signal], GateResult | bool],
    k: int,
) -> Recommendations:
    """Recommend up to k new friends to every user from the signals the gate permits.

    Protocol: (1) for each signal, in order, call ``gate(signal)`` exactly once; (2) drop the
    refused signals; (3) combine the rest (module docstring); (4) take the top k per user.

    Edge cases: a user with no friends and no signal scores gets an all ``-1`` row; with no
    permitted signals every row is ``-1``; an empty graph (n = 0) gives ``(0, k)`` arrays.

    Args:
        adj: ``(n, n)`` adjacency of the current friendships (existing friends are never
            recommended; nor is the user themself).
        signals: the candidate signals, names unique, each scores matrix ``(n, n)``.
        gate: policy gate; returns a :class:`GateResult` or a bool (True = permit).
        k: number of recommendations per user, >= 1.

    Returns:
        :class:`Recommendations`.

    Raises:
        InputError: k < 1, adj not square, duplicate signal names, a gate answer that is neither
            GateResult nor bool, a permitted signal whose scores are not ``(n, n)`` sparse.
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise InputError(f"k must be an integer >= 1, got {k!r}")
    k = int(k)
    if not sp.issparse(adj) or adj.ndim != 2 or adj.shape[0] != adj.shape[1]:
        raise InputError("adj must be a square scipy sparse matrix")
    n = adj.shape[0]
    names = [s.name for s in signals]
    if len(set(names)) != len(names):
        raise InputError(f"signal names must be unique, got {names}")

    results: dict[str, GateResult] = {}
    permitted: list[Signal] = []
    removed: list[str] = []
    for signal in signals:
        answer = _as_gate_result(gate(signal), signal.name)
        results[signal.name] = answer
        if answer.allowed:
            permitted.append(signal)
        else:
            removed.append(signal.name)

    total = sp.csr_matrix((n, n), dtype=np.float64)
    origins: frozenset[str] = frozenset()
    for signal in permitted:
        scores = signal.scores
        if not sp.issparse(scores) or scores.shape != (n, n):
            raise InputError(f"signal '{signal.name}' scores must be a sparse ({n}, {n}) matrix")
        total = sp.csr_matrix(total + signal.weight * sp.csr_matrix(scores, dtype=np.float64))
        origins = origins | signal.origins

    if total.nnz:
        total = drop_self_and_friends(total, sp.csr_matrix(adj))
    ids, vals = top_k_rows(total, k)
    return Recommendations(
        candidates=ids,
        scores=vals,
        used=tuple(s.name for s in permitted),
        removed=tuple(removed),
        gate_results=results,
        origins=origins,
    )

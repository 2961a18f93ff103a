"""Offline evaluation of friend recommendation: hold-out split and ranking metrics.

Protocol (random edge hold-out, Liben-Nowell & Kleinberg 2007; Lü & Zhou, "Link prediction in
complex networks: a survey", Physica A 390, 2011):

1. :func:`holdout_split` removes a random ``fraction`` of the undirected edges as the test set,
   never removing a node's last remaining edge, so every node that had a friend keeps one in
   training.
2. Recommendations are computed on the training graph only.
3. Each test edge ``{u, v}`` counts twice, as the queries "recommend v to u" and "recommend u to
   v"; :func:`recall_at_k` and :func:`mrr` score those queries.

Caveat: on ego-Facebook (dense ego networks, clustering ~0.6) almost every held-out edge closes a
triangle that is still in the training graph, so a random split flatters friends-of-friends; a
time-based split (CollegeMsg has timestamps) is the honest protocol for a temporal graph.
"""

from __future__ import annotations

import numpy as np

from provguard.errors import InputError
from provguard.recommend.rank import Recommendations

EdgeArrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _canonical_edges(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(src)
    d = np.asarray(dst)
    if s.ndim != 1 or s.shape != d.shape:
        raise InputError("src and dst must be 1-D arrays of the same length")
    if s.size and not (np.issubdtype(s.dtype, np.integer) and np.issubdtype(d.dtype, np.integer)):
        raise InputError("src and dst must hold integer node ids")
    s = s.astype(np.int64)
    d = d.astype(np.int64)
    if s.size and min(int(s.min()), int(d.min())) < 0:
        raise InputError("node ids must be >= 0")
    lo, hi = np.minimum(s, d), np.maximum(s, d)
    keep = lo != hi
    pairs = np.unique(np.stack([lo[keep], hi[keep]], axis=1), axis=0)
    return pairs[:, 0].copy(), pairs[:, 1].copy()


def holdout_split(src: np.ndarray, dst: np.ndarray, fraction: float, seed: int) -> EdgeArrays:
    """Random edge hold-out that keeps every non-isolated node in the training graph.

    Edges are first made canonical (``u < v``), deduplicated, and self loops dropped. The edges
    are visited in a random order (``numpy.random.default_rng(seed)``); an edge goes to the test
    set while the test set is smaller than ``round(fraction * m)`` and both its endpoints still
    have another training edge. The test set can therefore be smaller than requested (e.g. a
    star graph: no leaf edge can be held out); it is never larger.

    Args:
        src, dst: ``(m,) int`` node ids of an undirected graph.
        fraction: share of edges to hold out, ``0 <= fraction < 1``.
        seed: RNG seed; the same inputs and seed give the same split.

    Returns:
        ``(train_src, train_dst, test_src, test_dst)``, int64 arrays, each edge once with
        ``src < dst``, each part sorted by (src, dst).

    Raises:
        InputError: bad arrays or a fraction outside [0, 1).
    """
    if not 0.0 <= fraction < 1.0:
        raise InputError(f"fraction must be in [0, 1), got {fraction}")
    s, d = _canonical_edges(src, dst)
    m = s.size
    target = round(fraction * m)
    n = int(max(s.max(), d.max())) + 1 if m else 0
    degree = np.bincount(np.concatenate([s, d]), minlength=n).tolist()
    order = np.random.default_rng(seed).permutation(m)
    in_test = np.zeros(m, dtype=bool)
    taken = 0
    s_list, d_list = s.tolist(), d.tolist()
    for e in order.tolist():
        if taken >= target:
            break
        u, v = s_list[e], d_list[e]
        if degree[u] > 1 and degree[v] > 1:
            degree[u] -= 1
            degree[v] -= 1
            in_test[e] = True
            taken += 1
    return s[~in_test], d[~in_test], s[in_test], d[in_test]


def _queries(test_edges: tuple[np.ndarray, np.ndarray], n_users: int) -> tuple[np.ndarray, ...]:
    ts = np.asarray(test_edges[0], dtype=np.int64)
    td = np.asarray(test_edges[1], dtype=np.int64)
    if ts.ndim != 1 or ts.shape != td.shape:
        raise InputError("test edges must be two 1-D arrays of the same length")
    users = np.concatenate([ts, td])
    targets = np.concatenate([td, ts])
    if users.size and (users.min() < 0 or users.max() >= n_users):
        raise InputError(f"a test edge names a user outside 0..{n_users - 1}")
    return users, targets


def _check_k(recs: Recommendations, k: int) -> None:
    if k < 1 or k > recs.k:
        raise InputError(f"k must be in 1..{recs.k} (the recommendations' k), got {k}")


def recall_at_k(recs: Recommendations, test_edges: tuple[np.ndarray, np.ndarray], k: int) -> float:
    """Micro recall@k: share of held-out (user, friend) queries whose friend is in the user's
    top k.

    Each undirected test edge ``{u, v}`` is two queries (u -> v, v -> u).

    Args:
        recs: recommendations computed on the training graph, ``recs.k >= k``.
        test_edges: ``(test_src, test_dst)``, ``(t,) int`` arrays.
        k: cut-off, ``1 <= k <= recs.k``.

    Returns:
        Recall in [0, 1]; ``nan`` if there are no test edges.

    Raises:
        InputError: bad k or test edges outside the users of ``recs``.
    """
    _check_k(recs, k)
    users, targets = _queries(test_edges, recs.n_users)
    if users.size == 0:
        return float("nan")
    hits = (recs.candidates[users, :k] == targets[:, None]).any(axis=1)
    return float(hits.mean())


def mrr(recs: Recommendations, test_edges: tuple[np.ndarray, np.ndarray], k: int) -> float:
    """Mean reciprocal rank over users with at least one held-out friend.

    For each such user, ``1 / r`` where r (1-based) is the position of the first held-out friend
    in their top k, 0 if none is there; the mean over those users.

    Returns:
        MRR in [0, 1]; ``nan`` if there are no test edges.

    Raises:
        InputError: bad k or test edges outside the users of ``recs``.
    """
    _check_k(recs, k)
    users, targets = _queries(test_edges, recs.n_users)
    if users.size == 0:
        return float("nan")
    match = recs.candidates[users, :k] == targets[:, None]
    found = match.any(axis=1)
    rank = np.where(found, match.argmax(axis=1) + 1, np.iinfo(np.int64).max)
    best = np.full(recs.n_users, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(best, users, rank)
    queried = np.unique(users)
    r = best[queried]
    rr = np.where(r < np.iinfo(np.int64).max, 1.0 / np.maximum(r, 1), 0.0)
    return float(rr.mean())


def coverage(recs: Recommendations, users: np.ndarray | None = None) -> float:
    """Share of users with at least one recommendation.

    Args:
        recs: recommendations.
        users: optional ``(u,) int`` user ids to restrict to (e.g. users with a training edge);
            default all ``recs.n_users`` users.

    Returns:
        Coverage in [0, 1]; ``nan`` for zero users.
    """
    has = recs.candidates[:, 0] >= 0 if recs.k else np.zeros(recs.n_users, dtype=bool)
    if users is not None:
        has = has[np.asarray(users, dtype=np.int64)]
    if has.size == 0:
        return float("nan")
    return float(has.mean())

"""Neighbourhood link-prediction heuristics on the friendship graph, as scipy sparse products.

Every function takes the ``(n, n)`` binary symmetric adjacency ``A`` of
:func:`~provguard.recommend.graph.adjacency` and returns a
:class:`~provguard.recommend.signals.Signal` of category ``user.social.friend_list`` whose
scores are defined on the **friends-of-friends pairs** (non-adjacent ``u != v`` with at least
one common neighbour), the candidate pool of
:func:`~provguard.recommend.signals.two_hop_candidates`. Definitions follow Lü & Zhou, "Link
prediction in complex networks: a survey", Physica A 390 (2011), and match networkx 3.x:

- Adamic–Adar (Adamic & Adar, Social Networks 25, 2003): ``sum over common neighbours w of
  1 / ln(deg w)`` = ``A @ diag(1/ln d) @ A`` -- networkx ``adamic_adar_index``.
- Resource allocation (Zhou, Lü & Zhang, Eur. Phys. J. B 71, 2009): ``sum over w of 1 / deg w``
  = ``A @ diag(1/d) @ A`` -- networkx ``resource_allocation_index``.
- Preferential attachment (Barabási & Albert 1999): ``deg u * deg v`` on the pool pairs only (on
  all pairs it would be dense) -- networkx ``preferential_attachment``.

A common neighbour of two distinct nodes has degree >= 2, so ``ln(deg w) > 0``; entries of the
diagonal factor for degree 0 or 1 are set to 0 (such nodes are never a common neighbour).
Floating-point sums run in a different order than networkx's Python loop, so scores agree to
about 1e-15 relative, not bit for bit (``bench/bench_recommend.py`` reports the maximum
difference).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from provguard.errors import InputError
from provguard.recommend.signals import (
    FRIEND_LIST,
    Signal,
    _square,
    drop_self_and_friends,
)

APP_GRAPH = frozenset({"douyin"})
"""Default provenance of the friendship graph: the app's own follow graph."""


def _weighted_two_hop(adj: sp.csr_matrix, node_weight: np.ndarray) -> sp.csr_matrix:
    a = _square(adj, "adj").astype(np.float64)
    scaled = sp.csr_matrix(a @ sp.diags(node_weight, format="csr"))
    return drop_self_and_friends(sp.csr_matrix(scaled @ a), a)


def _degrees(adj: sp.csr_matrix) -> np.ndarray:
    a = _square(adj, "adj")
    deg: np.ndarray = np.diff(a.indptr).astype(np.float64)
    return deg


def adamic_adar(
    adj: sp.csr_matrix,
    *,
    name: str = "adamic_adar",
    origins: frozenset[str] = APP_GRAPH,
    weight: float = 1.0,
) -> Signal:
    """Adamic–Adar index of every friends-of-friends pair (module docstring).

    Args:
        adj: ``(n, n)`` binary symmetric CSR adjacency.
        name, origins, weight: copied into the signal (``origins``: provenance of the graph).

    Returns:
        Signal of category ``user.social.friend_list``; scores ``(n, n)`` float64 CSR, > 0 exactly
        on the pool pairs, symmetric.

    Raises:
        InputError: ``adj`` is not a square sparse matrix.
    """
    deg = _degrees(adj)
    w = np.zeros_like(deg)
    big = deg >= 2
    w[big] = 1.0 / np.log(deg[big])
    return Signal(name, FRIEND_LIST, frozenset(origins), float(weight), _weighted_two_hop(adj, w))


def resource_allocation(
    adj: sp.csr_matrix,
    *,
    name: str = "resource_allocation",
    origins: frozenset[str] = APP_GRAPH,
    weight: float = 1.0,
) -> Signal:
    """Resource-allocation index of every friends-of-friends pair (module docstring).

    Args / Returns / Raises: as :func:`adamic_adar`.
    """
    deg = _degrees(adj)
    w = np.zeros_like(deg)
    pos = deg >= 1
    w[pos] = 1.0 / deg[pos]
    return Signal(name, FRIEND_LIST, frozenset(origins), float(weight), _weighted_two_hop(adj, w))


def preferential_attachment(
    adj: sp.csr_matrix,
    pool: sp.csr_matrix | None = None,
    *,
    name: str = "preferential_attachment",
    origins: frozenset[str] = APP_GRAPH,
    weight: float = 1.0,
) -> Signal:
    """``deg u * deg v`` on the pairs of ``pool`` (default: the friends-of-friends pairs).

    Args:
        adj: ``(n, n)`` binary symmetric CSR adjacency.
        pool: ``(n, n)`` sparse mask; only its nonzero pattern is used. Pairs on the diagonal or
            already adjacent are dropped.
        name, origins, weight: copied into the signal.

    Returns:
        Signal of category ``user.social.friend_list``, float64 scores (0 where a degree is 0,
        so such pairs are not stored).

    Raises:
        InputError: ``adj`` or ``pool`` not square sparse, or of different shapes.
    """
    a = _square(adj, "adj")
    deg = _degrees(a)
    if pool is None:
        mask = _weighted_two_hop(a, np.ones(a.shape[0]))
    else:
        mask = _square(pool, "pool")
        if mask.shape != a.shape:
            raise InputError(f"pool shape {mask.shape} differs from adj shape {a.shape}")
    coo = sp.csr_matrix(mask != 0).tocoo()
    r, c = coo.row.astype(np.int64), coo.col.astype(np.int64)
    vals = deg[r] * deg[c]
    scores = sp.csr_matrix((vals, (r, c)), shape=a.shape, dtype=np.float64)
    scores = drop_self_and_friends(scores, a)
    return Signal(name, FRIEND_LIST, frozenset(origins), float(weight), scores)

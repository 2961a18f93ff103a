"""Non-local pair features of the friendship graph for the learned ranker (issue 7, round 4).

Resource allocation (RA) only sees the common neighbours of a pair. On ego-Facebook (ten ego
networks with dense circles, McAuley & Leskovec, NIPS 2012) a pair's **community** and its
longer paths carry information RA lacks, so these features describe where a pair sits in the
graph. Every one is computed from the adjacency of the graph it is given (the training or the
fitting graph, never the held-out edges) and is returned as a
:class:`~provguard.recommend.signals.Signal` of category ``user.social.friend_list`` with the
app's origin, so it passes the policy gate like every other signal. Scores are ``(n, n)``
symmetric CSR on the pairs of a candidate **pool**, stored only where positive.

- :func:`same_community`: 1 if the two ends are in the same community of a Louvain partition
  (Blondel, Guillaume, Lambiotte & Lefebvre, J. Stat. Mech. 2008; networkx
  ``louvain_communities`` with a fixed seed) at a given resolution (Reichardt & Bornholdt,
  Phys. Rev. E 74, 2006), name ``same_community_r<resolution>``;
- :func:`resource_allocation_alpha`: ``sum_{z in N(u) & N(v)} 1 / k_z^alpha`` (RA is
  ``alpha = 1``; ``alpha = 0`` is common neighbours), name ``ra_alpha<alpha>``;
- :func:`personalized_pagerank`: truncated personalised PageRank, ``sum_{t=1..T}
  (1 - d) d^t (P^t)[u, v]`` with ``P = D^-1 A`` (Page et al. 1999; Haveliwala, WWW 2002),
  symmetrised as ``ppr(u, v) + ppr(v, u)``, name ``ppr``;
- :func:`spectral_cosine`: cosine of the two ends' rows of the ``dim`` leading eigenvectors of
  ``D^-1/2 A D^-1/2`` (a spectral embedding, cf. Ng, Jordan & Weiss, NIPS 2001), mapped to
  ``(1 + cos) / 2`` in [0, 1], name ``spectral_cosine``.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from provguard.errors import InputError
from provguard.recommend.features import _on_pool
from provguard.recommend.signals import Signal, _square, drop_self_and_friends

_BLOCK_CELLS = 4_000_000
"""Dense cells per row block in :func:`personalized_pagerank` (32 MB of float64)."""


def _binary(adj: sp.csr_matrix) -> sp.csr_matrix:
    return sp.csr_matrix(_square(adj, "adj") != 0, dtype=np.float64)


def _pool_coo(a: sp.csr_matrix, pool: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    m = _square(pool, "pool")
    if m.shape != a.shape:
        raise InputError(f"pool shape {m.shape} differs from adj shape {a.shape}")
    mask = drop_self_and_friends(sp.csr_matrix(m != 0, dtype=np.float64), a)
    mask.sort_indices()
    rows = np.repeat(np.arange(mask.shape[0], dtype=np.int64), np.diff(mask.indptr))
    return rows, mask.indices.astype(np.int64)


def louvain_labels(adj: sp.csr_matrix, *, resolution: float = 1.0, seed: int = 7) -> np.ndarray:
    """Community label of every node of a Louvain partition (networkx, seeded).

    Args:
        adj: ``(n, n)`` sparse adjacency (non-zero = edge).
        resolution: modularity resolution (> 0; larger gives smaller communities).
        seed: seed of networkx's node order.

    Returns:
        ``(n,) int64`` labels; an isolated node is its own community.

    Raises:
        InputError: ``adj`` not square sparse, or ``resolution <= 0``.
    """
    if not resolution > 0:
        raise InputError(f"resolution must be > 0, got {resolution}")
    a = _binary(adj)
    g = nx.from_scipy_sparse_array(a)
    labels = np.zeros(a.shape[0], dtype=np.int64)
    for i, members in enumerate(
        nx.community.louvain_communities(g, resolution=resolution, seed=seed)
    ):
        labels[np.fromiter(members, dtype=np.int64)] = i
    return labels


def same_community(
    adj: sp.csr_matrix,
    pool: sp.csr_matrix,
    *,
    origins: frozenset[str],
    resolution: float = 1.0,
    seed: int = 7,
) -> Signal:
    """1.0 on the pool pairs whose ends share a Louvain community (module docstring).

    Raises:
        InputError: as :func:`louvain_labels`, or a pool of another shape.
    """
    a = _binary(adj)
    rows, cols = _pool_coo(a, pool)
    lab = louvain_labels(a, resolution=resolution, seed=seed)
    vals = (lab[rows] == lab[cols]).astype(np.float64)
    return _on_pool(f"same_community_r{resolution:g}", rows, cols, vals, a.shape[0], origins)


def resource_allocation_alpha(
    adj: sp.csr_matrix, pool: sp.csr_matrix, *, origins: frozenset[str], alpha: float
) -> Signal:
    """``sum over common neighbours z of k_z^-alpha`` on the pool pairs (module docstring).

    Raises:
        InputError: ``adj`` / ``pool`` not square sparse or of different shapes.
    """
    a = _binary(adj)
    rows, cols = _pool_coo(a, pool)
    deg = np.diff(a.indptr).astype(np.float64)
    w = np.where(deg > 0, np.maximum(deg, 1.0) ** -alpha, 0.0)
    s = sp.csr_matrix(a @ sp.diags(w) @ a)
    vals = np.asarray(s[rows, cols]).ravel() if rows.size else np.zeros(0)
    return _on_pool(f"ra_alpha{alpha:g}", rows, cols, vals, a.shape[0], origins)


def personalized_pagerank(
    adj: sp.csr_matrix,
    pool: sp.csr_matrix,
    *,
    origins: frozenset[str],
    damping: float = 0.85,
    steps: int = 4,
) -> Signal:
    """Truncated personalised PageRank, symmetrised, on the pool pairs (module docstring).

    Computed over row blocks of at most ``_BLOCK_CELLS`` dense cells (memory O(block * n)).

    Raises:
        InputError: bad shapes, ``damping`` outside (0, 1) or ``steps < 1``.
    """
    if not 0.0 < damping < 1.0 or steps < 1:
        raise InputError("need 0 < damping < 1 and steps >= 1")
    a = _binary(adj)
    n = a.shape[0]
    rows, cols = _pool_coo(a, pool)
    deg = np.diff(a.indptr).astype(np.float64)
    p = sp.csr_matrix(sp.diags(np.where(deg > 0, 1.0 / np.maximum(deg, 1.0), 0.0)) @ a)
    pt = sp.csr_matrix(p.T)
    forward = np.zeros(rows.size, dtype=np.float64)  # ppr(u, v) at each pool pair
    backward = np.zeros(rows.size, dtype=np.float64)  # ppr(v, u)
    if rows.size:
        step = max(1, _BLOCK_CELLS // max(n, 1))
        by_col = np.argsort(cols, kind="stable")
        col_sorted = cols[by_col]
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            # walks from the block's nodes: x_{t} = x_{t-1} P, as (P^T x^T)^T
            x = np.zeros((n, hi - lo), dtype=np.float64)
            x[np.arange(lo, hi), np.arange(hi - lo)] = 1.0
            acc = np.zeros_like(x)
            for t in range(1, steps + 1):
                x = np.asarray(pt @ x)
                acc += (1.0 - damping) * damping**t * x
            # acc[v, u - lo] = ppr(u, v) for sources u in the block
            s, e = np.searchsorted(rows, [lo, hi])
            forward[s:e] = acc[cols[s:e], rows[s:e] - lo]
            s, e = np.searchsorted(col_sorted, [lo, hi])
            idx = by_col[s:e]
            backward[idx] = acc[rows[idx], cols[idx] - lo]
    return _on_pool("ppr", rows, cols, forward + backward, n, origins)


def spectral_cosine(
    adj: sp.csr_matrix, pool: sp.csr_matrix, *, origins: frozenset[str], dim: int = 32
) -> Signal:
    """``(1 + cos) / 2`` of the two ends' spectral embeddings on the pool pairs (module
    docstring). The eigenvectors come from ARPACK (``eigsh``, ``which="LA"``, start vector of
    ones, so the result is deterministic); a graph with ``n <= dim + 1`` nodes uses a dense
    eigen-decomposition.

    Raises:
        InputError: bad shapes or ``dim < 1``.
    """
    if dim < 1:
        raise InputError(f"dim must be >= 1, got {dim}")
    a = _binary(adj)
    n = a.shape[0]
    rows, cols = _pool_coo(a, pool)
    if rows.size == 0:
        return _on_pool("spectral_cosine", rows, cols, np.zeros(0), n, origins)
    deg = np.diff(a.indptr).astype(np.float64)
    inv = sp.diags(np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1.0)), 0.0))
    norm = sp.csr_matrix(inv @ a @ inv)
    if n <= dim + 1:
        _vals, vecs = np.linalg.eigh(norm.toarray())
        vecs = vecs[:, -dim:]
    else:
        _vals, vecs = spla.eigsh(norm, k=dim, which="LA", v0=np.ones(n))
    length = np.linalg.norm(vecs, axis=1)
    emb = vecs / np.where(length > 0, length, 1.0)[:, None]
    cos = np.einsum("ij,ij->i", emb[rows], emb[cols])
    return _on_pool("spectral_cosine", rows, cols, (1.0 + cos) / 2.0, n, origins)


def global_signals(
    adj: sp.csr_matrix, pool: sp.csr_matrix, *, origins: frozenset[str], seed: int = 7
) -> list[Signal]:
    """Every feature of this module: Louvain same-community at resolutions 1 and 3, RA with
    degree exponents 0.5, 1.5 and 2, personalised PageRank (4 steps, damping 0.85) and the
    32-dimensional spectral cosine.

    Raises:
        InputError: bad shapes.
    """
    return [
        same_community(adj, pool, origins=origins, resolution=1.0, seed=seed),
        same_community(adj, pool, origins=origins, resolution=3.0, seed=seed),
        *(
            resource_allocation_alpha(adj, pool, origins=origins, alpha=al)
            for al in (0.5, 1.5, 2.0)
        ),
        personalized_pagerank(adj, pool, origins=origins),
        spectral_cosine(adj, pool, origins=origins),
    ]

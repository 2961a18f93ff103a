"""Structural pair features of the friendship graph for the learned ranker, as gated signals.

Each function returns a :class:`~provguard.recommend.signals.Signal` of category
``user.social.friend_list`` whose ``(n, n)`` symmetric CSR scores are defined on the pairs of a
candidate **pool** (normally the friends-of-friends pairs, :func:`two_hop_candidates`). They are
computed from the app's own graph (origin ``{app}``) and pass the policy gate like every other
signal. Definitions (Lü & Zhou, "Link prediction in complex networks: a survey", Physica A 390,
2011; Lichtenwalter, Lussier & Chawla, "New perspectives and methods in link prediction",
KDD 2010, for the per-user rank features):

- :func:`jaccard`: ``|N(u) & N(v)| / |N(u) | N(v)|`` -- networkx ``jaccard_coefficient``;
- :func:`paths_of_length_3`: number of walks ``u - a - b - v`` of length 3, ``(A^3)[u, v]``
  (the local path index's third-order term, Lü, Jin & Zhou, Phys. Rev. E 80, 2009);
- :func:`degree_min`, :func:`degree_max`: the smaller / larger degree of the two ends;
- :func:`reciprocal_rank_features`: for a base score ``S`` (e.g. resource allocation),
  ``1 / rank`` of v in u's candidate list and of u in v's list (rank 1 = best, ties by id),
  reported symmetrically as their max (``<name>_rr_max``) and min (``<name>_rr_min``).

Values are stored only where positive (a pool pair whose feature is 0 is an implicit zero, which
the ranker reads as 0 -- the same value).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from provguard.errors import InputError
from provguard.recommend.signals import FRIEND_LIST, Signal, _square, drop_self_and_friends

_BLOCK_CELLS = 4_000_000
"""Dense cells per row block in :func:`paths_of_length_3` (32 MB of float64)."""


def _pool_coo(adj: sp.csr_matrix, pool: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    a = _square(adj, "adj")
    m = _square(pool, "pool")
    if m.shape != a.shape:
        raise InputError(f"pool shape {m.shape} differs from adj shape {a.shape}")
    mask = drop_self_and_friends(sp.csr_matrix(m != 0, dtype=np.float64), a)
    rows = np.repeat(np.arange(mask.shape[0], dtype=np.int64), np.diff(mask.indptr))
    return rows, mask.indices.astype(np.int64)


def _on_pool(
    name: str,
    rows: np.ndarray,
    cols: np.ndarray,
    vals: np.ndarray,
    n: int,
    origins: frozenset[str],
) -> Signal:
    keep = vals > 0
    scores = sp.csr_matrix((vals[keep], (rows[keep], cols[keep])), shape=(n, n), dtype=np.float64)
    scores.sum_duplicates()
    scores.sort_indices()
    return Signal(name, FRIEND_LIST, frozenset(origins), 1.0, scores)


def _binary(adj: sp.csr_matrix) -> sp.csr_matrix:
    a = sp.csr_matrix(_square(adj, "adj") != 0, dtype=np.float64)
    return a


def jaccard(adj: sp.csr_matrix, pool: sp.csr_matrix, *, origins: frozenset[str]) -> Signal:
    """Jaccard coefficient on the pool pairs (module docstring), name ``jaccard``.

    Computed on the stored entries of ``A @ A`` masked by the pool (O(nnz), no fancy indexing).

    Raises:
        InputError: ``adj`` / ``pool`` not square sparse or of different shapes.
    """
    a = _binary(adj)
    m = _square(pool, "pool")
    if m.shape != a.shape:
        raise InputError(f"pool shape {m.shape} differs from adj shape {a.shape}")
    cn = drop_self_and_friends(sp.csr_matrix(a @ a), a)
    cn = sp.csr_matrix(cn.multiply(m != 0))
    cn.eliminate_zeros()
    cn.sort_indices()
    deg = np.diff(a.indptr).astype(np.float64)
    rows = np.repeat(np.arange(cn.shape[0], dtype=np.int64), np.diff(cn.indptr))
    cols = cn.indices.astype(np.int64)
    union = deg[rows] + deg[cols] - cn.data
    vals = np.divide(cn.data, union, out=np.zeros_like(cn.data), where=union > 0)
    return _on_pool("jaccard", rows, cols, vals, a.shape[0], origins)


def paths_of_length_3(
    adj: sp.csr_matrix, pool: sp.csr_matrix, *, origins: frozenset[str]
) -> Signal:
    """Number of length-3 walks between the two ends of each pool pair, name ``paths3``.

    Computed as ``(A @ A)[block] @ A`` over row blocks of at most ``_BLOCK_CELLS`` dense cells,
    read at the pool pairs of the block only (memory O(block * n), not O(n^2)).

    Raises:
        InputError: ``adj`` / ``pool`` not square sparse or of different shapes.
    """
    a = _binary(adj)
    n = a.shape[0]
    rows, cols = _pool_coo(a, pool)
    vals = np.zeros(rows.size, dtype=np.float64)
    if rows.size:
        a2 = sp.csr_matrix(a @ a)
        step = max(1, _BLOCK_CELLS // max(n, 1))
        bounds = np.searchsorted(rows, np.arange(0, n + step, step))
        for b, lo in enumerate(range(0, n, step)):
            s, e = int(bounds[b]), int(bounds[b + 1])
            if s == e:
                continue
            block = np.asarray((a2[lo : lo + step] @ a).toarray())
            vals[s:e] = block[rows[s:e] - lo, cols[s:e]]
    return _on_pool("paths3", rows, cols, vals, n, origins)


def degree_min(adj: sp.csr_matrix, pool: sp.csr_matrix, *, origins: frozenset[str]) -> Signal:
    """``min(deg u, deg v)`` on the pool pairs, name ``degree_min``.

    Raises:
        InputError: as :func:`jaccard`.
    """
    a = _binary(adj)
    rows, cols = _pool_coo(a, pool)
    deg = np.diff(a.indptr).astype(np.float64)
    return _on_pool("degree_min", rows, cols, np.minimum(deg[rows], deg[cols]), a.shape[0], origins)


def degree_max(adj: sp.csr_matrix, pool: sp.csr_matrix, *, origins: frozenset[str]) -> Signal:
    """``max(deg u, deg v)`` on the pool pairs, name ``degree_max``.

    Raises:
        InputError: as :func:`jaccard`.
    """
    a = _binary(adj)
    rows, cols = _pool_coo(a, pool)
    deg = np.diff(a.indptr).astype(np.float64)
    return _on_pool("degree_max", rows, cols, np.maximum(deg[rows], deg[cols]), a.shape[0], origins)


def row_ranks(scores: sp.csr_matrix) -> sp.csr_matrix:
    """Rank of every stored positive entry within its row: 1 = largest, ties by column id.

    Returns:
        ``(n, m)`` float64 CSR with the same positive pattern as ``scores``.
    """
    csr = sp.csr_matrix(scores, dtype=np.float64)
    csr.eliminate_zeros()
    n = csr.shape[0]
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(csr.indptr))
    cols = csr.indices.astype(np.int64)
    data = csr.data
    pos = data > 0
    rows, cols, data = rows[pos], cols[pos], data[pos]
    order = np.lexsort((cols, -data, rows))
    rows_s = rows[order]
    first = np.searchsorted(rows_s, np.arange(n, dtype=np.int64), side="left")
    rank = np.arange(rows_s.size, dtype=np.int64) - first[rows_s] + 1
    out = sp.csr_matrix(
        (rank.astype(np.float64), (rows_s, cols[order])), shape=csr.shape, dtype=np.float64
    )
    out.sort_indices()
    return out


def reciprocal_rank_features(base: Signal) -> list[Signal]:
    """``<base>_rr_max`` and ``<base>_rr_min`` (module docstring), with ``base``'s category and
    origins (they are computed from ``base`` only).

    Args:
        base: a signal with ``(n, n)`` sparse non-negative scores (symmetric or not).

    Returns:
        Two signals, scores ``(n, n)`` symmetric CSR in (0, 1] on ``base``'s positive pattern
        (union with its transpose).

    Raises:
        InputError: ``base.scores`` is not square sparse.
    """
    s = _square(base.scores, f"signal '{base.name}' scores")
    rr = row_ranks(s)
    rr.data = 1.0 / rr.data
    rt = sp.csr_matrix(rr.T)
    hi = sp.csr_matrix(rr.maximum(rt))
    lo = sp.csr_matrix(rr.minimum(rt))
    # minimum keeps only entries present in both; a one-sided entry's other rank is "not listed"
    lo.eliminate_zeros()
    hi.eliminate_zeros()
    return [
        Signal(f"{base.name}_rr_max", base.category, base.origins, 1.0, hi),
        Signal(f"{base.name}_rr_min", base.category, base.origins, 1.0, lo),
    ]


def common_neighbour_links(
    adj: sp.csr_matrix, pool: sp.csr_matrix, *, origins: frozenset[str]
) -> list[Signal]:
    """Clustering of the common neighbourhood on the pool pairs: three signals.

    With ``CN(u, v) = N(u) & N(v)`` and ``gamma(z) = N(z) & CN(u, v)`` (Cannistraci, Alanis-Lobato
    & Ravasi, "From link-prediction in brain connectomes and protein interactomes to the
    local-community-paradigm in complex networks", Sci. Rep. 3, 1613, 2013):

    - ``cn_links``: LCL, the number of edges among the common neighbours
      (``sum_{z in CN} |gamma(z)| / 2``);
    - ``car``: CAR = ``|CN| * LCL``;
    - ``cra``: CAR-based resource allocation ``sum_{z in CN} |gamma(z)| / k_z``.

    Computed without a per-pair loop: with ``C`` the ``(m, n)`` 0/1 matrix whose row e is the
    common neighbourhood of edge ``e = (z1, z2)`` (``A[z1] * A[z2]``), an edge contributes to
    pair (u, v) exactly when u and v both lie in its row, so ``LCL = C^T C`` and ``CRA = C^T
    diag(1/k_z1 + 1/k_z2) C`` off the diagonal, read at the pool pairs. Cost O(sum over edges of
    |CN(e)|^2).

    Args:
        adj: ``(n, n)`` sparse adjacency (non-zero = edge; symmetric).
        pool: ``(n, n)`` sparse candidate mask (existing friendships and the diagonal ignored).
        origins: the signals' origins (the graph's).

    Returns:
        ``[cn_links, car, cra]``, each ``(n, n)`` CSR on the pool pairs, stored where > 0.

    Raises:
        InputError: ``adj`` / ``pool`` not square sparse or of different shapes.
    """
    a = _binary(adj)
    n = a.shape[0]
    rows, cols = _pool_coo(a, pool)
    deg = np.diff(a.indptr).astype(np.float64)
    up = sp.triu(a, k=1, format="coo")
    z1 = up.row.astype(np.int64)
    z2 = up.col.astype(np.int64)
    lcl = np.zeros(rows.size, dtype=np.float64)
    cra = np.zeros(rows.size, dtype=np.float64)
    if rows.size and z1.size:
        c = sp.csr_matrix(a[z1].multiply(a[z2]), dtype=np.float64)
        ct = sp.csr_matrix(c.T)
        w = 1.0 / deg[z1] + 1.0 / deg[z2]
        mask = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n, n))
        for out, prod in ((lcl, ct @ c), (cra, ct @ sp.diags(w) @ c)):
            m = sp.csr_matrix(sp.csr_matrix(prod).multiply(mask))
            m.eliminate_zeros()
            if m.nnz == 0:
                continue
            m_rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(m.indptr))
            keys = rows * n + cols  # sorted: _pool_coo is CSR order
            at = np.searchsorted(keys, m_rows * n + m.indices.astype(np.int64))
            out[at] = m.data
    cn = np.asarray(sp.csr_matrix(a @ a)[rows, cols]).ravel() if rows.size else np.zeros(0)
    return [
        _on_pool("cn_links", rows, cols, lcl, n, origins),
        _on_pool("car", rows, cols, cn * lcl, n, origins),
        _on_pool("cra", rows, cols, cra, n, origins),
    ]

"""The friendship graph as a sparse adjacency matrix.

Node ids are the data subjects' integer ids (``SubjectId``), 0..n-1. The matrix is the
undirected, unweighted friendship relation: symmetric, binary, zero diagonal.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from provguard.errors import InputError


def _as_ids(x: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise InputError(f"{what} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{what} must hold integer node ids, got dtype {arr.dtype}")
    out = arr.astype(np.int64, copy=False)
    if out.min() < 0:
        raise InputError(f"{what} holds a negative node id ({int(out.min())})")
    return out


def adjacency(src: np.ndarray, dst: np.ndarray, n: int | None = None) -> sp.csr_matrix:
    """Build the undirected binary adjacency matrix of an edge list.

    Behaviour on imperfect input (documented, tested):

    - an edge and its reverse, and repeated edges, collapse to one undirected edge (entry 1);
    - self loops (``u == v``) are dropped -- a user is never their own friend;
    - an empty edge list gives an ``n x n`` matrix with no entries (``0 x 0`` if ``n`` is None);
    - a node with no edges is an all-zero row.

    Args:
        src, dst: ``(m,) int`` node ids, ``>= 0``.
        n: number of nodes; default ``max(src, dst) + 1``.

    Returns:
        ``(n, n)`` CSR matrix, dtype int32, symmetric, entries in {0, 1}, zero diagonal,
        sorted indices, no explicit zeros.

    Raises:
        InputError: arrays of different lengths, not 1-D, not integer, negative ids, an id
            ``>= n``, or a negative ``n``.
    """
    s = _as_ids(src, "src")
    d = _as_ids(dst, "dst")
    if s.shape != d.shape:
        raise InputError(f"src and dst differ in length ({s.size} vs {d.size})")
    top = int(max(s.max(), d.max())) + 1 if s.size else 0
    if n is None:
        n = top
    elif n < 0:
        raise InputError(f"n must be >= 0, got {n}")
    elif top > n:
        raise InputError(f"node id {top - 1} is out of range for n={n}")
    keep = s != d
    s, d = s[keep], d[keep]
    rows = np.concatenate([s, d])
    cols = np.concatenate([d, s])
    data = np.ones(rows.size, dtype=np.int32)
    adj = sp.csr_matrix((data, (rows, cols)), shape=(n, n))
    adj.sum_duplicates()
    adj.data[:] = 1
    adj.sort_indices()
    return adj


def edges(adj: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """The undirected edges of an adjacency matrix, each once with ``src < dst``.

    Returns:
        ``(src, dst)``, two ``(m,) int64`` arrays, sorted by (src, dst).
    """
    upper = sp.triu(adj, k=1, format="coo")
    order = np.lexsort((upper.col, upper.row))
    return upper.row[order].astype(np.int64), upper.col[order].astype(np.int64)


def degrees(adj: sp.csr_matrix) -> np.ndarray:
    """Number of friends per node, ``(n,) int64``."""
    out: np.ndarray = np.diff(adj.indptr).astype(np.int64)
    return out

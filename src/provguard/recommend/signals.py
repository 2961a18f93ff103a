"""Recommendation signals: pairwise scores that carry the provenance of their inputs.

A :class:`Signal` is an ``n x n`` sparse score matrix (row = the user who gets recommendations,
column = a candidate) plus what a policy needs to decide whether it may be used for
``social.friend_recommendation``: the data category it is computed from and its **origins**
(DESIGN.md glossary: a derived value's provenance label is the union of its inputs' labels).
:func:`provguard.recommend.rank.recommend` asks the policy gate once per signal and drops a
refused signal before scoring.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from provguard.errors import InputError

FRIEND_LIST = "user.social.friend_list"
NICKNAME = "user.name.nickname"


@dataclass(frozen=True, eq=False)
class Signal:
    """One pairwise recommendation signal.

    Attributes:
        name: unique name within one :func:`~provguard.recommend.rank.recommend` call.
        category: data-category key of the data it is computed from (``user.social.friend_list``,
            ``user.name.nickname``, ...).
        origins: provenance origins of that data (``{"douyin"}``, ``{"wechat"}``, ...).
        weight: multiplier of ``scores`` in the combined score.
        scores: ``(n, n)`` CSR matrix of non-negative pairwise scores. It is not inspected on
            construction: a signal the gate refuses is never read (its shape is checked only when
            it is used).
    """

    name: str
    category: str
    origins: frozenset[str]
    weight: float
    scores: sp.csr_matrix


def _square(adj: sp.spmatrix | sp.sparray, what: str) -> sp.csr_matrix:
    if not sp.issparse(adj):
        raise InputError(f"{what} must be a scipy sparse matrix")
    if adj.ndim != 2 or adj.shape[0] != adj.shape[1]:
        raise InputError(f"{what} must be square, got shape {adj.shape}")
    return sp.csr_matrix(adj)


def drop_self_and_friends(scores: sp.csr_matrix, adj: sp.csr_matrix) -> sp.csr_matrix:
    """Remove the diagonal and every existing edge of ``adj`` from ``scores``.

    Args:
        scores, adj: ``(n, n)`` sparse matrices.

    Returns:
        ``(n, n)`` float64 CSR matrix, sorted indices, no explicit zeros.
    """
    out = sp.csr_matrix(scores, dtype=np.float64)
    diag = out.diagonal()
    if np.any(diag):
        out = sp.csr_matrix(out - sp.diags(diag, format="csr"))
    out = sp.csr_matrix(out - out.multiply(sp.csr_matrix(adj) != 0))
    out.eliminate_zeros()
    out.sort_indices()
    return out


def common_neighbours(
    adj: sp.csr_matrix,
    *,
    name: str = "common_neighbours",
    origins: frozenset[str] = frozenset({"douyin"}),
    weight: float = 1.0,
) -> Signal:
    """Friends of friends: the number of common friends of every non-adjacent pair.

    ``scores = A @ A`` with the diagonal and the existing edges removed (Liben-Nowell and
    Kleinberg, "The link-prediction problem for social networks", JASIST 58(7), 2007: the
    common-neighbours predictor).

    Args:
        adj: ``(n, n)`` binary symmetric adjacency
            (see :func:`~provguard.recommend.graph.adjacency`).
        name, origins, weight: copied into the signal; ``origins`` is the provenance of the
            friendship graph (the app's own follow graph by default).

    Returns:
        A signal of category ``user.social.friend_list`` whose scores are float64 counts >= 1.

    Raises:
        InputError: ``adj`` is not a square sparse matrix.
    """
    a = _square(adj, "adj").astype(np.float64)
    scores = drop_self_and_friends(sp.csr_matrix(a @ a), a)
    return Signal(name, FRIEND_LIST, frozenset(origins), float(weight), scores)


def two_hop_candidates(adj: sp.csr_matrix) -> sp.csr_matrix:
    """Boolean ``(n, n)`` mask of the friends-of-friends pairs (nonzero pattern of A@A, minus
    the diagonal and existing edges). The usual candidate set for pair signals."""
    return sp.csr_matrix(common_neighbours(adj).scores != 0)


def surname_key(handle: str) -> str:
    """The surname-like key of a normalised handle, ``""`` if it has none.

    - If the handle starts with a Han ideograph, the key is that first character: most Chinese
      family names are one character (王, 李, 张 ...), and handles are often real names written
      family name first. Compound surnames (欧阳, 司马) are not recognised.
    - Otherwise, if the handle has at least two space-separated tokens, the key is the first
      token (pinyin names are written family name first: ``zhang wei`` -> ``zhang``).
    - A single Latin token (``coolcat99``) has no key.

    The handle is expected to be normalised already
    (:func:`~provguard.similarity.handles.normalize_handle`).
    """
    if not handle:
        return ""
    first = handle[0]
    if unicodedata.category(first) == "Lo" and "CJK" in unicodedata.name(first, ""):
        return first
    tokens = handle.split()
    return tokens[0] if len(tokens) >= 2 else ""


def handle_similarity(
    adj_candidates_mask: sp.csr_matrix,
    handles_normalized: Sequence[str | None],
    origins: frozenset[str],
    *,
    name: str = "handle_similarity",
    weight: float = 1.0,
    mask_origins: frozenset[str] = frozenset(),
) -> Signal:
    """+1 for a candidate pair whose normalised handles share a surname-like key.

    For every nonzero ``(i, j)`` of the candidate mask with ``i != j``, the score is 1 if
    ``surname_key(handles[i]) == surname_key(handles[j])`` and the key is not empty (see
    :func:`surname_key`); all other pairs score 0. Users with a shared family name are a weak
    but real "maybe relatives / same clan" hint -- the signal exists so that the policy has a
    handle-derived signal to remove when handles come from the provider.

    Args:
        adj_candidates_mask: ``(n, n)`` sparse mask of the pairs to score (e.g.
            :func:`two_hop_candidates`); only its nonzero pattern is used.
        handles_normalized: n normalised handles, ``None`` for a user without one.
        origins: provenance origins of the handles (``{"wechat"}`` for handles obtained through
            Sign in with WeChat).
        name, weight: copied into the signal.
        mask_origins: provenance origins of the candidate mask (it is derived from the
            friendship graph); the signal's origins are ``origins | mask_origins``.

    Returns:
        A signal of category ``user.name.nickname`` with float64 scores in {1}.

    Raises:
        InputError: the mask is not square or the number of handles differs from n.
    """
    mask = _square(adj_candidates_mask, "adj_candidates_mask")
    n = mask.shape[0]
    if len(handles_normalized) != n:
        raise InputError(f"{len(handles_normalized)} handles for {n} users")
    keys = [surname_key(h) if isinstance(h, str) else "" for h in handles_normalized]
    codes = np.full(n, -1, dtype=np.int64)
    index: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key:
            codes[i] = index.setdefault(key, len(index))
    coo = mask.tocoo()
    r, c = coo.row.astype(np.int64), coo.col.astype(np.int64)
    keep = (r != c) & (coo.data != 0) & (codes[r] >= 0) & (codes[r] == codes[c])
    scores = sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.float64), (r[keep], c[keep])), shape=(n, n)
    )
    scores.data[:] = 1.0  # duplicate mask entries collapse to one
    scores.sort_indices()
    label = frozenset(origins) | frozenset(mask_origins)
    return Signal(name, NICKNAME, label, float(weight), scores)

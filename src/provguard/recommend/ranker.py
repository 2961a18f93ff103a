"""A learned ranker over the permitted signals, gated before training and before scoring.

Features: one column per signal **family** (:func:`~provguard.recommend.platform_signals.family`;
``handle_similarity[user_input]`` and ``handle_similarity[wechat]`` are both
``handle_similarity``), the value being the sum of that family's permitted signals at the pair.
The gate is asked about every signal before the feature matrix is built, in
:meth:`LearnedRanker.fit` and again in :meth:`LearnedRanker.recommend`; a refused signal's
scores are never read, so a model trained under a policy has never seen the forbidden data
(not "seen it and filtered the output").

Candidates: the pairs of a **fixed pool** (a sparse mask, normally the friends-of-friends pairs
of the training graph), each unordered pair once (``u < v``). Every signal is expected to be
symmetric; the value at ``(u, v)``, ``u < v``, is read.

Models: ``"hgb"`` = scikit-learn ``HistGradientBoostingClassifier`` (default), ``"logistic"``
= ``StandardScaler`` on ``log1p`` features + ``LogisticRegression``, ``"lgbm"`` = LightGBM
``LGBMClassifier`` (Ke et al., NIPS 2017; deterministic, 2 threads). Training rows: every
positive pair of the pool plus ``negatives_per_positive`` random negatives per positive (seeded);
a pair's score is the predicted probability of being a positive.

**Re-ranking the anchor's top lists** (``rerank_top=R``, round 4): training rows are every pool
pair in either end's anchor top ``R`` (no sampling), and each user's anchor top ``R`` is ordered
by the model, above the rest of the pool in the anchor's order; that ranking is the "model"
ranking the fusion below combines with the anchor's.

**Anchored rank fusion** (the "never worse than the anchor" guard). A pointwise classifier
optimises pair likelihood over all pairs, not each user's ranking; on a graph where one
heuristic (resource allocation, the *anchor*) is already close to what the features can say, it
can lose a little at the top or deep in a user's list. So the final ranking of user ``u`` is a
fusion of two per-user rankings of u's candidates (1 = best, ties by candidate id)::

    c(u, v) = beta * log rank_model(u, v) + (1 - beta) * log rank_anchor(u, v)
    score(u, v) = 1 / (1 + c(u, v))            # in (0, 1], larger is better

(a weighted geometric mean of the two ranks, cf. rank aggregation / reciprocal-rank fusion,
Cormack, Clarke & Buettcher, SIGIR 2009). ``beta`` is chosen in :meth:`LearnedRanker.fit` on a
**validation** set inside the fitting graph, never on test data: up to ``validation_users``
seeded-sampled users with a positive pair (at most half of them); a second model is trained on
the sampled pairs that touch none of them, and each ``beta`` of :data:`BETAS` ranks their
candidates; the chosen ``beta`` maximises the smallest of the gains over ``beta = 0`` (the
anchor alone) in Recall@10, MRR@50 and Hits@50 (ties: the larger mean gain, then the smaller
beta). ``beta = 0`` reproduces the anchor's ranking exactly, so on validation the ranker is never
worse than the anchor; with no anchor permitted (or ``anchor=None``) ``beta = 1`` (the model
alone).

**Cross-fitted, directed ranker** (``folds=K``, round 5; ``cost_of_compliance(ranker="lgbm-cv")``
uses ``LearnedRanker("lgbm", directed=True, folds=4, coverage_rerank=True)``). Training rows are
*directed* entries ``(u, v)`` of the pool (each pair twice): every positive entry plus
``negatives_per_positive`` sampled negatives per positive. With ``directed`` each entry also
gets per-user features: the log-rank of v in u's anchor list and of u in v's (ties by id), and
``log(1 + number of candidates)`` of u and of v (Lichtenwalter, Lussier & Chawla, KDD 2010 use
such per-node context). ``beta`` is chosen by **K-fold cross-fitting over users** inside the
fitting graph: the users with a positive are split into K seeded folds; fold k's model is
trained on the sampled entries touching no user of fold k and scores every entry of fold k's
users; the fused rankings of *all* users with a positive (out-of-fold scores, instead of 1,000
held-aside users) choose ``beta`` by the same max-min rule. The final model is trained on the
whole sample. With ``coverage_rerank`` the same out-of-fold lists at the chosen ``beta`` also
choose the strength of :func:`exposure_rerank` (:func:`choose_strength`), which then reorders
each user's top :data:`COVERAGE_DEPTH` at scoring time (Hits@50 unchanged).

**Forward validation** (``forward=True``, round 6; ``cost_of_compliance(ranker="lgbm-fwd")``
uses ``LearnedRanker("lgbm", directed=True, forward=True, coverage_rerank=True)``). The
cross-fitted validation above trains and validates on features of the *same* graph (the
fitting graph), while the final model is trained on the fitting graph and applied to the
denser training graph; on ego-Facebook / strict (seed 0) a ``beta`` that won inside the
fitting graph lost MRR at test (docs/recommendation.md, round 5). Forward validation repeats
the deployment step one step earlier instead: a model of the same kind is trained on the
*earlier* graph (``Split.earlier``: the fitting graph with the same share of edges removed
again, or one more time window earlier) with its labels (the pairs new in the fitting graph),
exactly as the final model is trained on the fitting graph, and it scores the fitting graph's
entries, exactly as the final model scores the training graph's. The fused rankings of every
user with a fitting positive, against the fitting positives, choose ``beta`` by the max-min
rule and the exposure strength by :func:`choose_strength` (both rules unchanged from round 5).
This is forward-chaining ("rolling-origin") validation for time-ordered data, Tashman,
"Out-of-sample tests of forecasting accuracy", Int. J. Forecasting 16(4), 2000; Bergmeir &
Benitez, "On the use of cross-validation for time series predictor evaluation", Inf. Sci. 191,
2012: the model is validated under the same train-to-apply shift (here, of edge density) that
it meets when deployed. Without an earlier graph, no validation is run (``beta = 1``, the
model alone, as with too few users in the cross-fitted mode).

**Objectives** (``objective``, forward mode, LightGBM only): ``"binary"`` (the pointwise
classifier above), ``"lambdarank"`` (``LGBMRanker``, LambdaMART: Burges, "From RankNet to
LambdaRank to LambdaMART: an overview", MSR-TR-2010-82; the training entries grouped by their
user, so the gradients are those of each user's NDCG) and ``"ensemble"`` (both models trained on
the same entries; an entry's model score is minus the sum of its log-ranks in the user's list
under the two models, the same geometric-mean rank fusion as with the anchor). The final
``"lgbm-fwd-ens"`` of round 6 is the ensemble.

**Head lock** (``anchor_head=True``, forward mode, round 7; ``"lgbm-fwd-head"`` is the
ensemble with it). Each user's list starts with the anchor's first ``head`` candidates in the
anchor's order, followed by the fused list above (exposure penalty included) without them
(:func:`lock_anchor_head`). A user whose first held-out friend is in the anchor's top ``head``
keeps the anchor's reciprocal rank exactly; the model can change MRR only for the users the
anchor misses at the top, where it is better than the anchor (docs/recommendation.md, round 7).
``(head, beta)`` is chosen jointly over :data:`HEADS` x :data:`BETAS` on the forward-validation
lists by the max-min rule (ties: larger mean gain, smaller head, smaller beta), then the
strength by :func:`choose_strength` on the lists at that pair. ``heads`` replaces the head grid;
``heads=HEADS_LOCKED`` (round 8, ``"lgbm-fwd-head1"``) leaves out head 0, so the anchor's first
candidate always stays first (the gains are still measured against the anchor's own lists).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from provguard.errors import InputError
from provguard.recommend.platform_signals import family
from provguard.recommend.rank import GateResult, Recommendations, _as_gate_result, top_k_rows
from provguard.recommend.signals import Signal, _square

Gate = Callable[[Signal], "GateResult | bool"]
ModelKind = Literal["hgb", "logistic", "lgbm"]
Objective = Literal["binary", "lambdarank", "ensemble"]

BETAS: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
"""Candidate weights of the model's rank in the anchored rank fusion (module docstring)."""

STRENGTHS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
"""Candidate strengths of the exposure penalty (:func:`exposure_rerank`), chosen on validation."""
COVERAGE_K = 10
"""Cut-off of the catalogue coverage the exposure penalty targets (coverage@10)."""
COVERAGE_DEPTH = 50
"""Depth of each user's list the exposure penalty may reorder (= the Hits@50 cut-off, so
Hits@50 is unchanged by it)."""
COVERAGE_MARGIN = 0.01
"""Validation catalogue-coverage gain over the anchor that the chosen strength must reach
(when one strength reaches it without losing Recall@10 or MRR to the anchor)."""


def exposure_rerank(
    candidates: np.ndarray, scores: np.ndarray, *, strength: float, k: int = COVERAGE_K
) -> tuple[np.ndarray, np.ndarray]:
    """Coverage-aware re-ranking of top lists by an exposure (popularity) penalty.

    The exposure ``e(v)`` of a candidate is the number of the given lists that hold it in their
    top ``k``. Each list is reordered by the cost ``log r + strength * log(1 + e(v))``, ``r``
    the candidate's position (1 = best) in the input list, ties kept in input order; the
    candidates stay the same (only positions within each list change). This is the rank-based
    re-ranking for aggregate diversity of Adomavicius & Kwon, "Improving aggregate
    recommendation diversity using ranking-based techniques", IEEE TKDE 24(5), 2012 (item
    popularity as the re-ranking criterion), with a soft log penalty instead of their
    threshold, in the spirit of the popularity-penalty re-rankers of Abdollahpouri, Burke &
    Mobasher, "Managing popularity bias in recommender systems with personalized re-ranking",
    FLAIRS 2019. ``log(1 + e)`` makes the penalty nearly independent of how many lists are
    counted (a constant factor on every exposure shifts every cost by about the same amount).

    Args:
        candidates: ``(n, d) int64`` lists, best first, ``-1`` padded at the end.
        scores: ``(n, d) float64`` aligned scores (returned unchanged when ``strength == 0``).
        strength: penalty weight, >= 0 (0: lists unchanged).
        k: exposure cut-off, >= 1.

    Returns:
        ``(ids, values)`` ``(n, d)``: the reordered lists (``-1`` padding kept at the end) and
        ``1 / (1 + cost)`` (0 on padding), decreasing along each row.

    Raises:
        InputError: bad shapes, ``strength < 0`` or ``k < 1``.
    """
    c = np.asarray(candidates, dtype=np.int64)
    v = np.asarray(scores, dtype=np.float64)
    if c.ndim != 2 or v.shape != c.shape:
        raise InputError("candidates and scores must be (n, d) arrays of the same shape")
    if not strength >= 0.0:
        raise InputError(f"strength must be >= 0, got {strength}")
    if isinstance(k, bool) or k < 1:
        raise InputError(f"k must be >= 1, got {k!r}")
    if strength == 0.0 or c.size == 0:
        return c.copy(), v.copy()
    valid = c >= 0
    head = c[:, :k]
    size = int(c.max()) + 1 if valid.any() else 1
    exposure = np.bincount(head[head >= 0], minlength=size).astype(np.float64)
    rank = np.arange(1, c.shape[1] + 1, dtype=np.float64)
    cost = np.log(rank)[None, :] + strength * np.log1p(exposure[np.where(valid, c, 0)])
    cost = np.where(valid, cost, np.inf)
    order = np.argsort(cost, axis=1, kind="stable")
    ids = np.take_along_axis(c, order, axis=1)
    sorted_cost = np.take_along_axis(cost, order, axis=1)
    values = np.where(ids >= 0, 1.0 / (1.0 + np.where(ids >= 0, sorted_cost, 0.0)), 0.0)
    return ids, values


def _catalogue(ids: np.ndarray, n: int, k: int = COVERAGE_K) -> float:
    head = ids[:, :k]
    return float(np.unique(head[head >= 0]).size / n) if n else float("nan")


HEADS: tuple[int, ...] = (0, 1, 2, 3, 5)
"""Candidate lengths of the anchor's head kept in place by ``anchor_head`` (round 7), chosen on
forward validation together with ``beta``; 0 is round 6's ranking."""

HEADS_LOCKED: tuple[int, ...] = (1, 2, 3, 5)
"""The head grid of round 8's ``"lgbm-fwd-head1"`` (docs/recommendation.md, round 8): round 7's
:data:`HEADS` without 0, so the anchor's first candidate of each list is always kept first."""


def lock_anchor_head(
    ids: np.ndarray, anchor_ids: np.ndarray, head: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the anchor's first ``head`` candidates of each list in place, then the ranker's list.

    Row ``u`` of the result is ``anchor_ids[u, :head]`` followed by ``ids[u]`` without those
    candidates, truncated to ``k`` (``-1`` padding moved to the end). With ``head = 0`` it is
    ``ids[:, :k]``. This is the "head lock" of round 7 (docs/recommendation.md): a user whose
    first held-out friend is in the anchor's top ``head`` keeps exactly the anchor's reciprocal
    rank, so the ranker can change MRR only through the users the anchor misses at the top;
    a shallow form of the interleaving of two rankers, cf. Radlinski, Kurup & Joachims, "How
    does clickthrough data reflect retrieval quality?", CIKM 2008 (team-draft interleaving).

    Args:
        ids: ``(n, d) int64`` the ranker's lists, best first, ``-1`` padded; ``d >= k`` so that
            ``k`` candidates remain after removing the anchor's head (``d >= k + head`` is
            always enough).
        anchor_ids: ``(n, h) int64`` the anchor's lists, best first, ``-1`` padded, ``h >=
            head``.
        head: number of the anchor's candidates kept in place, ``>= 0``.
        k: width of the result, ``>= 1``.

    Returns:
        ``(ids, values)`` ``(n, k)``: the lists and ``1 / (1 + log position)`` (position 1 =
        best; 0 on ``-1`` padding), decreasing along each row.

    Raises:
        InputError: bad shapes, ``head < 0``, ``head > h`` or ``k < 1``.
    """
    r = np.asarray(ids, dtype=np.int64)
    a = np.asarray(anchor_ids, dtype=np.int64)
    if r.ndim != 2 or a.ndim != 2 or a.shape[0] != r.shape[0]:
        raise InputError("ids and anchor_ids must be (n, d) and (n, h) arrays")
    if isinstance(head, bool) or not 0 <= head <= a.shape[1]:
        raise InputError(f"head must be in 0..{a.shape[1]}, got {head!r}")
    if isinstance(k, bool) or k < 1:
        raise InputError(f"k must be >= 1, got {k!r}")
    lead = a[:, :head]
    dup = (r[:, :, None] == lead[:, None, :]).any(axis=2)
    merged = np.concatenate([lead, np.where(dup, -1, r)], axis=1)
    order = np.argsort(merged < 0, axis=1, kind="stable")
    out = np.take_along_axis(merged, order, axis=1)[:, :k]
    if out.shape[1] < k:
        out = np.hstack([out, np.full((out.shape[0], k - out.shape[1]), -1, dtype=np.int64)])
    pos = np.log(np.arange(1, k + 1, dtype=np.float64))
    values = np.where(out >= 0, 1.0 / (1.0 + pos)[None, :], 0.0)
    return out, values


def _head_lists(
    ids: np.ndarray,
    values: np.ndarray,
    anchor_ids: np.ndarray,
    head: int,
    strength: float,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The final lists of an ``anchor_head`` ranker from the fused lists ``ids`` / ``values``
    (``(n, d)``, ``d >= max(k, COVERAGE_DEPTH) + head``): the exposure penalty on their top
    :data:`COVERAGE_DEPTH` (deeper columns kept in order), then the anchor's head in place
    (:func:`lock_anchor_head`). Validation and scoring both call this, so they rank alike."""
    if strength > 0.0:
        top_ids, _ = exposure_rerank(
            ids[:, :COVERAGE_DEPTH], values[:, :COVERAGE_DEPTH], strength=strength
        )
        ids = np.hstack([top_ids, ids[:, COVERAGE_DEPTH:]])
    return lock_anchor_head(ids, anchor_ids, head, k)


@dataclass(frozen=True)
class Gated:
    """The outcome of gating a list of signals (input order kept)."""

    permitted: tuple[Signal, ...]
    removed: tuple[str, ...]
    results: dict[str, GateResult]

    @property
    def origins(self) -> frozenset[str]:
        """Union of the permitted signals' origins."""
        out: frozenset[str] = frozenset()
        for s in self.permitted:
            out = out | s.origins
        return out


def gate_signals(signals: Sequence[Signal], gate: Gate) -> Gated:
    """Ask ``gate`` once per signal, in order; split into permitted and removed.

    Raises:
        InputError: duplicate signal names or a gate answer that is neither GateResult nor bool.
    """
    names = [s.name for s in signals]
    if len(set(names)) != len(names):
        raise InputError(f"signal names must be unique, got {names}")
    permitted: list[Signal] = []
    removed: list[str] = []
    results: dict[str, GateResult] = {}
    for s in signals:
        answer = _as_gate_result(gate(s), s.name)
        results[s.name] = answer
        (permitted.append(s) if answer.allowed else removed.append(s.name))
    return Gated(tuple(permitted), tuple(removed), results)


@dataclass(frozen=True, eq=False)
class PairFeatures:
    """Feature matrix of the pool pairs.

    Attributes:
        rows, cols: ``(p,) int64``, the pool pairs with ``rows < cols``, sorted.
        x: ``(p, f) float64`` features, column j = family ``names[j]``.
        names: feature family names.
        n: number of users.
    """

    rows: np.ndarray
    cols: np.ndarray
    x: np.ndarray
    names: tuple[str, ...]
    n: int


def _gated_recommendations(ids: np.ndarray, vals: np.ndarray, gated: Gated) -> Recommendations:
    """Top lists ``ids`` / ``vals`` with the gate's answers: the permitted signals used, the
    removed ones, every signal's gate result and the used signals' origins."""
    return Recommendations(
        ids,
        vals,
        tuple(s.name for s in gated.permitted),
        gated.removed,
        gated.results,
        gated.origins,
    )


def pool_pairs(pool: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """The unordered pairs ``u < v`` of a pool mask (either triangle counts), sorted.

    Returns:
        ``(rows, cols)``, ``(p,) int64``.
    """
    m = sp.csr_matrix(_square(pool, "pool") != 0, dtype=np.int8)
    # either triangle may be stored: fold onto the upper one; CSR order is (row, col) sorted
    up = sp.triu(m + m.T, k=1, format="csr")
    up.sum_duplicates()
    rows = np.repeat(np.arange(up.shape[0], dtype=np.int64), np.diff(up.indptr))
    return rows, up.indices.astype(np.int64)


def pair_features(
    pool: sp.csr_matrix, signals: Sequence[Signal], families: Sequence[str] | None = None
) -> PairFeatures:
    """Read the signals' scores at the pool pairs, summed per family.

    Args:
        pool: ``(n, n)`` sparse candidate mask.
        signals: permitted signals, each ``(n, n)`` sparse and symmetric.
        families: the feature columns, in order (a model trained on some families is scored on
            the same ones); default: the sorted families of ``signals``. A family with no
            signal is an all-zero column; a signal whose family is not listed is an error.

    Returns:
        :class:`PairFeatures`.

    Raises:
        InputError: shapes disagree, or a signal's family is not in ``families``.
    """
    rows, cols = pool_pairs(pool)
    n = pool.shape[0]
    names = (
        tuple(families)
        if families is not None
        else tuple(sorted({family(s.name) for s in signals}))
    )
    col_of = {name: j for j, name in enumerate(names)}
    x = np.zeros((rows.size, len(names)), dtype=np.float64)
    # pair index + 1 at each upper-triangle pool position: masking a signal with it aligns the
    # signal's values with their pair indices in one O(nnz) elementwise product
    index = sp.csr_matrix(
        (np.arange(1, rows.size + 1, dtype=np.float64), (rows, cols)), shape=(n, n)
    )
    index.sort_indices()
    mask = sp.csr_matrix(index != 0)
    for s in signals:
        fam = family(s.name)
        if fam not in col_of:
            raise InputError(f"signal '{s.name}' (family {fam}) is not a feature of this model")
        if not sp.issparse(s.scores) or s.scores.shape != (n, n):
            raise InputError(f"signal '{s.name}' scores must be a sparse ({n}, {n}) matrix")
        values = sp.csr_matrix(sp.csr_matrix(s.scores, dtype=np.float64).multiply(mask))
        values.sort_indices()
        if np.array_equal(values.indptr, index.indptr) and np.array_equal(
            values.indices, index.indices
        ):
            # the signal covers the whole pool (graph features): values align with the pairs
            x[:, col_of[fam]] += values.data
            continue
        values.eliminate_zeros()
        at = sp.csr_matrix(index.multiply(values != 0))
        at.sort_indices()
        x[at.data.astype(np.int64) - 1, col_of[fam]] += values.data
    return PairFeatures(rows, cols, x, names, n)


def _labels(features: PairFeatures, positives: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    s = np.asarray(positives[0], dtype=np.int64)
    d = np.asarray(positives[1], dtype=np.int64)
    if s.shape != d.shape or s.ndim != 1:
        raise InputError("positives must be two 1-D arrays of equal length")
    n = features.n
    if s.size and (min(s.min(), d.min()) < 0 or max(s.max(), d.max()) >= n):
        raise InputError(f"a positive pair names a user outside 0..{n - 1}")
    pos_keys = np.unique(np.minimum(s, d) * n + np.maximum(s, d))
    return np.isin(features.rows * n + features.cols, pos_keys)


def _row_log_ranks(rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``log`` of each entry's rank within its row (1 = largest value, ties by column id)."""
    order = np.lexsort((cols, -values, rows))
    rs = rows[order]
    first = np.searchsorted(rs, rs, side="left")
    out = np.empty(rows.size, dtype=np.float64)
    out[order] = np.log(np.arange(rs.size, dtype=np.float64) - first + 1.0)
    return out


def fuse_ranks(
    rows: np.ndarray,
    cols: np.ndarray,
    model: np.ndarray,
    anchor: np.ndarray | None,
    beta: float,
) -> np.ndarray:
    """Anchored rank fusion of directed candidate entries (module docstring).

    Args:
        rows, cols: ``(e,) int64`` directed entries (user, candidate), each once.
        model: ``(e,)`` model scores (larger is better).
        anchor: ``(e,)`` anchor scores, or None (then the model's ranking alone).
        beta: weight of the model's log-rank, in [0, 1].

    Returns:
        ``(e,) float64`` in (0, 1]: ``1 / (1 + beta log r_model + (1 - beta) log r_anchor)``;
        within each row the order is the fused ranking (ties broken by column id downstream).

    Raises:
        InputError: ``beta`` outside [0, 1] or arrays of different lengths.
    """
    if not 0.0 <= beta <= 1.0:
        raise InputError(f"beta must be in [0, 1], got {beta}")
    if not rows.shape == cols.shape == model.shape or (
        anchor is not None and anchor.shape != model.shape
    ):
        raise InputError("rows, cols, model and anchor must have the same length")
    c = _row_log_ranks(rows, cols, model) if beta > 0.0 or anchor is None else 0.0
    if anchor is not None and beta < 1.0:
        c = beta * c + (1.0 - beta) * _row_log_ranks(rows, cols, anchor)
    out: np.ndarray = 1.0 / (1.0 + np.asarray(c, dtype=np.float64) + np.zeros(rows.size))
    return out


def _directed(
    features: PairFeatures, p: np.ndarray, anchor_col: int | None, users: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    rows = np.concatenate([features.rows, features.cols])
    cols = np.concatenate([features.cols, features.rows])
    model = np.concatenate([p, p])
    anchor = None
    if anchor_col is not None:
        a = features.x[:, anchor_col]
        anchor = np.concatenate([a, a])
    if users is not None:
        keep = np.zeros(features.n, dtype=bool)
        keep[np.asarray(users, dtype=np.int64)] = True
        sel = keep[rows]
        rows, cols, model = rows[sel], cols[sel], model[sel]
        anchor = anchor[sel] if anchor is not None else None
    return rows, cols, model, anchor


def _rerank_anchor_top(
    rows: np.ndarray, cols: np.ndarray, model: np.ndarray, anchor: np.ndarray, top: int
) -> np.ndarray:
    """Per user: the anchor's top ``top`` candidates ordered by ``model``, above the rest in
    the anchor's order (ties by candidate id).

    Args:
        rows, cols: ``(e,) int64`` directed entries; model: ``(e,)`` scores in [0, 1];
        anchor: ``(e,)`` anchor scores; top: re-ranked depth (>= 1).

    Returns:
        ``(e,) float64``: ``2 + model`` on the re-ranked entries, ``1 / (2 + log r_anchor)``
        (< 1) on the others.
    """
    log_anchor = _row_log_ranks(rows, cols, anchor)
    inside = log_anchor < np.log(top + 0.5)
    out: np.ndarray = np.where(inside, 2.0 + model, 1.0 / (2.0 + log_anchor))
    return out


def _top_k_directed(
    rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    full = sp.csr_matrix((values, (rows, cols)), shape=(n, n))
    return top_k_rows(full, k)


def _slice(
    recs: Recommendations, target: tuple[np.ndarray, np.ndarray], users: np.ndarray
) -> tuple[float, float, float]:
    """``(Recall@10 micro, MRR@50, Hits@50)`` of the queries of ``users`` -- the definitions of
    :func:`provguard.recommend.protocol.slice_metrics` (equality tested)."""
    q_user = np.concatenate([target[0], target[1]])
    q_target = np.concatenate([target[1], target[0]])
    sel = np.isin(q_user, users)
    q_user, q_target = q_user[sel], q_target[sel]
    if q_user.size == 0:
        return (0.0, 0.0, 0.0)
    match = recs.candidates[q_user, :50] == q_target[:, None]
    rank = np.where(match.any(axis=1), match.argmax(axis=1) + 1, 51)
    best = np.full(recs.n_users, 51, dtype=np.int64)
    np.minimum.at(best, q_user, rank)
    r = best[np.unique(q_user)]
    return (
        float((rank <= 10).mean()),
        float(np.where(r <= 50, 1.0 / r, 0.0).mean()),
        float((r <= 50).mean()),
    )


class LearnedRanker:
    """Pairwise classifier over gated signal families, fused with an anchor heuristic's
    per-user ranking (module docstring).

    Args:
        model: ``"hgb"``, ``"logistic"`` or ``"lgbm"``.
        negatives_per_positive: negatives sampled per positive training pair (>= 1).
        seed: seed of the negative sampling, the validation sample and the model.
        max_iter: boosting iterations (hgb) or solver iterations (logistic).
        anchor: family of the anchor heuristic (default ``"resource_allocation"``); None: no
            fusion (``beta = 1``, the classifier's ranking alone, the behaviour before the
            fusion was added).
        validation_users: users sampled for choosing ``beta`` (>= 1; not used with ``folds``).
        rerank_top: re-rank only the anchor's top ``rerank_top`` per user (module docstring).
        directed: add the per-user directed features (needs ``folds``).
        folds: K >= 2 for the cross-fitted training of the module docstring; None: the
            held-aside validation users.
        coverage_rerank: choose and apply the exposure penalty for catalogue coverage (needs
            ``folds`` or ``forward``).
        forward: choose ``beta`` / the strength by forward validation on the ``earlier`` graph
            given to :meth:`fit` (module docstring); directed entries as with ``folds``.
        objective: ``"binary"`` (default), ``"lambdarank"`` or ``"ensemble"`` (module
            docstring; the last two need ``model="lgbm"`` and ``forward``).
        anchor_head: keep the anchor's first ``head`` candidates of each list in place, ``head``
            chosen with ``beta`` on forward validation (module docstring; needs ``forward``).
        heads: the grid ``head`` is chosen from with ``anchor_head`` (default :data:`HEADS`,
            round 7; :data:`HEADS_LOCKED` for round 8): distinct ints ``>= 0``, non-empty. The
            head before fitting, or when ``fit`` gets no earlier graph, is ``min(heads)``.

    Attributes set by :meth:`fit`: ``beta`` (chosen weight), ``validation`` (``beta`` ->
    ``(recall@10, mrr@50, hits@50)`` on the validation users; empty without an anchor); with
    ``folds`` or ``forward`` also ``anchor_validation`` (the anchor's ``(recall@10, mrr@50, hits@50,
    catalogue coverage@10)`` on them), and with ``coverage_rerank`` ``strength`` and
    ``coverage_validation`` (strength -> the same four numbers at the chosen ``beta``); with
    ``anchor_head`` also ``head`` (the chosen head length, ``min(heads)`` before fitting) and
    ``head_validation`` (``(head, beta)`` -> ``(recall@10, mrr@50, hits@50)``).

    Raises:
        InputError: an unknown model, ``rerank_top < 1``, ``folds < 2``, ``directed`` or
            ``coverage_rerank`` without ``folds`` or ``forward``, ``folds`` or ``forward`` with
            ``rerank_top``, ``folds`` with ``forward``, an unknown objective or one that
            the model / mode does not support, ``anchor_head`` without ``forward``, or bad
            ``heads`` (empty, repeated, negative or not ints).
    """

    def __init__(
        self,
        model: ModelKind = "hgb",
        *,
        negatives_per_positive: int = 20,
        seed: int = 7,
        max_iter: int = 200,
        anchor: str | None = "resource_allocation",
        validation_users: int = 1000,
        rerank_top: int | None = None,
        directed: bool = False,
        folds: int | None = None,
        coverage_rerank: bool = False,
        forward: bool = False,
        objective: Objective = "binary",
        anchor_head: bool = False,
        heads: tuple[int, ...] = HEADS,
    ) -> None:
        if model not in ("hgb", "logistic", "lgbm"):
            raise InputError(f"model must be 'hgb', 'logistic' or 'lgbm', got {model!r}")
        if rerank_top is not None and (isinstance(rerank_top, bool) or rerank_top < 1):
            raise InputError(f"rerank_top must be None or >= 1, got {rerank_top!r}")
        self.rerank_top = rerank_top
        if folds is not None and (isinstance(folds, bool) or folds < 2):
            raise InputError(f"folds must be None or >= 2, got {folds!r}")
        if (directed or coverage_rerank) and folds is None and not forward:
            raise InputError(
                "directed features and coverage re-ranking need folds (>= 2) or forward"
            )
        if (folds is not None or forward) and rerank_top is not None:
            raise InputError("folds / forward and rerank_top cannot be combined")
        if folds is not None and forward:
            raise InputError("folds and forward cannot be combined")
        if objective not in ("binary", "lambdarank", "ensemble"):
            raise InputError(
                f"objective must be 'binary', 'lambdarank' or 'ensemble', got {objective!r}"
            )
        if objective != "binary" and (model != "lgbm" or not forward):
            raise InputError(
                "the lambdarank / ensemble objectives need model='lgbm' and forward=True"
            )
        if anchor_head and not forward:
            raise InputError("anchor_head needs forward=True (its head is chosen on validation)")
        self.forward = forward
        self.objective: Objective = objective
        grid = tuple(heads)
        if (
            not grid
            or len(set(grid)) != len(grid)
            or any(isinstance(h, bool) or not isinstance(h, int) or h < 0 for h in grid)
        ):
            raise InputError(f"heads must be distinct ints >= 0, at least one; got {heads!r}")
        self.anchor_head = anchor_head
        self.heads = tuple(sorted(grid))
        self.head = self.heads[0]
        self.head_validation: dict[tuple[int, float], tuple[float, float, float]] = {}
        self.directed = directed
        self.folds = folds
        self.coverage_rerank = coverage_rerank
        self.strength = 0.0
        self.coverage_validation: dict[float, tuple[float, float, float, float]] = {}
        self.anchor_validation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
        if negatives_per_positive < 1:
            raise InputError("negatives_per_positive must be >= 1")
        if validation_users < 1:
            raise InputError("validation_users must be >= 1")
        self.anchor = anchor
        self.validation_users = validation_users
        self.beta = 1.0
        self.validation: dict[float, tuple[float, float, float]] = {}
        self.model_kind: ModelKind = model
        self.negatives_per_positive = negatives_per_positive
        self.seed = seed
        self.max_iter = max_iter
        self.families: tuple[str, ...] = ()
        self.trained_on: tuple[str, ...] = ()
        self.removed_at_training: tuple[str, ...] = ()
        self.training_pairs = 0
        self.training_positives = 0
        self._model: object | None = None

    def _new_model(self, objective: Objective = "binary") -> object:
        if self.model_kind == "lgbm":
            import lightgbm as lgb

            kind = lgb.LGBMRanker if objective == "lambdarank" else lgb.LGBMClassifier
            return kind(
                n_estimators=self.max_iter,
                learning_rate=0.05,
                num_leaves=31,
                min_child_samples=50,
                subsample=0.8,
                subsample_freq=1,
                colsample_bytree=0.8,
                random_state=self.seed,
                # one thread with cross-fitting: OpenMP threads on a shared 2-core machine
                # busy-wait and made a fit 10x slower under load (measured, round 5)
                n_jobs=1 if self.folds is not None or self.forward else 2,
                deterministic=True,
                force_col_wise=True,
                verbose=-1,
            )
        if self.model_kind == "hgb":
            return HistGradientBoostingClassifier(
                max_iter=self.max_iter, learning_rate=0.1, random_state=self.seed
            )
        return make_pipeline(
            FunctionTransformer(np.log1p),
            StandardScaler(),
            LogisticRegression(solver="newton-cholesky", max_iter=self.max_iter),
        )

    def fit(
        self,
        pool: sp.csr_matrix,
        signals: Sequence[Signal],
        gate: Gate,
        positives: tuple[np.ndarray, np.ndarray],
        *,
        earlier: tuple[sp.csr_matrix, Sequence[Signal], tuple[np.ndarray, np.ndarray]]
        | None = None,
    ) -> LearnedRanker:
        """Gate the signals, then train on the pool pairs of the fitting graph.

        Args:
            pool: ``(n, n)`` candidate mask of the fitting graph.
            signals: signals computed on the fitting graph.
            gate: the policy gate; refused signals are dropped before any feature is read.
            positives: ``(src, dst)`` the pairs that became friends (labels 1); other pool pairs
                are labels 0.
            earlier: with ``forward``: ``(pool, signals, positives)`` of the graph one step
                before the fitting graph (``Split.earlier``), gated by ``gate`` again; its
                model's validation on the fitting graph chooses ``beta`` (module docstring).
                Ignored in the other modes; without it a forward ranker runs no validation.

        Returns:
            ``self``.

        Raises:
            InputError: no permitted signal, no positive pair in the pool, or bad inputs.
        """
        gated = gate_signals(signals, gate)
        if not gated.permitted:
            raise InputError("every signal was refused: nothing to train on")
        if self.forward:
            return self._fit_forward(pool, gated, positives, earlier, gate)
        if self.folds is not None:
            return self._fit_cross(pool, gated, positives)
        # labels and the negative sample first, then features of the sampled pairs only
        rows, cols = pool_pairs(pool)
        n = pool.shape[0]
        all_pairs = PairFeatures(rows, cols, np.zeros((rows.size, 0)), (), n)
        y_all = _labels(all_pairs, positives)
        pos_idx = np.flatnonzero(y_all)
        neg_idx = np.flatnonzero(~y_all)
        if pos_idx.size == 0 or neg_idx.size == 0:
            raise InputError("the pool holds no positive (or no negative) training pair")
        rng = np.random.default_rng(self.seed)
        region = self._anchor_region(pool, gated.permitted, rows, cols)
        if region is not None:
            # re-ranking the anchor's top lists: train on every pair in one of them
            take = np.flatnonzero(region)
            if not (y_all[take].any() and (~y_all[take]).any()):
                raise InputError("the anchor's top lists hold no positive (or no negative) pair")
        else:
            n_neg = min(neg_idx.size, self.negatives_per_positive * pos_idx.size)
            take = np.sort(np.concatenate([pos_idx, rng.choice(neg_idx, n_neg, replace=False)]))
        sample = sp.csr_matrix(
            (np.ones(take.size), (rows[take], cols[take])), shape=(n, n), dtype=np.float64
        )
        feats = pair_features(sample, gated.permitted)
        y = _labels(feats, positives)
        self.families = feats.names
        self.beta, self.validation = self._choose_beta(
            pool, gated.permitted, positives, feats, y, rng
        )
        model = self._new_model()
        model.fit(feats.x, y)  # type: ignore[attr-defined]
        self._model = model
        self.trained_on = tuple(s.name for s in gated.permitted)
        self.removed_at_training = gated.removed
        self.training_pairs = int(take.size)
        self.training_positives = int(pos_idx.size)
        return self

    def _anchor_region(
        self,
        pool: sp.csr_matrix,
        permitted: Sequence[Signal],
        rows: np.ndarray,
        cols: np.ndarray,
    ) -> np.ndarray | None:
        """``(p,) bool``: pool pair ``(rows, cols)`` is in either end's anchor top
        ``rerank_top``; None without re-ranking or without a permitted anchor."""
        if self.rerank_top is None or self.anchor is None:
            return None
        anchors = [s for s in permitted if family(s.name) == self.anchor]
        if not anchors:
            return None
        a = pair_features(pool, anchors, (self.anchor,)).x[:, 0]
        d_rows = np.concatenate([rows, cols])
        d_cols = np.concatenate([cols, rows])
        inside = _row_log_ranks(d_rows, d_cols, np.concatenate([a, a])) < np.log(
            self.rerank_top + 0.5
        )
        out: np.ndarray = inside[: rows.size] | inside[rows.size :]
        return out

    def _ranking_values(
        self, rows: np.ndarray, cols: np.ndarray, model: np.ndarray, anchor: np.ndarray | None
    ) -> np.ndarray:
        """The model's per-user ranking values (re-ranked anchor top lists with
        ``rerank_top``, else the model's scores)."""
        if self.rerank_top is None or anchor is None:
            return model
        return _rerank_anchor_top(rows, cols, model, anchor, self.rerank_top)

    def _anchor_col(self) -> int | None:
        if self.anchor is None or self.anchor not in self.families:
            return None
        return self.families.index(self.anchor)

    def _choose_beta(
        self,
        pool: sp.csr_matrix,
        permitted: Sequence[Signal],
        positives: tuple[np.ndarray, np.ndarray],
        feats: PairFeatures,
        y: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[float, dict[float, tuple[float, float, float]]]:
        """``beta`` of the anchored rank fusion, chosen on held-aside validation users of the
        fitting graph (module docstring)."""
        if self.anchor is None or self.anchor not in feats.names:
            return 1.0, {}
        n = feats.n
        s = np.asarray(positives[0], dtype=np.int64)
        d = np.asarray(positives[1], dtype=np.int64)
        with_pos = np.unique(np.concatenate([s, d]))
        if with_pos.size < 4:
            return 1.0, {}
        val = np.sort(rng.choice(with_pos, min(self.validation_users, with_pos.size // 2), False))
        is_val = np.zeros(n, dtype=bool)
        is_val[val] = True
        train_rows = ~(is_val[feats.rows] | is_val[feats.cols])
        if not (y[train_rows].any() and (~y[train_rows]).any()):
            return 1.0, {}
        held = self._new_model()
        held.fit(feats.x[train_rows], y[train_rows])  # type: ignore[attr-defined]
        # every pool pair touching a validation user, scored by the held-aside model
        keep = np.zeros(n, dtype=np.float64)
        keep[val] = 1.0
        on = sp.diags(keep, format="csr")
        base = sp.csr_matrix(pool != 0, dtype=np.float64)
        vpool = sp.csr_matrix((on @ base + base @ on) != 0)
        vf = pair_features(vpool, permitted, self.families)
        if vf.x.shape[0] == 0:
            return 1.0, {}
        p = np.asarray(held.predict_proba(vf.x)[:, 1], dtype=np.float64)  # type: ignore[attr-defined]
        rows, cols, model, anchor = _directed(vf, p, self._anchor_col(), val)
        if anchor is None:  # unreachable: the anchor family is a feature (checked above)
            return 1.0, {}
        # the two per-user rankings once; each beta only re-weights them (as in fuse_ranks)
        log_model = _row_log_ranks(rows, cols, self._ranking_values(rows, cols, model, anchor))
        log_anchor = _row_log_ranks(rows, cols, anchor)
        sel = is_val[s] | is_val[d]
        target = (s[sel], d[sel])
        scores: dict[float, tuple[float, float, float]] = {}
        for beta in BETAS:
            fused = 1.0 / (1.0 + beta * log_model + (1.0 - beta) * log_anchor)
            ids, vals = _top_k_directed(rows, cols, fused, n, 50)
            scores[beta] = _slice(Recommendations(ids, vals, (), ()), target, val)
        base_m = np.asarray(scores[0.0])

        def key(beta: float) -> tuple[float, float, float]:
            gain = np.asarray(scores[beta]) - base_m
            return (float(gain.min()), float(gain.mean()), -beta)

        return max(BETAS, key=key), scores

    def _directed_design(
        self, feats: PairFeatures
    ) -> tuple[np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]:
        """Directed entries ``(u, v)`` of the pool pairs (every pair twice) and their feature
        rows: the pair's family features, plus with ``directed`` the log-rank of v in u's anchor
        list and of u in v's, and ``log(1 + |pool(u)|)``, ``log(1 + |pool(v)|)`` (each end's
        number of candidates).

        Returns:
            ``(rows, cols, design)``: ``(2p,) int64`` entries and ``design(idx) -> (len(idx),
            f') float64`` features of the entries ``idx``.
        """
        p = feats.rows.size
        rows = np.concatenate([feats.rows, feats.cols])
        cols = np.concatenate([feats.cols, feats.rows])
        extra: list[np.ndarray] = []
        if self.directed:
            ac = self._anchor_col()
            if ac is not None:
                a = feats.x[:, ac]
                lr = _row_log_ranks(rows, cols, np.concatenate([a, a]))
                extra += [lr, np.concatenate([lr[p:], lr[:p]])]
            size = np.bincount(rows, minlength=feats.n).astype(np.float64)
            extra += [np.log1p(size[rows]), np.log1p(size[cols])]
        ex = np.column_stack(extra) if extra else np.zeros((rows.size, 0))

        def design(idx: np.ndarray) -> np.ndarray:
            out: np.ndarray = np.hstack([feats.x[idx % max(p, 1)], ex[idx]])
            return out

        return rows, cols, design

    def _fit_cross(
        self, pool: sp.csr_matrix, gated: Gated, positives: tuple[np.ndarray, np.ndarray]
    ) -> LearnedRanker:
        """Training with ``folds`` (class docstring): cross-fitted validation over every user
        with a positive, then the final model on the whole sample."""
        folds = self.folds if self.folds is not None else 2
        feats = pair_features(pool, gated.permitted)
        self.families = feats.names
        n = feats.n
        rows, cols, design = self._directed_design(feats)
        yd, take, rng = self._directed_sample(feats, positives)
        s = np.asarray(positives[0], dtype=np.int64)
        d = np.asarray(positives[1], dtype=np.int64)
        with_pos = np.unique(np.concatenate([s, d]))
        fold = np.full(n, -1, dtype=np.int64)
        perm = rng.permutation(with_pos)
        fold[perm] = np.arange(perm.size) % folds
        ac = self._anchor_col()
        self.beta, self.validation, self.strength, self.coverage_validation = 1.0, {}, 0.0, {}
        if ac is not None and with_pos.size >= 2 * folds:
            oof = np.zeros(rows.size, dtype=np.float64)
            complete = True
            for k in range(folds):
                part = take[(fold[rows[take]] != k) & (fold[cols[take]] != k)]
                if not (yd[part].any() and (~yd[part]).any()):
                    complete = False
                    break
                held = self._new_model()
                held.fit(design(part), yd[part])  # type: ignore[attr-defined]
                sel = np.flatnonzero(fold[rows] == k)
                if sel.size:
                    oof[sel] = held.predict_proba(design(sel))[:, 1]  # type: ignore[attr-defined]
            if complete:
                a = feats.x[:, ac]
                self._validate_cross(rows, cols, oof, np.concatenate([a, a]), fold >= 0, (s, d))
        model = self._new_model()
        model.fit(design(take), yd[take])  # type: ignore[attr-defined]
        self._model = model
        self.trained_on = tuple(sig.name for sig in gated.permitted)
        self.removed_at_training = gated.removed
        self.training_pairs = int(take.size)
        self.training_positives = int(yd.sum() // 2)
        return self

    def _directed_sample(
        self, feats: PairFeatures, positives: tuple[np.ndarray, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
        """Labels of the directed entries (``(2p,) bool``), the training sample (every positive
        entry plus ``negatives_per_positive`` seeded negatives per positive, sorted indices) and
        the generator after drawing it (seeded with ``seed``)."""
        y = _labels(feats, positives)
        yd = np.concatenate([y, y])
        pos = np.flatnonzero(yd)
        neg = np.flatnonzero(~yd)
        if pos.size == 0 or neg.size == 0:
            raise InputError("the pool holds no positive (or no negative) training pair")
        rng = np.random.default_rng(self.seed)
        n_neg = min(neg.size, self.negatives_per_positive * pos.size)
        take = np.sort(np.concatenate([pos, rng.choice(neg, n_neg, replace=False)]))
        return yd, take, rng

    def _fit_forward(
        self,
        pool: sp.csr_matrix,
        gated: Gated,
        positives: tuple[np.ndarray, np.ndarray],
        earlier: tuple[sp.csr_matrix, Sequence[Signal], tuple[np.ndarray, np.ndarray]] | None,
        gate: Gate,
    ) -> LearnedRanker:
        """Training with ``forward`` (module docstring): a model of the same kind trained on the
        earlier graph scores the fitting graph's entries of every user with a fitting positive;
        those rankings choose ``beta`` and the strength; the final model is trained on the
        fitting graph's sample."""
        feats = pair_features(pool, gated.permitted)
        self.families = feats.names
        n = feats.n
        rows, cols, design = self._directed_design(feats)
        yd, take, _rng = self._directed_sample(feats, positives)
        self.beta, self.validation, self.strength, self.coverage_validation = 1.0, {}, 0.0, {}
        self.head, self.head_validation = self.heads[0], {}
        ac = self._anchor_col()
        if earlier is not None and ac is not None:
            e_pool, e_signals, e_positives = earlier
            if e_pool.shape != pool.shape:
                raise InputError(
                    f"the earlier pool is {e_pool.shape}, the fitting pool {pool.shape}"
                )
            e_gated = gate_signals(e_signals, gate)
            # a family with no signal on the fitting graph has no column (as in recommend)
            e_feats = pair_features(
                e_pool,
                [x for x in e_gated.permitted if family(x.name) in self.families],
                self.families,
            )
            e_rows, _e_cols, e_design = self._directed_design(e_feats)
            e_yd, e_take, _ = self._directed_sample(e_feats, e_positives)
            s = np.asarray(positives[0], dtype=np.int64)
            d = np.asarray(positives[1], dtype=np.int64)
            is_val = np.zeros(n, dtype=bool)
            is_val[np.concatenate([s, d])] = True
            sel = np.flatnonzero(is_val[rows])
            a = feats.x[:, ac]
            held = self._train_directed(e_design, e_yd, e_rows, e_take)
            forward = np.zeros(rows.size, dtype=np.float64)
            if sel.size:
                forward[sel] = self._score_directed(held, design(sel), rows[sel], cols[sel])
            validate = self._validate_head if self.anchor_head else self._validate_cross
            validate(rows, cols, forward, np.concatenate([a, a]), is_val, (s, d))
        self._model = self._train_directed(design, yd, rows, take)
        self.trained_on = tuple(sig.name for sig in gated.permitted)
        self.removed_at_training = gated.removed
        self.training_pairs = int(take.size)
        self.training_positives = int(yd.sum() // 2)
        return self

    def _train_directed(
        self,
        design: Callable[[np.ndarray], np.ndarray],
        yd: np.ndarray,
        rows: np.ndarray,
        take: np.ndarray,
        objective: Objective | None = None,
    ) -> object:
        """A new model trained on the directed entries ``take`` (``objective``: default the
        ranker's); with ``"lambdarank"`` the entries are grouped by their user (LightGBM needs
        each group contiguous); with ``"ensemble"`` a ``(binary, lambdarank)`` pair of models."""
        objective = self.objective if objective is None else objective
        if objective == "ensemble":
            return tuple(
                self._train_directed(design, yd, rows, take, part)
                for part in ("binary", "lambdarank")
            )
        model = self._new_model(objective)
        if objective != "lambdarank":
            model.fit(design(take), yd[take])  # type: ignore[attr-defined]
            return model
        idx = take[np.argsort(rows[take], kind="stable")]
        _users, sizes = np.unique(rows[idx], return_counts=True)
        model.fit(design(idx), yd[idx].astype(np.int64), group=sizes)  # type: ignore[attr-defined]
        return model

    def _score_directed(
        self,
        model: object,
        x: np.ndarray,
        rows: np.ndarray,
        cols: np.ndarray,
        objective: Objective | None = None,
    ) -> np.ndarray:
        """Scores of entries ``x`` (larger is better; ``rows`` / ``cols`` the entries, every
        entry of each user present): the positive-class probability, the ranking score with
        ``"lambdarank"`` (only its order within a user is used), or with ``"ensemble"`` minus the
        sum of the two models' per-user log-ranks (a geometric-mean rank fusion)."""
        objective = self.objective if objective is None else objective
        if objective == "ensemble":
            total = np.zeros(rows.size, dtype=np.float64)
            kinds: tuple[Objective, ...] = ("binary", "lambdarank")
            for kind, part in zip(kinds, model, strict=True):  # type: ignore[call-overload]
                total += _row_log_ranks(rows, cols, self._score_directed(part, x, rows, cols, kind))
            out: np.ndarray = -total
            return out
        if objective == "lambdarank":
            return np.asarray(model.predict(x), dtype=np.float64)  # type: ignore[attr-defined]
        return np.asarray(model.predict_proba(x)[:, 1], dtype=np.float64)  # type: ignore[attr-defined]

    def _validate_cross(
        self,
        rows: np.ndarray,
        cols: np.ndarray,
        oof: np.ndarray,
        anchor: np.ndarray,
        is_val: np.ndarray,
        target: tuple[np.ndarray, np.ndarray],
    ) -> None:
        """Choose ``beta`` (and ``strength`` with ``coverage_rerank``) on the out-of-fold
        scores of every validation user (class docstring); sets the attributes."""
        n = is_val.size
        keep = is_val[rows]
        r, c = rows[keep], cols[keep]
        log_model = _row_log_ranks(r, c, oof[keep])
        log_anchor = _row_log_ranks(r, c, anchor[keep])
        val = np.flatnonzero(is_val)
        scores: dict[float, tuple[float, float, float]] = {}
        lists: dict[float, tuple[np.ndarray, np.ndarray]] = {}
        for beta in BETAS:
            # the arithmetic of fuse_ranks (same rounding, so the same ties as at scoring time)
            fused = 1.0 / (1.0 + (beta * log_model + (1.0 - beta) * log_anchor))
            lists[beta] = _top_k_directed(r, c, fused, n, COVERAGE_DEPTH)
            scores[beta] = _slice(Recommendations(*lists[beta], (), ()), target, val)
        base = np.asarray(scores[0.0])

        def key(beta: float) -> tuple[float, float, float]:
            gain = np.asarray(scores[beta]) - base
            return (float(gain.min()), float(gain.mean()), -beta)

        self.beta = max(BETAS, key=key)
        self.validation = scores
        self.anchor_validation = (*scores[0.0], _catalogue(lists[0.0][0], n))
        if not self.coverage_rerank:
            return
        ids, vals = lists[self.beta]
        cov: dict[float, tuple[float, float, float, float]] = {}
        for strength in STRENGTHS:
            re_ids, re_vals = exposure_rerank(ids, vals, strength=strength)
            m = _slice(Recommendations(re_ids, re_vals, (), ()), target, val)
            cov[strength] = (*m, _catalogue(re_ids, n))
        self.coverage_validation = cov
        self.strength = choose_strength(cov, self.anchor_validation)

    def _validate_head(
        self,
        rows: np.ndarray,
        cols: np.ndarray,
        oof: np.ndarray,
        anchor: np.ndarray,
        is_val: np.ndarray,
        target: tuple[np.ndarray, np.ndarray],
    ) -> None:
        """``anchor_head`` validation (round 7): every ``(head, beta)`` of ``heads`` x
        :data:`BETAS` ranks the validation users' lists (:func:`_head_lists`, no penalty); the
        pair with the largest smallest gain over the anchor's own lists (head 0, beta 0, whether
        or not head 0 is in ``heads``) in (Recall@10, MRR, Hits@50) wins
        (ties: the larger mean gain, then the smaller head, then the smaller beta); the strength
        is then chosen by :func:`choose_strength` on the lists at that pair. Sets ``head``,
        ``beta``, ``head_validation``, ``validation`` (beta -> metrics at the chosen head),
        ``anchor_validation``, ``strength`` and ``coverage_validation``."""
        n = is_val.size
        keep = is_val[rows]
        r, c = rows[keep], cols[keep]
        log_model = _row_log_ranks(r, c, oof[keep])
        log_anchor = _row_log_ranks(r, c, anchor[keep])
        val = np.flatnonzero(is_val)
        top = max(max(self.heads), 1)
        depth = COVERAGE_DEPTH + top
        anchor_ids = _top_k_directed(r, c, anchor[keep], n, top)[0]
        fused_lists: dict[float, tuple[np.ndarray, np.ndarray]] = {}
        scores: dict[tuple[int, float], tuple[float, float, float]] = {}
        for beta in BETAS:
            # the arithmetic of fuse_ranks (same rounding, so the same ties as at scoring time)
            fused = 1.0 / (1.0 + (beta * log_model + (1.0 - beta) * log_anchor))
            fused_lists[beta] = _top_k_directed(r, c, fused, n, depth)
            for head in self.heads:
                ids, vals = _head_lists(*fused_lists[beta], anchor_ids, head, 0.0, COVERAGE_DEPTH)
                scores[(head, beta)] = _slice(Recommendations(ids, vals, (), ()), target, val)
        a_ids, a_vals = _head_lists(*fused_lists[0.0], anchor_ids, 0, 0.0, COVERAGE_DEPTH)
        anchor_scores = _slice(Recommendations(a_ids, a_vals, (), ()), target, val)
        base = np.asarray(anchor_scores)

        def key(hb: tuple[int, float]) -> tuple[float, float, int, float]:
            gain = np.asarray(scores[hb]) - base
            return (float(gain.min()), float(gain.mean()), -hb[0], -hb[1])

        self.head, self.beta = max(scores, key=key)
        self.head_validation = scores
        self.validation = {beta: scores[(self.head, beta)] for beta in BETAS}
        self.anchor_validation = (*anchor_scores, _catalogue(a_ids, n))
        if not self.coverage_rerank:
            return
        cov: dict[float, tuple[float, float, float, float]] = {}
        for strength in STRENGTHS:
            ids, vals = _head_lists(
                *fused_lists[self.beta], anchor_ids, self.head, strength, COVERAGE_DEPTH
            )
            m = _slice(Recommendations(ids, vals, (), ()), target, val)
            cov[strength] = (*m, _catalogue(ids, n))
        self.coverage_validation = cov
        self.strength = choose_strength(cov, self.anchor_validation)

    def pair_scores(self, features: PairFeatures) -> np.ndarray:
        """Predicted probability per pool pair, ``(p,) float64`` in (0, 1).

        Raises:
            InputError: not fitted, or features with other columns than the training ones.
        """
        if self._model is None:
            raise InputError("the ranker is not fitted")
        if features.names != self.families:
            raise InputError(f"features {features.names} differ from training {self.families}")
        if features.x.shape[0] == 0:
            return np.zeros(0, dtype=np.float64)
        proba = self._model.predict_proba(features.x)  # type: ignore[attr-defined]
        out: np.ndarray = np.asarray(proba[:, 1], dtype=np.float64)
        return out

    def recommend(
        self,
        pool: sp.csr_matrix,
        signals: Sequence[Signal],
        gate: Gate,
        k: int,
        users: np.ndarray | None = None,
    ) -> Recommendations:
        """Gate the signals again, score every pool pair, and return each user's top k.

        A permitted signal of a family that was *refused* at training (and had no permitted
        member then) is an error: the policy must not differ between training and scoring. A
        permitted signal of a family that simply had no signal on the fitting graph (e.g. no
        pair of similar pictures there) has no model weight and is not read. A trained family
        missing now is a zero column.

        With ``users`` only the pool pairs touching one of them are scored and only their rows
        are filled (to bound run time when only their queries are evaluated); other users' rows
        are empty (``-1``). Scores: the fused score of the module docstring (the probability
        itself when there is no anchor and ``beta = 1``); with ``anchor_head``,
        ``1 / (1 + log position)`` of the final list (:func:`lock_anchor_head`).

        Returns:
            :class:`~provguard.recommend.rank.Recommendations` (``used``/``removed``/
            ``gate_results`` from this call's gating).

        Raises:
            InputError: k < 1, not fitted, or a signal of an unknown family.
        """
        if isinstance(k, bool) or k < 1:
            raise InputError(f"k must be an integer >= 1, got {k!r}")
        gated = gate_signals(signals, gate)
        refused_before = {family(name) for name in self.removed_at_training}
        scored: list[Signal] = []
        for s in gated.permitted:
            fam = family(s.name)
            if fam in self.families:
                scored.append(s)
            elif fam in refused_before and fam not in {family(x) for x in self.trained_on}:
                raise InputError(
                    f"signal '{s.name}' (family {fam}) was refused when the ranker was trained: "
                    "the policy differs between training and scoring"
                )
            # else: the family had no signal on the fitting graph (e.g. no pair of pictures
            # close enough there); the model has no weight for it, so it is not read
        if self.folds is not None or self.forward:
            return _gated_recommendations(*self._recommend_cross(pool, scored, k, users), gated)
        if users is not None:
            n_all = pool.shape[0]
            keep = np.zeros(n_all, dtype=np.float64)
            keep[np.asarray(users, dtype=np.int64)] = 1.0
            on = sp.diags(keep, format="csr")
            base = sp.csr_matrix(pool != 0, dtype=np.float64)
            pool = sp.csr_matrix((on @ base + base @ on) != 0)
        feats = pair_features(pool, scored, self.families)
        p = self.pair_scores(feats)
        rows, cols, model, anchor = _directed(feats, p, self._anchor_col(), users)
        model = self._ranking_values(rows, cols, model, anchor)
        if anchor is None and self.beta >= 1.0:
            # tiny floor keeps every pool pair a candidate (top_k_rows keeps values > 0 only)
            values = np.maximum(model, np.finfo(np.float64).tiny)
        else:
            values = fuse_ranks(rows, cols, model, anchor, self.beta if anchor is not None else 1.0)
        return _gated_recommendations(*_top_k_directed(rows, cols, values, feats.n, k), gated)

    def _recommend_cross(
        self, pool: sp.csr_matrix, scored: Sequence[Signal], k: int, users: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of the cross-fitted ranker: features on the whole pool (the directed rank
        features need every list), model scores of the entries of ``users`` (default all),
        fusion with the anchor at ``beta``, then the exposure penalty at ``strength``."""
        if self._model is None:
            raise InputError("the ranker is not fitted")
        feats = pair_features(pool, scored, self.families)
        rows, cols, design = self._directed_design(feats)
        if users is None:
            sel = np.arange(rows.size)
        else:
            keep = np.zeros(feats.n, dtype=bool)
            keep[np.asarray(users, dtype=np.int64)] = True
            sel = np.flatnonzero(keep[rows])
        p = np.zeros(sel.size, dtype=np.float64)
        if sel.size:
            p = self._score_directed(self._model, design(sel), rows[sel], cols[sel])
        r, c = rows[sel], cols[sel]
        ac = self._anchor_col()
        anchor = None if ac is None else np.concatenate([feats.x[:, ac], feats.x[:, ac]])[sel]
        values = fuse_ranks(r, c, p, anchor, self.beta if anchor is not None else 1.0)
        if self.anchor_head and anchor is not None:
            depth = max(k, COVERAGE_DEPTH) + self.head
            anchor_ids = _top_k_directed(r, c, anchor, feats.n, max(self.head, 1))[0]
            return _head_lists(
                *_top_k_directed(r, c, values, feats.n, depth),
                anchor_ids,
                self.head,
                self.strength,
                k,
            )
        depth = max(k, COVERAGE_DEPTH) if self.strength > 0.0 else k
        ids, vals = _top_k_directed(r, c, values, feats.n, depth)
        if self.strength > 0.0:
            ids, vals = exposure_rerank(ids, vals, strength=self.strength)
        return ids[:, :k].copy(), vals[:, :k].copy()


def choose_strength(
    validation: dict[float, tuple[float, float, float, float]],
    anchor: tuple[float, float, float, float],
    *,
    margin: float = COVERAGE_MARGIN,
) -> float:
    """The exposure-penalty strength chosen on validation (docs/recommendation.md, round 5).

    Gains are taken over the anchor heuristic on the same validation users. Feasible strengths
    keep the Recall@10 and MRR gains >= 0 (the ranker must not lose to the anchor on them;
    Hits@50 cannot change, the penalty reorders inside the top 50). Among the feasible ones: the
    smallest whose catalogue-coverage@10 gain reaches ``margin``; if none does, the one with
    the largest smallest gain in (Recall@10, MRR, catalogue coverage), ties to the smaller
    strength; if none is feasible, 0.

    Args:
        validation: strength -> ``(recall@10, mrr, hits@50, catalogue coverage@10)``.
        anchor: the anchor's ``(recall@10, mrr, hits@50, catalogue coverage@10)``.
        margin: required catalogue-coverage gain.

    Returns:
        The chosen strength (a key of ``validation``, or 0.0 when it is empty).
    """
    feasible = []
    for strength in sorted(validation):
        r, m, _h, cov = validation[strength]
        gains = (r - anchor[0], m - anchor[1], cov - anchor[3])
        if gains[0] >= 0.0 and gains[1] >= 0.0:
            feasible.append((strength, gains))
    for strength, gains in feasible:
        if gains[2] >= margin:
            return strength
    if not feasible:
        return 0.0
    return max(feasible, key=lambda sg: (min(sg[1]), -sg[0]))[0]

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

BETAS: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
"""Candidate weights of the model's rank in the anchored rank fusion (module docstring)."""


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
        model: ``"hgb"`` or ``"logistic"``.
        negatives_per_positive: negatives sampled per positive training pair (>= 1).
        seed: seed of the negative sampling, the validation sample and the model.
        max_iter: boosting iterations (hgb) or solver iterations (logistic).
        anchor: family of the anchor heuristic (default ``"resource_allocation"``); None: no
            fusion (``beta = 1``, the classifier's ranking alone, the behaviour before the
            fusion was added).
        validation_users: users sampled for choosing ``beta`` (>= 1).

    Attributes set by :meth:`fit`: ``beta`` (chosen weight), ``validation`` (``beta`` ->
    ``(recall@10, mrr@50, hits@50)`` on the validation users; empty without an anchor).
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
    ) -> None:
        if model not in ("hgb", "logistic", "lgbm"):
            raise InputError(f"model must be 'hgb', 'logistic' or 'lgbm', got {model!r}")
        if rerank_top is not None and (isinstance(rerank_top, bool) or rerank_top < 1):
            raise InputError(f"rerank_top must be None or >= 1, got {rerank_top!r}")
        self.rerank_top = rerank_top
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

    def _new_model(self) -> object:
        if self.model_kind == "lgbm":
            import lightgbm as lgb

            return lgb.LGBMClassifier(
                n_estimators=self.max_iter,
                learning_rate=0.05,
                num_leaves=31,
                min_child_samples=50,
                subsample=0.8,
                subsample_freq=1,
                colsample_bytree=0.8,
                random_state=self.seed,
                n_jobs=2,
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
    ) -> LearnedRanker:
        """Gate the signals, then train on the pool pairs of the fitting graph.

        Args:
            pool: ``(n, n)`` candidate mask of the fitting graph.
            signals: signals computed on the fitting graph.
            gate: the policy gate; refused signals are dropped before any feature is read.
            positives: ``(src, dst)`` the pairs that became friends (labels 1); other pool pairs
                are labels 0.

        Returns:
            ``self``.

        Raises:
            InputError: no permitted signal, no positive pair in the pool, or bad inputs.
        """
        gated = gate_signals(signals, gate)
        if not gated.permitted:
            raise InputError("every signal was refused: nothing to train on")
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
        itself when there is no anchor and ``beta = 1``).

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
        ids, vals = _top_k_directed(rows, cols, values, feats.n, k)
        return Recommendations(
            ids,
            vals,
            tuple(s.name for s in gated.permitted),
            gated.removed,
            gated.results,
            gated.origins,
        )

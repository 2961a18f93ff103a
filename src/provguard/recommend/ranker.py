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

Models (scikit-learn): ``"hgb"`` = ``HistGradientBoostingClassifier`` (default), ``"logistic"``
= ``StandardScaler`` on ``log1p`` features + ``LogisticRegression``. Training rows: every
positive pair of the pool plus ``negatives_per_positive`` random negatives per positive (seeded);
a pair's score is the predicted probability of being a positive.
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
ModelKind = Literal["hgb", "logistic"]


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


class LearnedRanker:
    """Pairwise classifier over gated signal families (module docstring).

    Args:
        model: ``"hgb"`` or ``"logistic"``.
        negatives_per_positive: negatives sampled per positive training pair (>= 1).
        seed: seed of the negative sampling and of the model.
        max_iter: boosting iterations (hgb) or solver iterations (logistic).
    """

    def __init__(
        self,
        model: ModelKind = "hgb",
        *,
        negatives_per_positive: int = 20,
        seed: int = 7,
        max_iter: int = 200,
    ) -> None:
        if model not in ("hgb", "logistic"):
            raise InputError(f"model must be 'hgb' or 'logistic', got {model!r}")
        if negatives_per_positive < 1:
            raise InputError("negatives_per_positive must be >= 1")
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
        n_neg = min(neg_idx.size, self.negatives_per_positive * pos_idx.size)
        take = np.sort(np.concatenate([pos_idx, rng.choice(neg_idx, n_neg, replace=False)]))
        sample = sp.csr_matrix(
            (np.ones(take.size), (rows[take], cols[take])), shape=(n, n), dtype=np.float64
        )
        feats = pair_features(sample, gated.permitted)
        y = _labels(feats, positives)
        model = self._new_model()
        model.fit(feats.x, y)  # type: ignore[attr-defined]
        self._model = model
        self.families = feats.names
        self.trained_on = tuple(s.name for s in gated.permitted)
        self.removed_at_training = gated.removed
        self.training_pairs = int(take.size)
        self.training_positives = int(pos_idx.size)
        return self

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

        Signals whose family the model was not trained on are an error (the policy must not
        differ between training and scoring); a permitted family missing now is a zero column.

        With ``users`` only the pool pairs touching one of them are scored (to bound run time
        when only their queries are evaluated); other users' rows hold only pairs shared with
        those users.

        Returns:
            :class:`~provguard.recommend.rank.Recommendations` (``used``/``removed``/
            ``gate_results`` from this call's gating).

        Raises:
            InputError: k < 1, not fitted, or a signal of an unknown family.
        """
        if isinstance(k, bool) or k < 1:
            raise InputError(f"k must be an integer >= 1, got {k!r}")
        gated = gate_signals(signals, gate)
        if users is not None:
            n_all = pool.shape[0]
            keep = np.zeros(n_all, dtype=np.float64)
            keep[np.asarray(users, dtype=np.int64)] = 1.0
            on = sp.diags(keep, format="csr")
            base = sp.csr_matrix(pool != 0, dtype=np.float64)
            pool = sp.csr_matrix((on @ base + base @ on) != 0)
        feats = pair_features(pool, gated.permitted, self.families)
        p = self.pair_scores(feats)
        n = feats.n
        # tiny floor keeps every pool pair a candidate (top_k_rows keeps values > 0 only)
        p = np.maximum(p, np.finfo(np.float64).tiny)
        full = sp.csr_matrix(
            (
                np.concatenate([p, p]),
                (
                    np.concatenate([feats.rows, feats.cols]),
                    np.concatenate([feats.cols, feats.rows]),
                ),
            ),
            shape=(n, n),
        )
        ids, vals = top_k_rows(full, k)
        return Recommendations(
            ids,
            vals,
            tuple(s.name for s in gated.permitted),
            gated.removed,
            gated.results,
            gated.origins,
        )

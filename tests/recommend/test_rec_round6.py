"""Issue 7, round 6: the earlier graph of a split and the forward-validated ranker
(``"lgbm-fwd"``).

The forward validation is checked against an in-process reference built from public pieces:
a forward ranker fitted on the *earlier* graph alone (no validation) and scored on the fitting
graph with :func:`slice_metrics` / :func:`catalogue_coverage` must give exactly the validation
numbers the ranker used to choose ``beta`` and the exposure strength. Real data: an
ego-Facebook subgraph and CollegeMsg."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import scipy.sparse as sp

from provguard.adapters.graph_files import read_edge_list, undirected_simple_edges
from provguard.errors import InputError
from provguard.recommend.protocol import (
    Profiles,
    catalogue_coverage,
    cost_of_compliance,
    earlier_view,
    random_edge_split,
    slice_metrics,
    split_views,
    time_split,
)
from provguard.recommend.rank import GateResult, allow_all
from provguard.recommend.ranker import BETAS, STRENGTHS, LearnedRanker, choose_strength
from provguard.recommend.signals import Signal

ROOT = Path(__file__).resolve().parents[2]
AT = datetime(2019, 6, 30, tzinfo=UTC)


class Untouchable:
    def __getattribute__(self, name: str) -> Any:
        raise AssertionError(f"refused signal's scores were read ({name})")


def _keys(edges: tuple[np.ndarray, np.ndarray], n: int) -> set[int]:
    s, d = (np.asarray(x, dtype=np.int64) for x in edges)
    return set((np.minimum(s, d) * n + np.maximum(s, d)).tolist())


def test_random_split_earlier_graph_repeats_the_fitting_step() -> None:
    el = read_edge_list(ROOT / "data/graphs/snap-ego-facebook.txt")
    s, d = undirected_simple_edges(el)
    n = int(el.nodes.max()) + 1
    split = random_edge_split(s, d, n, seed=0)
    assert split.earlier is not None and split.earlier_positives is not None
    fit, early, early_pos = (
        _keys(x, n) for x in (split.fit, split.earlier, split.earlier_positives)
    )
    # earlier + its positives = the fitting graph, disjoint; the same share of ALL edges is
    # removed at each step (10 % of 88,234), so earlier : fit ~ fit : train
    assert early | early_pos == fit and not early & early_pos
    total = s.size
    for step in (len(_keys(split.test, n)), len(_keys(split.fit_positives, n)), len(early_pos)):
        assert abs(step - 0.1 * total) <= 2
    # every user of the fitting graph keeps an edge in the earlier graph (holdout_split's rule)
    deg_fit = np.bincount(np.concatenate(split.fit), minlength=n)
    deg_early = np.bincount(np.concatenate(split.earlier), minlength=n)
    assert ((deg_fit > 0) <= (deg_early > 0)).all()
    # the earlier step is new: the split's other parts are unchanged by it
    again = random_edge_split(s, d, n, seed=0)
    assert _keys(again.fit, n) == fit and _keys(again.test, n) == _keys(split.test, n)
    # no room for a third step of 40 %
    assert random_edge_split(s, d, n, fraction=0.4, seed=0).earlier is None


def test_time_split_earlier_window() -> None:
    el = read_edge_list(ROOT / "data/graphs/snap-collegemsg.txt")
    assert el.time is not None
    n = int(el.nodes.max()) + 1
    split = time_split(el.src, el.dst, el.time, n)
    assert split.earlier is not None and split.earlier_positives is not None
    t_e = int(np.quantile(el.time, 0.4, method="lower"))
    assert split.earlier_before == t_e
    # brute force over the messages: first contact time of every pair
    first: dict[tuple[int, int], int] = {}
    for u, v, t in zip(el.src.tolist(), el.dst.tolist(), el.time.tolist(), strict=True):
        if u != v:
            key = (min(u, v), max(u, v))
            first[key] = min(first.get(key, t), t)
    before = {k for k, t in first.items() if t < t_e}
    assert _keys(split.earlier, n) == {a * n + b for a, b in before}
    known = {x for k in before for x in k}
    want = {
        a * n + b
        for (a, b), t in first.items()
        if t_e <= t < split.fit_before and a in known and b in known  # type: ignore[operator]
    }
    assert _keys(split.earlier_positives, n) == want and len(want) > 500
    assert time_split(el.src, el.dst, el.time, n, fit_quantile=0.3).earlier is None


@pytest.fixture(scope="module")
def ego_fwd() -> Any:
    el = read_edge_list(ROOT / "data/graphs/snap-ego-facebook.txt")
    s, d = undirected_simple_edges(el)
    keep = (s < 400) & (d < 400)
    split = random_edge_split(s[keep], d[keep], 400, seed=3, name="ego-sub")
    prof = Profiles.empty(400)
    train, fit = split_views(split, prof, global_features=True, seed=3)
    early = earlier_view(split, prof, global_features=True, seed=3)
    assert early is not None and split.earlier_positives is not None
    step = (early.pool, early.signals, split.earlier_positives)
    model = LearnedRanker(
        "lgbm", seed=3, directed=True, forward=True, coverage_rerank=True, max_iter=30
    ).fit(fit.pool, fit.signals, allow_all, split.fit_positives, earlier=step)
    return split, train, fit, early, model


def test_forward_ranker_is_deterministic_and_follows_its_rules(ego_fwd: Any) -> None:
    split, train, fit, early, model = ego_fwd
    assert set(model.validation) == set(BETAS) and set(model.coverage_validation) == set(STRENGTHS)
    again = LearnedRanker(
        "lgbm", seed=3, directed=True, forward=True, coverage_rerank=True, max_iter=30
    ).fit(
        fit.pool,
        fit.signals,
        allow_all,
        split.fit_positives,
        earlier=(early.pool, early.signals, split.earlier_positives),
    )
    assert (again.beta, again.strength) == (model.beta, model.strength)
    assert again.validation == model.validation
    assert again.coverage_validation == model.coverage_validation
    a = model.recommend(train.pool, train.signals, allow_all, 50)
    b = again.recommend(train.pool, train.signals, allow_all, 50)
    np.testing.assert_array_equal(a.candidates, b.candidates)
    np.testing.assert_array_equal(a.scores, b.scores)
    # the max-min rule over the validation gains, and the strength rule of round 5
    base = np.asarray(model.validation[0.0])
    best = (np.asarray(model.validation[model.beta]) - base).min()
    assert best >= 0.0
    assert all((np.asarray(v) - base).min() <= best for v in model.validation.values())
    assert model.strength == choose_strength(model.coverage_validation, model.anchor_validation)


@pytest.mark.parametrize("objective", ["binary", "ensemble"])
def test_forward_validation_equals_the_in_process_reference(ego_fwd: Any, objective: str) -> None:
    split, _train, fit, early, model = ego_fwd
    if objective != "binary":
        model = LearnedRanker(
            "lgbm",
            seed=3,
            directed=True,
            forward=True,
            coverage_rerank=True,
            max_iter=30,
            objective=objective,  # type: ignore[arg-type]
        ).fit(
            fit.pool,
            fit.signals,
            allow_all,
            split.fit_positives,
            earlier=(early.pool, early.signals, split.earlier_positives),
        )
    # reference: the same kind of model trained on the earlier graph alone, scored on the
    # fitting graph's lists of every user with a fitting positive, measured by the protocol
    ref = LearnedRanker(
        "lgbm",
        seed=3,
        directed=True,
        forward=True,
        max_iter=30,
        objective=objective,  # type: ignore[arg-type]
    ).fit(early.pool, early.signals, allow_all, split.earlier_positives)
    assert ref.validation == {} and ref.beta == 1.0  # no earlier graph given: no validation
    val = np.unique(np.concatenate(split.fit_positives))
    for beta in BETAS:
        ref.beta = beta
        recs = ref.recommend(fit.pool, fit.signals, allow_all, 50, users=val)
        m = slice_metrics(recs, split.fit_positives, users=val)
        assert (m.recall_at_k, m.mrr, m.hits) == pytest.approx(model.validation[beta], abs=1e-12)
    ref.beta = model.beta
    for strength in STRENGTHS:
        ref.strength = strength
        recs = ref.recommend(fit.pool, fit.signals, allow_all, 50, users=val)
        m = slice_metrics(recs, split.fit_positives, users=val)
        got = (m.recall_at_k, m.mrr, m.hits, catalogue_coverage(recs, 10))
        assert got == pytest.approx(model.coverage_validation[strength], abs=1e-12)
    if objective == "ensemble":
        # the ensemble's model ranking: the sum of the two models' per-user log-ranks
        both = [
            LearnedRanker(
                "lgbm",
                seed=3,
                directed=True,
                forward=True,
                max_iter=30,
                objective=o,  # type: ignore[arg-type]
            ).fit(early.pool, early.signals, allow_all, split.earlier_positives)
            for o in ("binary", "lambdarank")
        ]
        users = val[:40]
        lists = []
        for r in (*both, ref):
            r.beta, r.strength = 1.0, 0.0
            lists.append(r.recommend(fit.pool, fit.signals, allow_all, 200, users=users))
        for u in users.tolist():
            cand = lists[2].candidates[u][lists[2].candidates[u] >= 0]
            rank = [
                {int(c): i + 1 for i, c in enumerate(x.candidates[u]) if c >= 0} for x in lists[:2]
            ]
            # the ensemble list is ordered by the summed log-ranks (ties by candidate id)
            cost = [
                np.log(rank[0].get(int(c), 10**6)) + np.log(rank[1].get(int(c), 10**6))
                for c in cand
            ]
            head = min(cand.size, 20)  # deeper entries may lie outside the two top-200 lists
            assert (
                list(cand[:head])
                == [c for _, c in sorted(zip(cost, cand.tolist(), strict=True))][:head]
            )


def test_forward_ranker_gates_the_earlier_graph_and_bad_input(ego_fwd: Any) -> None:
    split, train, fit, early, _model = ego_fwd
    poisoned = Signal(
        "provider_contacts[wechat]",
        "user.social.friend_list",
        frozenset({"wechat"}),
        1.0,
        cast(sp.csr_matrix, Untouchable()),
    )
    asked: list[str] = []

    def gate(sig: Signal) -> GateResult:
        asked.append(sig.name)
        return GateResult("wechat" not in sig.origins, "test")

    model = LearnedRanker("logistic", directed=True, forward=True, coverage_rerank=True)
    model.fit(
        fit.pool,
        [*fit.signals, poisoned],
        gate,
        split.fit_positives,
        earlier=(early.pool, [*early.signals, poisoned], split.earlier_positives),
    )
    # asked for the fitting graph's signals and again for the earlier graph's
    assert asked.count("provider_contacts[wechat]") == 2
    assert model.removed_at_training == ("provider_contacts[wechat]",) and model.validation
    recs = model.recommend(train.pool, [*train.signals, poisoned], gate, 10)
    assert recs.removed == ("provider_contacts[wechat]",)
    for bad in (
        {"forward": True, "rerank_top": 10},
        {"forward": True, "folds": 2},
        {"forward": True, "objective": "xendcg"},
        {"directed": True, "folds": 2, "objective": "lambdarank"},
    ):
        with pytest.raises(InputError):
            LearnedRanker("lgbm", **bad)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="objective"):
        LearnedRanker("logistic", forward=True, objective="ensemble")
    with pytest.raises(InputError, match="earlier pool"):
        LearnedRanker("logistic", directed=True, forward=True).fit(
            fit.pool,
            fit.signals,
            allow_all,
            split.fit_positives,
            earlier=(sp.csr_matrix((3, 3)), early.signals, split.earlier_positives),
        )


def test_cost_of_compliance_with_lgbm_fwd(ego_fwd: Any) -> None:
    split, train, fit, early, forward = ego_fwd
    models: dict[str, LearnedRanker] = {}
    kept: dict[tuple[str, str], Any] = {}
    rows = cost_of_compliance(
        split,
        Profiles.empty(split.n),
        {"none": None},
        at=AT,
        ranker="lgbm-fwd-ens",
        seed=3,
        keep_models=models,
        keep_recs=kept,
        views=(train, fit),
        earlier=early,
        heuristics=("resource_allocation",),
    )
    model = models["none"]
    assert model.forward and model.folds is None and model.directed and model.coverage_rerank
    assert model.objective == "ensemble"
    assert {"cn_links", "ppr"} <= set(model.families)
    # the earlier view was used: the validation is the fixture's (same data, same seed) except
    # for the number of boosting rounds
    assert set(model.validation) == set(BETAS)
    assert model.validation[0.0] == forward.validation[0.0]
    by = {(r.method, r.slice): r for r in rows}
    m = slice_metrics(kept[("none", "learned_ranker")], split.test)
    assert by[("learned_ranker", "all")].recall_at_10 == m.recall_at_k
    assert by[("learned_ranker", "all")].mrr == m.mrr

"""Issue 7, round 8: ``"lgbm-fwd-head1"``, the head lock with head 0 left out of the grid.

Differential: on a real ego-Facebook subgraph, the ``heads=HEADS_LOCKED`` ranker's validation
table equals round 7's full-grid table restricted to heads >= 1 (same data, seed and models), and
its ``(head, beta)`` is the max-min choice over that restricted table against RA's own lists;
its lists start with RA's first candidate for every user; ``cost_of_compliance`` wires the name
to that ranker."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from provguard.adapters.graph_files import read_edge_list, undirected_simple_edges
from provguard.errors import InputError
from provguard.recommend.heuristics import resource_allocation
from provguard.recommend.protocol import (
    RANKERS,
    Profiles,
    cost_of_compliance,
    earlier_view,
    random_edge_split,
    slice_metrics,
    split_views,
)
from provguard.recommend.rank import allow_all, recommend
from provguard.recommend.ranker import (
    BETAS,
    HEADS,
    HEADS_LOCKED,
    STRENGTHS,
    LearnedRanker,
    choose_strength,
)

ROOT = Path(__file__).resolve().parents[2]


def _ranker(heads: tuple[int, ...]) -> LearnedRanker:
    return LearnedRanker(
        "lgbm",
        seed=3,
        directed=True,
        forward=True,
        coverage_rerank=True,
        max_iter=30,
        objective="ensemble",
        anchor_head=True,
        heads=heads,
    )


@pytest.fixture(scope="module")
def ego_pair() -> Any:
    el = read_edge_list(ROOT / "data/graphs/snap-ego-facebook.txt")
    s, d = undirected_simple_edges(el)
    keep = (s < 400) & (d < 400)
    split = random_edge_split(s[keep], d[keep], 400, seed=3, name="ego-sub")
    prof = Profiles.empty(400)
    train, fit = split_views(split, prof, global_features=True, seed=3)
    early = earlier_view(split, prof, global_features=True, seed=3)
    assert early is not None and split.earlier_positives is not None
    step = (early.pool, early.signals, split.earlier_positives)
    full = _ranker(HEADS).fit(fit.pool, fit.signals, allow_all, split.fit_positives, earlier=step)
    locked = _ranker(HEADS_LOCKED).fit(
        fit.pool, fit.signals, allow_all, split.fit_positives, earlier=step
    )
    return split, train, fit, early, full, locked


def test_grid_is_round_seven_without_head_zero() -> None:
    assert HEADS_LOCKED == (1, 2, 3, 5)
    assert set(HEADS_LOCKED) == set(HEADS) - {0}
    assert _ranker(HEADS_LOCKED).head == 1  # before fitting: the smallest head of the grid
    assert _ranker(HEADS).head == 0
    assert _ranker((5, 2)).heads == (2, 5)


def test_locked_choice_is_max_min_over_heads_at_least_one(ego_pair: Any) -> None:
    _split, _train, _fit, _early, full, locked = ego_pair
    table = locked.head_validation
    assert set(table) == {(h, b) for h in HEADS_LOCKED for b in BETAS}
    # differential: the same (head, beta) rows as round 7's full grid, to the last bit
    for hb, v in table.items():
        assert v == full.head_validation[hb]
    # the baseline is RA's own lists, as in round 7, though head 0 is not in the grid
    assert locked.anchor_validation == full.anchor_validation
    base = np.asarray(locked.anchor_validation[:3])

    def key(hb: tuple[int, float]) -> tuple[float, float, int, float]:
        gain = np.asarray(table[hb]) - base
        return (float(gain.min()), float(gain.mean()), -hb[0], -hb[1])

    want = max(sorted(table), key=key)
    assert (locked.head, locked.beta) == want
    assert locked.head >= 1
    # beta 0 under any head is RA's list, so the smallest gain of the choice is never below 0
    assert (np.asarray(table[want]) - base).min() >= 0.0
    assert locked.validation == {b: table[(locked.head, b)] for b in BETAS}
    assert set(locked.coverage_validation) == set(STRENGTHS)
    assert locked.strength == choose_strength(locked.coverage_validation, locked.anchor_validation)
    # the full grid's choice may be head 0; if it is not, both rules agree
    if full.head >= 1:
        assert (full.head, full.beta) == (locked.head, locked.beta)


def test_locked_lists_start_with_ra_first_candidate(ego_pair: Any) -> None:
    _split, train, _fit, _early, _full, locked = ego_pair
    ra = recommend(train.adj, [resource_allocation(train.adj)], allow_all, 50)
    recs = locked.recommend(train.pool, train.signals, allow_all, 50)
    has = ra.candidates[:, 0] >= 0
    assert has.sum() > 300
    np.testing.assert_array_equal(recs.candidates[has, 0], ra.candidates[has, 0])
    head = locked.head
    np.testing.assert_array_equal(recs.candidates[has, :head], ra.candidates[has, :head])
    # the lists hold no duplicate candidate
    for row in recs.candidates[has]:
        got = row[row >= 0]
        assert got.size == np.unique(got).size


def test_without_an_earlier_graph_the_head_is_one(ego_pair: Any) -> None:
    split, train, fit, _early, _full, _locked = ego_pair
    model = _ranker(HEADS_LOCKED).fit(fit.pool, fit.signals, allow_all, split.fit_positives)
    assert model.head == 1 and model.head_validation == {}
    ra = recommend(train.adj, [resource_allocation(train.adj)], allow_all, 1)
    recs = model.recommend(train.pool, train.signals, allow_all, 10)
    has = ra.candidates[:, 0] >= 0
    np.testing.assert_array_equal(recs.candidates[has, 0], ra.candidates[has, 0])


@pytest.mark.parametrize("bad", [(), (0, 0), (-1, 2), (True, 2), (1.0, 2)])
def test_bad_heads_are_refused(bad: Any) -> None:
    with pytest.raises(InputError, match="heads"):
        LearnedRanker("lgbm", directed=True, forward=True, anchor_head=True, heads=bad)


def test_cost_of_compliance_runs_head1(ego_pair: Any) -> None:
    split, train, fit, early, _full, _locked = ego_pair
    assert "lgbm-fwd-head1" in RANKERS and "lgbm-fwd-head" in RANKERS
    models: dict[str, LearnedRanker] = {}
    kept: dict[tuple[str, str], Any] = {}
    rows = cost_of_compliance(
        split,
        Profiles.empty(split.n),
        {"none": None},
        at=datetime(2019, 6, 30, tzinfo=UTC),
        ranker="lgbm-fwd-head1",
        seed=3,
        negatives_per_positive=2,  # a small sample: this checks the wiring, not the model
        keep_models=models,
        keep_recs=kept,
        views=(train, fit),
        earlier=early,
        heuristics=("resource_allocation",),
    )
    got = models["none"]
    assert got.anchor_head and got.objective == "ensemble" and got.forward
    assert got.heads == HEADS_LOCKED and got.head >= 1
    assert {h for h, _ in got.head_validation} == set(HEADS_LOCKED)
    lists = kept[("none", "learned_ranker")].candidates
    ra = kept[("none", "resource_allocation")].candidates
    assert (lists[:, : got.head] == ra[:, : got.head]).all()
    by = {(r.method, r.slice): r for r in rows}
    m = slice_metrics(kept[("none", "learned_ranker")], split.test)
    assert by[("learned_ranker", "all")].mrr == m.mrr

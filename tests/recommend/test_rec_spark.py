"""Spark scale-out gives the same top-k as the in-process scipy version (real graphs).

One session for the whole test run (``spark`` fixture in conftest.py), marked ``spark``; skipped
with the reason when Java or pyspark is missing. Induced subgraphs of both real graphs keep the
Spark jobs small; the full graphs run in bench/bench_recommend.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from provguard.adapters.graph_files import read_edge_list, undirected_simple_edges
from provguard.adapters.spark_session import spark_unavailable_reason
from provguard.recommend.compare import top_k_agreement
from provguard.recommend.graph import adjacency
from provguard.recommend.heuristics import adamic_adar, resource_allocation
from provguard.recommend.rank import top_k_rows

ROOT = Path(__file__).resolve().parents[2]
REASON = spark_unavailable_reason()
pytestmark = [
    pytest.mark.spark,
    pytest.mark.skipif(REASON is not None, reason=f"Spark unavailable: {REASON}"),
]


def test_same_top_k_on_both_graphs(spark: Any) -> None:
    from provguard.adapters.spark_session import spark_top_k

    # CollegeMsg: the subgraph induced by users 0..599 (message pairs, undirected)
    el = read_edge_list(ROOT / "data" / "graphs" / "snap-collegemsg.txt")
    s, d = undirected_simple_edges(el)
    keep = (s < 600) & (d < 600)
    s, d = s[keep], d[keep]
    ids, sc = spark_top_k(spark, s, d, 600, method="resource_allocation", k=10)
    want = top_k_rows(resource_allocation(adjacency(s, d, 600)).scores, 10)
    agree = top_k_agreement(want[0], want[1], ids, sc)
    assert s.size > 3000 and agree.agree, agree.bad_rows[:5]
    assert agree.exact_rows > 0.95 * 600 and agree.max_abs_score_diff < 1e-12

    # ego-Facebook: the subgraph induced by nodes 0..399 (the full graph is in the bench)
    eg = read_edge_list(ROOT / "data" / "graphs" / "snap-ego-facebook.txt")
    es, ed = undirected_simple_edges(eg)
    keep = (es < 400) & (ed < 400)
    es, ed = es[keep], ed[keep]
    ids, sc = spark_top_k(spark, es, ed, 400, method="adamic_adar", k=20)
    want = top_k_rows(adamic_adar(adjacency(es, ed, 400)).scores, 20)
    agree = top_k_agreement(want[0], want[1], ids, sc)
    assert agree.agree, agree.bad_rows[:5]
    assert (ids >= 0).sum() == (want[0] >= 0).sum()


def test_bad_input_and_empty_graph(spark: Any) -> None:
    from provguard.adapters.spark_session import spark_top_k
    from provguard.errors import InputError

    e = np.array([], dtype=np.int64)
    ids, sc = spark_top_k(spark, e, e, 3, method="common_neighbours", k=2)
    assert (ids == -1).all() and (sc == 0).all()
    # self loops only: nothing to recommend
    ids, _ = spark_top_k(spark, np.array([1]), np.array([1]), 3, method="common_neighbours", k=2)
    assert (ids == -1).all()
    with pytest.raises(InputError):
        spark_top_k(spark, np.array([0]), np.array([5]), 3, method="common_neighbours", k=2)
    with pytest.raises(InputError):
        spark_top_k(spark, e, e, 3, method="jaccard", k=2)  # type: ignore[arg-type]

"""Spark SQL places the row-rule, row-label and controller filters on the scans of ``EXISTS`` /
``IN`` / scalar subqueries and of their label copies as DuckDB does: over a dataset holding rows
those filters drop, Spark's answer equals DuckDB's answer over the dataset without them, cell by
cell, values and labels. Cases of ``tests/dataplane/test_dataplane_subquery_filters.py``
(PostgreSQL runs them all): one per placement of the filter in the label copy (the scope's
``WHERE``, a ``LEFT JOIN``'s ``ON``, a filtered derived table under a ``RIGHT JOIN``) for the row
rule, and a scalar count for the row label (Spark takes about a second a query on 2 cores)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from provguard.sqlgen import QueryPolicy, rewrite

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dataplane.test_dataplane_subquery_filters import duck_answer, engine_cases, engine_rows

#: variant -> the shapes run on Spark
CASES = {
    "row_rule": ("exists_decides", "count_left_join", "in_right_join", "not_exists_join"),
    "row_label": ("scalar_count",),
}


def test_spark_reads_the_same_rows(qpolicy: QueryPolicy, spark: Any) -> None:
    registered: str | None = None
    checked = 0
    for variant, sql, schema, full, alone in engine_cases(CASES):
        if registered != variant:
            for name, table in full.items():
                spark.register(name, table)
            registered = variant
        r = rewrite(sql, schema, qpolicy, dialect="spark")
        got = engine_rows(spark.query(r.query_sql, list(r.label_columns)))
        assert got == duck_answer(sql, alone, schema, qpolicy), (variant, sql)
        checked += len(got)
    assert checked > 20

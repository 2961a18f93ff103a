"""Aggregate labels: ``BIT_OR`` over the group of the row labels, 0 for an empty input.

With plain ``GROUP BY`` keys every group has a row, so the rewrite folds constant labels out of
the aggregate (a literal instead of ``BIT_OR`` of a constant over every row); the grand-total
groups of ``ROLLUP`` / ``GROUP BY ()`` and global aggregates may be empty and keep
``COALESCE(BIT_OR(...), 0)``. Checked against a Python oracle on random labelled tables,
including labels 0 / NULL (read as ``unknown``) and empty inputs."""

from __future__ import annotations

from collections import defaultdict

import duckdb
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from provguard.sqlgen import default_schema, rewrite

from .conftest import LABELS, REG, make_profiles

FIRST = REG.mask(["douyin", "duoshan"])
UNKNOWN = REG.mask(["unknown"])

_rows = st.lists(
    st.tuples(
        st.integers(0, 30),
        st.sampled_from(["douyin", "duoshan"]),
        st.one_of(st.none(), st.integers(0, 7)),
        st.sampled_from(LABELS),
        st.one_of(st.none(), st.integers(0, 5)),
        st.sampled_from(LABELS),
    ),
    max_size=25,
)


def _leaf(label: int | None) -> int:
    return label or UNKNOWN


def _run(sql: str, table: pa.Table) -> list[tuple[object, ...]]:
    con = duckdb.connect()
    con.register("profiles", table)
    return con.sql(rewrite(sql, default_schema()).sql).fetchall()


@settings(max_examples=25, deadline=None)
@given(rows=_rows, cut=st.integers(-1, 31))
def test_grouped_labels_match_oracle(
    rows: list[tuple[int, str, int | None, int, int | None, int]], cut: int
) -> None:
    table = make_profiles(rows)
    kept = [r for r in rows if r[0] < cut]
    groups: dict[str, int] = defaultdict(int)
    for _, app, _, hl, _, _ in kept:
        groups[app] |= _leaf(hl) | FIRST
    got = _run(
        "SELECT app_id, count(*) AS n, max(handle) AS h FROM profiles"
        f" WHERE subject_id < {cut} GROUP BY app_id",
        table,
    )
    assert {row[0]: row[3:] for row in got} == {
        app: (FIRST, FIRST, label) for app, label in groups.items()
    }


@settings(max_examples=25, deadline=None)
@given(rows=_rows, cut=st.integers(-1, 31))
def test_global_and_rollup_labels_are_zero_on_empty_input(
    rows: list[tuple[int, str, int | None, int, int | None, int]], cut: int
) -> None:
    table = make_profiles(rows)
    kept = [r for r in rows if r[0] < cut]
    handles = 0
    for r in kept:
        handles |= _leaf(r[3]) | FIRST
    total = FIRST if kept else 0
    got = _run(
        f"SELECT count(*) AS n, max(handle) AS h FROM profiles WHERE subject_id < {cut}", table
    )
    assert got == [(len(kept), got[0][1], total, handles)]
    # ROLLUP's grand total exists even for an empty input: its labels stay 0 there
    rolled = _run(
        "SELECT app_id, count(*) AS n FROM profiles"
        f" WHERE subject_id < {cut} GROUP BY ROLLUP (app_id)",
        table,
    )
    grand = [row for row in rolled if row[0] is None]
    assert grand == [(None, len(kept), total, total)]

"""Differential: the PDP's per-row decision (a Python oracle calling ``decide`` per cell), the
DuckDB result and the Spark result agree cell by cell, masked values and labels included."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Any

import duckdb
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provguard.sqlgen import PLACEHOLDER, QueryPolicy, default_schema, rewrite

from .conftest import HANDLES, LABELS, make_profiles

FIRST_PARTY = 192  # douyin | duoshan: the constant label of app_id / subject_id

rows_st = st.lists(
    st.tuples(
        st.integers(0, 5),
        st.sampled_from(["douyin", "duoshan"]),
        st.one_of(st.none(), st.integers(0, len(HANDLES) - 1)),
        st.sampled_from(LABELS),
        st.one_of(st.none(), st.integers(0, 4)),
        st.sampled_from(LABELS),
    ),
    min_size=1,
    max_size=25,
)

QUERIES = {
    "projection": "SELECT subject_id, handle, avatar_key, handle || '/' || avatar_key AS hk"
    " FROM profiles",
    "group": "SELECT app_id, count(*) AS n, max(handle) AS mh FROM profiles GROUP BY app_id",
    "window": "SELECT subject_id, handle, count(*) OVER (PARTITION BY handle) AS c FROM profiles",
}


def _cell(qp: QueryPolicy, cats: tuple[str, ...], value: Any, label: int) -> Any:
    """What the PDP says the cell must be: the value, or its mask by the decided strategy."""
    as_text = any(s in qp.verdict(cats).masks for s in ("placeholder", "redact", "hash"))
    kind, strategy = qp.row_strategy(cats, label) if cats else ("clear", None)
    assert kind != "refuse"
    if strategy is None:
        return str(value) if as_text and value is not None else value
    if strategy == "placeholder":
        return PLACEHOLDER
    if strategy == "nullify" or value is None:
        return None
    text = str(value)
    if strategy == "redact":
        return text[0] + "***"
    return hashlib.sha256(text.encode()).hexdigest()


def _oracle(name: str, t: pa.Table, qp: QueryPolicy) -> list[tuple[Any, ...]]:
    rows = t.to_pylist()
    nick, av = ("user.name.nickname",), ("user.avatar",)
    out: list[tuple[Any, ...]] = []
    if name == "projection":
        for r in rows:
            h, a, hl, al = r["handle"], r["avatar_key"], r["handle_origins"], r["avatar_origins"]
            hk = None if h is None or a is None else f"{h}/{a}"
            out.append(
                (
                    r["subject_id"],
                    _cell(qp, nick, h, hl),
                    _cell(qp, av, a, al),
                    _cell(qp, ("user.avatar", "user.name.nickname"), hk, hl | al),
                    FIRST_PARTY,
                    hl,
                    al,
                    hl | al,
                )
            )
    elif name == "group":
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            groups[r["app_id"]].append(r)
        for app, rs in groups.items():
            label = FIRST_PARTY
            for r in rs:
                label |= r["handle_origins"]
            handles = [r["handle"] for r in rs if r["handle"] is not None]
            mh = max(handles) if handles else None
            out.append((app, len(rs), _cell(qp, nick, mh, label), FIRST_PARTY, FIRST_PARTY, label))
    else:
        parts: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            parts[r["handle"]].append(r)
        for r in rows:
            part = parts[r["handle"]]
            label = 0
            for p in part:
                label |= p["handle_origins"]
            out.append(
                (
                    r["subject_id"],
                    _cell(qp, nick, r["handle"], r["handle_origins"]),
                    _cell(qp, nick, len(part), label),
                    FIRST_PARTY,
                    r["handle_origins"],
                    label,
                )
            )
    return out


def _key(row: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(repr(v) for v in row)


def _duckdb(sql: str, t: pa.Table) -> pa.Table:
    con = duckdb.connect()
    con.register("profiles", t)
    try:
        return con.sql(sql).to_arrow_table()
    finally:
        con.close()


def _rows(t: pa.Table) -> list[tuple[Any, ...]]:
    return sorted((tuple(r.values()) for r in t.to_pylist()), key=_key)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=rows_st, query=st.sampled_from(sorted(QUERIES)))
def test_pdp_vs_duckdb(rows: list[Any], query: str, qpolicy: QueryPolicy) -> None:
    t = make_profiles(rows)
    r = rewrite(QUERIES[query], default_schema(), qpolicy, dialect="duckdb")
    got = _rows(_duckdb(r.sql, t))
    assert got == sorted(_oracle(query, t, qpolicy), key=_key)


@settings(
    max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=rows_st)
def test_pdp_vs_duckdb_vs_spark(rows: list[Any], qpolicy: QueryPolicy, spark: Any) -> None:
    t = make_profiles(rows)
    spark.register("profiles", t)
    for name, sql in QUERIES.items():
        duck = rewrite(sql, default_schema(), qpolicy, dialect="duckdb")
        sp = rewrite(sql, default_schema(), qpolicy, dialect="spark")
        d_rows = _rows(_duckdb(duck.sql, t))
        s_rows = _rows(spark.query(sp.sql, [c.origins_column for c in sp.columns]))
        assert s_rows == d_rows, name
        assert d_rows == sorted(_oracle(name, t, qpolicy), key=_key), name

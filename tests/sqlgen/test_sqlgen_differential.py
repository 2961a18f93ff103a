"""Differential: the PDP's per-row decision (a Python oracle calling ``decide`` per cell and per
control value), the DuckDB result and the Spark result agree cell by cell, masked values and
labels included. The queries cover explicit flows (projection, aggregate, window) and implicit
flows (WHERE, self-join ON, EXISTS, GROUP BY on a column not returned, ORDER BY)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import duckdb
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provguard.sqlgen import PLACEHOLDER, QueryPolicy, default_schema, hmac_hex, rewrite

from .conftest import HANDLES, HASH_KEY, LABELS, make_profiles

FIRST_PARTY = 192  # douyin | duoshan: the constant label of app_id / subject_id
NICK, AV = ("user.name.nickname",), ("user.avatar",)

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
    # implicit flows
    "where": "SELECT subject_id, avatar_key FROM profiles WHERE handle LIKE '%a%'",
    "self_join": "SELECT a.subject_id AS a_id, b.subject_id AS b_id, a.avatar_key AS av"
    " FROM profiles AS a JOIN profiles AS b"
    " ON a.handle = b.handle AND a.subject_id < b.subject_id",
    "exists": "SELECT p.subject_id, p.handle FROM profiles AS p WHERE EXISTS"
    " (SELECT 1 FROM profiles AS q WHERE q.avatar_key = p.avatar_key"
    " AND q.subject_id <> p.subject_id)",
    "group_hidden_key": "SELECT app_id, count(*) AS n FROM profiles GROUP BY app_id, handle",
    "order_by": "SELECT subject_id, handle FROM profiles ORDER BY avatar_key",
    # masks on derived values (issue 4, L1/L2): each would leak the handle under hash/redact
    "derived_attacks": "SELECT subject_id, substr(handle, 3) AS tail,"
    " CASE WHEN handle = 'eve' THEN 'Y' ELSE 'N' END AS is_eve,"
    " 'eve' || substr(handle, 1, 0) AS oracle, handle || avatar_key AS mixed FROM profiles",
    # bare pass-through (CTE, derived table, UNION ALL) keeps the rule's own strategy
    "bare_passthrough": "WITH c AS (SELECT subject_id AS s, handle AS h FROM profiles)"
    " SELECT u.s, u.h FROM (SELECT s, h FROM c UNION ALL SELECT subject_id, handle"
    " FROM profiles) AS u",
    # a correlated aggregate subquery in control position (checked on Spark too)
    "corr_count": "SELECT p.subject_id, p.handle FROM profiles AS p WHERE (SELECT count(*)"
    " FROM profiles AS q WHERE q.avatar_key = p.avatar_key AND q.subject_id <> p.subject_id)"
    " >= 1",
}


def _n(label: int) -> int:
    """A stored label as the rewrite reads it: 0 (no recorded origin) is ``unknown``."""
    return label or 1


def _cell(
    qp: QueryPolicy, cats: tuple[str, ...], value: Any, label: int, *, derived: bool = False
) -> Any:
    """What the PDP says the cell must be: the value, or its mask by the decided strategy
    (``derived``: not a bare column, so any mask is ``nullify`` and the type is kept)."""
    masks = qp.verdict(cats).masks
    as_text = not derived and any(s in masks for s in ("placeholder", "redact", "hash"))
    kind, strategy = qp.row_strategy(cats, label, derived=derived) if cats else ("clear", None)
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
    return hmac_hex(text, HASH_KEY)


def _usable(qp: QueryPolicy, cats: tuple[str, ...], label: int) -> bool:
    """A control value may decide which rows are returned iff the PDP clears it (a deny with a
    mask obligation drops the row; one without refuses the query, not the case here)."""
    kind, _ = qp.row_strategy(cats, label)
    assert kind != "refuse"
    return kind == "clear"


Row = dict[str, Any]


def _projection(rows: list[Row], qp: QueryPolicy) -> list[tuple[Any, ...]]:
    out = []
    for r in rows:
        h, a = r["handle"], r["avatar_key"]
        hl, al = _n(r["handle_origins"]), _n(r["avatar_origins"])
        hk = None if h is None or a is None else f"{h}/{a}"
        out.append(
            (
                r["subject_id"],
                _cell(qp, NICK, h, hl),
                _cell(qp, AV, a, al),
                _cell(qp, ("user.avatar", "user.name.nickname"), hk, hl | al, derived=True),
                FIRST_PARTY,
                hl,
                al,
                hl | al,
            )
        )
    return out


def _group(rows: list[Row], qp: QueryPolicy) -> list[tuple[Any, ...]]:
    groups: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        groups[r["app_id"]].append(r)
    out = []
    for app, rs in groups.items():
        label = FIRST_PARTY
        for r in rs:
            label |= _n(r["handle_origins"])
        handles = [r["handle"] for r in rs if r["handle"] is not None]
        mh = max(handles) if handles else None
        out.append(
            (
                app,
                len(rs),
                _cell(qp, NICK, mh, label, derived=True),
                FIRST_PARTY,
                FIRST_PARTY,
                label,
            )
        )
    return out


def _window(rows: list[Row], qp: QueryPolicy) -> list[tuple[Any, ...]]:
    parts: dict[str | None, list[Row]] = defaultdict(list)
    for r in rows:
        parts[r["handle"]].append(r)
    out = []
    for r in rows:
        part = parts[r["handle"]]
        label = 0
        for p in part:
            label |= _n(p["handle_origins"])
        hl = _n(r["handle_origins"])
        out.append(
            (
                r["subject_id"],
                _cell(qp, NICK, r["handle"], hl),
                _cell(qp, NICK, len(part), label, derived=True),
                FIRST_PARTY,
                hl,
                label,
            )
        )
    return out


def _where(rows: list[Row], qp: QueryPolicy) -> list[tuple[Any, ...]]:
    out = []
    for r in rows:
        hl, al = _n(r["handle_origins"]), _n(r["avatar_origins"])
        if not _usable(qp, NICK, hl) or r["handle"] is None or "a" not in r["handle"]:
            continue
        out.append(
            (r["subject_id"], _cell(qp, AV, r["avatar_key"], al | hl), FIRST_PARTY | hl, al | hl)
        )
    return out


def _self_join(rows: list[Row], qp: QueryPolicy) -> list[tuple[Any, ...]]:
    out = []
    for a in rows:
        for b in rows:
            if a["handle"] is None or a["handle"] != b["handle"]:
                continue
            if not a["subject_id"] < b["subject_id"]:
                continue
            ctrl = _n(a["handle_origins"]) | _n(b["handle_origins"]) | FIRST_PARTY
            if not _usable(qp, NICK, ctrl):
                continue
            av = _n(a["avatar_origins"]) | ctrl
            out.append(
                (
                    a["subject_id"],
                    b["subject_id"],
                    _cell(qp, AV, a["avatar_key"], av),
                    ctrl,
                    ctrl,
                    av,
                )
            )
    return out


def _exists(rows: list[Row], qp: QueryPolicy) -> list[tuple[Any, ...]]:
    out = []
    for p in rows:
        label = 0
        for q in rows:
            if p["avatar_key"] is None or q["avatar_key"] != p["avatar_key"]:
                continue
            if q["subject_id"] == p["subject_id"]:
                continue
            ctrl = _n(q["avatar_origins"]) | _n(p["avatar_origins"]) | FIRST_PARTY
            if _usable(qp, AV, ctrl):
                label |= ctrl
        if not label:
            continue
        hl = _n(p["handle_origins"]) | label
        out.append((p["subject_id"], _cell(qp, NICK, p["handle"], hl), FIRST_PARTY | label, hl))
    return out


def _group_hidden_key(rows: list[Row], qp: QueryPolicy) -> list[tuple[Any, ...]]:
    groups: dict[tuple[str, str | None], int] = defaultdict(int)
    labels: dict[tuple[str, str | None], int] = defaultdict(int)
    for r in rows:
        hl = _n(r["handle_origins"])
        if not _usable(qp, NICK, hl):
            continue
        key = (r["app_id"], r["handle"])
        groups[key] += 1
        labels[key] |= hl | FIRST_PARTY
    return [
        (
            app,
            _cell(qp, NICK, n, labels[(app, h)], derived=True),
            labels[(app, h)],
            labels[(app, h)],
        )
        for (app, h), n in groups.items()
    ]


def _order_by(rows: list[Row], qp: QueryPolicy) -> list[tuple[Any, ...]]:
    out = []
    for r in rows:
        al = _n(r["avatar_origins"])
        if not _usable(qp, AV, al):
            continue
        hl = _n(r["handle_origins"]) | al
        out.append((r["subject_id"], _cell(qp, NICK, r["handle"], hl), FIRST_PARTY | al, hl))
    return out


def _corr_count(rows: list[Row], qp: QueryPolicy) -> list[tuple[Any, ...]]:
    """The subquery's rows are guarded with the outer row's label (its WHERE reads both), its
    count is labelled with them (``BIT_OR``, 0 when empty) and the outer label; the outer row is
    dropped when its own avatar label is forbidden."""
    out = []
    for p in rows:
        pl = _n(p["avatar_origins"])
        if not _usable(qp, AV, pl):
            continue
        count, label = 0, 0
        for q in rows:
            if p["avatar_key"] is None or q["avatar_key"] != p["avatar_key"]:
                continue
            if q["subject_id"] == p["subject_id"]:
                continue
            ctrl = _n(q["avatar_origins"]) | pl | FIRST_PARTY
            if _usable(qp, AV, ctrl):
                count += 1
                label |= ctrl
        if count < 1:
            continue
        ctrl_out = label | pl
        hl = _n(p["handle_origins"]) | ctrl_out
        out.append((p["subject_id"], _cell(qp, NICK, p["handle"], hl), FIRST_PARTY | ctrl_out, hl))
    return out


def _derived_attacks(rows: list[Row], qp: QueryPolicy) -> list[tuple[Any, ...]]:
    """Every output computed from a handle is NULL wherever the handle's label is masked,
    whatever strategy (hash, redact, placeholder) the rule names for the bare column."""
    out = []
    both = ("user.avatar", "user.name.nickname")
    for r in rows:
        h, a = r["handle"], r["avatar_key"]
        hl, al = _n(r["handle_origins"]), _n(r["avatar_origins"])
        out.append(
            (
                r["subject_id"],
                _cell(qp, NICK, None if h is None else h[2:], hl, derived=True),
                _cell(qp, NICK, "Y" if h == "eve" else "N", hl, derived=True),
                _cell(qp, NICK, None if h is None else "eve", hl, derived=True),
                _cell(qp, both, None if h is None or a is None else h + a, hl | al, derived=True),
                FIRST_PARTY,
                hl,
                hl,
                hl,
                hl | al,
            )
        )
    return out


def _bare_passthrough(rows: list[Row], qp: QueryPolicy) -> list[tuple[Any, ...]]:
    """Both UNION ALL branches are bare handles: each keeps its hash/redact/placeholder."""
    out = []
    for r in [*rows, *rows]:
        hl = _n(r["handle_origins"])
        out.append((r["subject_id"], _cell(qp, NICK, r["handle"], hl), FIRST_PARTY, hl))
    return out


ORACLES: dict[str, Callable[[list[Row], QueryPolicy], list[tuple[Any, ...]]]] = {
    "corr_count": _corr_count,
    "derived_attacks": _derived_attacks,
    "bare_passthrough": _bare_passthrough,
    "projection": _projection,
    "group": _group,
    "window": _window,
    "where": _where,
    "self_join": _self_join,
    "exists": _exists,
    "group_hidden_key": _group_hidden_key,
    "order_by": _order_by,
}


def _key(row: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(repr(v) for v in row)


def _oracle(name: str, t: pa.Table, qp: QueryPolicy) -> list[tuple[Any, ...]]:
    # controller isolation: app X reads only the rows whose app_id is X (PIPL Art. 23), in
    # every scope (the self-joins and subqueries of the corpus too)
    own = [r for r in t.to_pylist() if r["app_id"] == qp.app]
    return sorted(ORACLES[name](own, qp), key=_key)


def _duckdb(sql: str, t: pa.Table) -> pa.Table:
    con = duckdb.connect()
    con.register("profiles", t)
    try:
        return con.sql(sql).to_arrow_table()
    finally:
        con.close()


def _rows(t: pa.Table) -> list[tuple[Any, ...]]:
    return sorted((tuple(r.values()) for r in t.to_pylist()), key=_key)


def test_every_query_has_an_oracle() -> None:
    assert set(QUERIES) == set(ORACLES)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=rows_st, query=st.sampled_from(sorted(QUERIES)))
def test_pdp_vs_duckdb(rows: list[Any], query: str, qpolicy: QueryPolicy) -> None:
    t = make_profiles(rows)
    r = rewrite(QUERIES[query], default_schema(), qpolicy, dialect="duckdb")
    assert _rows(_duckdb(r.sql, t)) == _oracle(query, t, qpolicy)


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
        assert d_rows == _oracle(name, t, qpolicy), name

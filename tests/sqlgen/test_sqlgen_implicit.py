"""Implicit flows (Denning 1976): columns in control position (WHERE, JOIN ... ON, GROUP BY,
HAVING, ORDER BY, QUALIFY, IN/EXISTS predicates) are labelled into every output and checked
against the policy: refused under a deny without a mask obligation, filtered out under one with."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from provguard.policy import load_policy_dir
from provguard.provenance import default_registry
from provguard.sqlgen import QueryPolicy, QueryRefused, default_schema, lineage, rewrite

from .conftest import AT, REG, make_profiles, own_rows, random_profiles

INJUNCTION = Path(__file__).resolve().parents[2] / "policies"
RULE = "no-platform-profile-in-friend-recommendation"
WECHAT, QQ, USER = REG.mask(["wechat"]), REG.mask(["qq"]), REG.mask(["user_input"])
FIRST = REG.mask(["douyin", "duoshan"])


def _injunction() -> QueryPolicy:
    return QueryPolicy(
        load_policy_dir(INJUNCTION),
        default_registry(),
        app="douyin",
        purpose="social.friend_recommendation",
        at=AT,
    )


@pytest.mark.parametrize(
    ("sql", "clause"),
    [
        # WHERE on a forbidden column, returning only a permitted one
        ("SELECT subject_id FROM profiles WHERE handle = 'wxAlice'", "WHERE"),
        # self-join on equal handles (friend matching): the Tianjin case
        (
            "SELECT a.subject_id AS a_id, b.subject_id AS b_id FROM profiles AS a"
            " JOIN profiles AS b ON a.handle = b.handle AND a.subject_id < b.subject_id",
            "JOIN ... ON",
        ),
        # JOIN USING is qualified into ON
        (
            "SELECT a.subject_id FROM profiles AS a JOIN profiles AS b USING (handle)",
            "JOIN ... ON",
        ),
        # GROUP BY a forbidden column that is not returned
        ("SELECT app_id, count(*) AS n FROM profiles GROUP BY app_id, avatar_key", "GROUP BY"),
        # ORDER BY one (with LIMIT it decides which rows come out)
        ("SELECT subject_id FROM profiles ORDER BY handle LIMIT 5", "ORDER BY"),
        (
            "SELECT app_id, count(*) AS n FROM profiles GROUP BY app_id HAVING max(handle) > 'm'",
            "HAVING",
        ),
        (
            "SELECT subject_id FROM profiles"
            " QUALIFY row_number() OVER (PARTITION BY handle ORDER BY created_at) = 1",
            "QUALIFY",
        ),
        # EXISTS / IN subquery predicates
        (
            "SELECT p.subject_id FROM profiles AS p WHERE EXISTS (SELECT 1 FROM profiles AS q"
            " WHERE q.avatar_key = p.avatar_key AND q.subject_id <> p.subject_id)",
            "WHERE",
        ),
        (
            "SELECT subject_id FROM profiles WHERE handle IN"
            " (SELECT handle FROM profiles WHERE app_id = 'duoshan')",
            "WHERE",
        ),
        # inside a CTE the filter is still a use
        (
            "WITH w AS (SELECT subject_id FROM profiles WHERE avatar_key LIKE 'av/1%')"
            " SELECT subject_id FROM w",
            "WHERE",
        ),
    ],
)
def test_forbidden_control_column_refuses_the_query(sql: str, clause: str) -> None:
    with pytest.raises(QueryRefused) as err:
        rewrite(sql, default_schema(), _injunction())
    assert err.value.code == "PG162"
    assert err.value.clause == clause
    assert err.value.rules == (RULE,)
    assert "implicit flow" in str(err.value)


def test_permitted_control_columns_still_work() -> None:
    """Filters, joins, grouping and ordering on columns the injunction does not cover pass, and
    give the plain query's rows."""
    t = random_profiles(80, seed=21)
    con = duckdb.connect()
    con.register("profiles", t)
    # controller isolation: the reference is the plain query over douyin's own rows
    ref = duckdb.connect()
    ref.register("profiles", own_rows(t, "douyin"))
    cases = [
        "SELECT subject_id, app_id FROM profiles WHERE app_id = 'douyin' ORDER BY created_at",
        "SELECT a.subject_id, b.app_id FROM profiles AS a JOIN profiles AS b"
        " ON a.subject_id + 1 = b.subject_id AND a.app_id = b.app_id ORDER BY 1, 2",
        "SELECT app_id, count(*) AS n FROM profiles GROUP BY app_id HAVING count(*) > 1"
        " ORDER BY app_id",
        "SELECT p.subject_id FROM profiles AS p WHERE EXISTS (SELECT 1 FROM profiles AS q"
        " WHERE q.subject_id = p.subject_id + 1 AND q.app_id = 'douyin') ORDER BY 1",
    ]
    for sql in cases:
        r = rewrite(sql, default_schema(), _injunction())
        assert r.control_filters == ()
        assert r.controller_filters == {"profiles": "douyin"}
        got = con.sql(r.sql).fetchall()
        plain = ref.sql(sql).fetchall()
        assert plain, sql
        width = len(r.columns)
        assert [g[:width] for g in got] == plain, sql
        # every label is first-party only (app_id, subject_id, created_at are constant labels)
        assert {v for g in got for v in g[width:]} == {FIRST}, sql


def _labelled(rows: list[tuple[int, str, int | None, int, int | None, int]]) -> pa.Table:
    return make_profiles(rows)


def test_where_labels_every_output_per_row() -> None:
    """No policy: the control column's label joins each output's label, row by row."""
    t = _labelled(
        [
            (1, "douyin", 1, WECHAT, 2, USER),
            (2, "douyin", 1, USER, 3, USER),
            (3, "douyin", 2, QQ, 3, USER),
        ]
    )
    r = rewrite("SELECT subject_id, avatar_key FROM profiles WHERE handle <> 'x'", default_schema())
    con = duckdb.connect()
    con.register("profiles", t)
    got = con.sql(r.sql + " ORDER BY subject_id").fetchall()
    assert got == [
        (1, "av/0002.jpg", FIRST | WECHAT, USER | WECHAT),
        (2, "av/0003.jpg", FIRST | USER, USER),
        (3, "av/0003.jpg", FIRST | QQ, USER | QQ),
    ]
    (sid, av) = lineage(
        "SELECT subject_id, avatar_key FROM profiles WHERE handle <> 'x'", default_schema()
    )
    assert sid.categories == () and sid.control_categories == ("user.name.nickname",)
    assert av.control_sources == (("profiles", "handle"),)


def test_group_by_labels_by_bit_or_over_the_group() -> None:
    t = _labelled(
        [
            (1, "douyin", 1, WECHAT, 2, USER),
            (2, "douyin", 1, QQ, 3, USER),
            (3, "duoshan", 1, USER, 3, USER),
        ]
    )
    r = rewrite(
        "SELECT app_id, count(*) AS n FROM profiles WHERE handle IS NOT NULL GROUP BY app_id",
        default_schema(),
    )
    con = duckdb.connect()
    con.register("profiles", t)
    got = dict((row[0], row[2:]) for row in con.sql(r.sql).fetchall())
    assert got == {
        "douyin": (FIRST | WECHAT | QQ, FIRST | WECHAT | QQ),
        "duoshan": (FIRST | USER, FIRST | USER),
    }


def test_masked_control_values_drop_rows(qpolicy: QueryPolicy) -> None:
    """Under a deny with a mask obligation (test policy: WeChat nicknames hashed) a WeChat handle
    may not decide which rows appear: the rows whose control value carries it are dropped, and
    masking the outputs cannot stand in for that."""
    t = _labelled(
        [
            (1, "douyin", 1, WECHAT, 2, USER),
            (2, "douyin", 1, USER, 3, USER),
            (3, "douyin", 2, USER, 3, USER),
        ]
    )
    con = duckdb.connect()
    con.register("profiles", t)
    r = rewrite(
        "SELECT subject_id FROM profiles WHERE handle = 'wxAlice'", default_schema(), qpolicy
    )
    assert [(f.clause, f.categories) for f in r.control_filters] == [
        ("WHERE", ("user.name.nickname",))
    ]
    assert con.sql(r.sql).fetchall() == [(2, FIRST | USER)]
    # self-join: the pair (1, 2) matched only through subject 1's WeChat handle
    r = rewrite(
        "SELECT a.subject_id AS a_id, b.subject_id AS b_id FROM profiles AS a JOIN profiles AS b"
        " ON a.handle = b.handle AND a.subject_id <> b.subject_id",
        default_schema(),
        qpolicy,
    )
    assert con.sql(r.sql).fetchall() == []
    plain = (
        "SELECT count(*) FROM profiles AS a JOIN profiles AS b"
        " ON a.handle = b.handle AND a.subject_id <> b.subject_id"
    )
    assert con.sql(plain).fetchall() == [(2,)]


@pytest.mark.parametrize(
    ("sql", "clause"),
    [
        # a handle read character by character through the row count (found by a fresh user)
        (
            "SELECT subject_id FROM profiles LIMIT (SELECT unicode(substr(handle, 4, 1)) - 19968"
            " FROM profiles WHERE subject_id = 0)",
            "LIMIT",
        ),
        (
            "SELECT subject_id FROM profiles LIMIT 2 OFFSET"
            " (SELECT length(avatar_key) FROM profiles WHERE subject_id = 0)",
            "OFFSET",
        ),
    ],
)
def test_row_count_from_forbidden_data_refuses(sql: str, clause: str) -> None:
    with pytest.raises(QueryRefused) as err:
        rewrite(sql, default_schema(), _injunction())
    assert (err.value.code, err.value.clause, err.value.rules) == ("PG162", clause, (RULE,))


def test_row_count_of_a_union_from_forbidden_data_is_refused() -> None:
    """The LIMIT of a UNION is lifted onto a SELECT over it, so its subquery is bound and
    checked like any LIMIT: a forbidden column there refuses the query (PG162, clause LIMIT)."""
    with pytest.raises(QueryRefused) as err:
        rewrite(
            "SELECT subject_id FROM profiles UNION ALL SELECT subject_id FROM profiles"
            " LIMIT (SELECT length(handle) FROM profiles WHERE subject_id = 0)",
            default_schema(),
            _injunction(),
        )
    assert err.value.clause == "LIMIT"


@pytest.mark.parametrize("union", ["UNION", "UNION ALL"])
def test_row_count_of_a_union_from_permitted_data_runs_and_is_labelled(union: str) -> None:
    t = random_profiles(40, seed=6)
    con = duckdb.connect()
    con.register("profiles", t)
    ref = duckdb.connect()  # controller isolation: the plain query over douyin's rows
    ref.register("profiles", own_rows(t, "douyin"))
    sql = (
        f"SELECT subject_id FROM profiles WHERE subject_id < 12 {union}"
        " SELECT subject_id FROM profiles WHERE subject_id >= 6 ORDER BY subject_id DESC"
        " LIMIT (SELECT count(*) FROM profiles WHERE subject_id >= 6)"
    )
    # DuckDB itself binds no subquery in a set operation's LIMIT: the reference is the lifted form
    reference = (
        f"SELECT * FROM (SELECT subject_id FROM profiles WHERE subject_id < 12 {union}"
        " SELECT subject_id FROM profiles WHERE subject_id >= 6) ORDER BY subject_id DESC"
        " LIMIT (SELECT count(*) FROM profiles WHERE subject_id >= 6)"
    )
    r = rewrite(sql, default_schema(), _injunction())
    got = con.sql(r.sql).fetchall()
    want = ref.sql(reference).fetchall()
    n = ref.sql("SELECT count(*) FROM profiles WHERE subject_id >= 6").fetchall()[0][0]
    assert [g[0] for g in got] == [w[0] for w in want]
    assert len(got) == n > 0
    assert {g[1] for g in got} == {FIRST}


def test_row_count_from_forbidden_data_refuses_even_under_a_mask(qpolicy: QueryPolicy) -> None:
    """A LIMIT is one value for the whole query: no per-row filter can stand in for a mask."""
    with pytest.raises(QueryRefused) as err:
        rewrite(
            "SELECT subject_id FROM profiles LIMIT (SELECT length(handle) FROM profiles"
            " WHERE subject_id = 0)",
            default_schema(),
            qpolicy,
        )
    assert err.value.clause == "LIMIT"


def test_row_count_from_permitted_data_runs_and_is_labelled() -> None:
    t = random_profiles(40, seed=5)
    con = duckdb.connect()
    con.register("profiles", t)
    sql = (
        "SELECT subject_id FROM profiles ORDER BY subject_id"
        " LIMIT (SELECT count(*) FROM profiles WHERE app_id = 'douyin')"
    )
    r = rewrite(sql, default_schema(), _injunction())
    got = con.sql(r.sql).fetchall()
    ref = duckdb.connect()  # controller isolation: the plain query over douyin's rows
    ref.register("profiles", own_rows(t, "douyin"))
    assert [g[0] for g in got] == [p[0] for p in ref.sql(sql).fetchall()]
    assert len(got) == 20
    assert {g[1] for g in got} == {FIRST}


def test_count_where_forbidden_column_is_refused_without_a_mask() -> None:
    """``count(*) ... WHERE handle = ...`` returns no handle, yet the count is information about
    handles (negative information too): under a deny without a mask it is refused."""
    with pytest.raises(QueryRefused) as err:
        rewrite(
            "SELECT count(*) AS n FROM profiles WHERE handle = 'wxAlice'",
            default_schema(),
            _injunction(),
        )
    assert err.value.clause == "WHERE"
    assert RULE in err.value.rules


def test_count_where_masked_column_ignores_forbidden_rows(qpolicy: QueryPolicy) -> None:
    """Under a deny with a mask, rows whose handle label is forbidden are dropped before the
    WHERE decides: the count and its label are the same whatever those rows' handles are
    (non-interference), and the label is the OR of the counted rows' labels."""
    sql = "SELECT count(*) AS n FROM profiles WHERE handle = 'wxAlice'"
    r = rewrite(sql, default_schema(), qpolicy)
    forbidden = 0
    for m in qpolicy.verdict(["user.name.nickname"]).masks.values():
        forbidden |= m
    t = random_profiles(80, seed=14)  # (seed 9 had no douyin wxAlice row left to count)
    rows = t.to_pylist()
    # the same table with every forbidden-labelled handle set to the value tested
    flipped = [
        {**row, "handle": "wxAlice"} if ((row["handle_origins"] or 1) & forbidden) else row
        for row in rows
    ]
    assert flipped != rows
    results = []
    for data in (rows, flipped):
        con = duckdb.connect()
        con.register("profiles", pa.Table.from_pylist(data, schema=t.schema))
        results.append(con.sql(r.sql).fetchall())
    assert results[0] == results[1]
    counted = [
        row
        for row in rows
        if row["handle"] == "wxAlice"
        and not ((row["handle_origins"] or 1) & forbidden)
        and row["app_id"] == qpolicy.app  # controller isolation
    ]
    label = 0
    for row in counted:
        label |= row["handle_origins"] or 1
    # count(*) reads no column: its label is the WHERE's (BIT_OR over the counted rows, 0 if none)
    assert results[0] == [(len(counted), label)]
    assert len(counted) > 0

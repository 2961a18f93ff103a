"""Issue 4 fresh-user leaks: masks on derived values (L1/L2), rule ids in refusals (W1) and
``CREATE TABLE AS`` forms the store cannot honour (C3).

``hash``, ``redact`` and ``placeholder`` apply only to an output that is a bare protected column
(aliased, or passed through CTEs, derived tables and UNION branches); every other output whose
lineage carries a masked (origin, category) is nullified."""

from __future__ import annotations

from typing import Any

import duckdb
import pytest

from provguard.sqlgen import (
    PLACEHOLDER,
    QueryError,
    QueryPolicy,
    QueryRefused,
    default_schema,
    hmac_hex,
    rewrite,
)

from .conftest import HASH_KEY, REG, make_profiles

WECHAT, QQ, USER = REG.mask(["wechat"]), REG.mask(["qq"]), REG.mask(["user_input"])
UNKNOWN = REG.mask(["unknown"])
# (subject_id, app, handle#, handle label, avatar#, avatar label); HANDLES[1] = 'wxAlice',
# HANDLES[2] = 'qq_bob', HANDLES[6] = 'eve'
ROWS = [
    (1, "douyin", 1, WECHAT, 1, USER),
    (2, "douyin", 2, QQ, 2, WECHAT),
    (3, "douyin", 6, USER, 3, USER),
    (4, "douyin", 6, WECHAT, 4, USER),
    (5, "douyin", 1, QQ | WECHAT, 1, USER),
    (6, "douyin", 6, UNKNOWN, 1, USER),
]


def _run(sql: str, qp: QueryPolicy) -> dict[int, dict[str, Any]]:
    r = rewrite(sql, default_schema(), qp)
    con = duckdb.connect()
    try:
        con.register("profiles", make_profiles(ROWS))
        rows = con.sql(r.sql).to_arrow_table().to_pylist()
    finally:
        con.close()
    return {row["subject_id"]: row for row in rows}


@pytest.mark.parametrize(
    "expr",
    [
        "substr(handle, 3)",  # redact would show the 3rd character: the handle char by char
        "CASE WHEN handle = 'eve' THEN 'Y' ELSE 'N' END",  # redact shows 'Y'/'N'
        "'eve' || substr(handle, 1, 0)",  # hash = HMAC('eve'): an equality oracle
        "count(*) OVER (PARTITION BY handle)",  # hash = HMAC('1'): group sizes by handle
        "handle || avatar_key",  # redact (qq) + hash (wechat): the weaker strategy must not win
        "upper(handle)",
    ],
)
def test_masked_derived_values_are_null(expr: str, qpolicy: QueryPolicy) -> None:
    rows = _run(f"SELECT subject_id, {expr} AS v FROM profiles", qpolicy)
    assert set(rows) == {1, 2, 3, 4, 5, 6}
    for sid in (1, 2, 4, 5, 6):  # wechat, qq, wechat, qq|wechat, unknown handles
        assert rows[sid]["v"] is None, (expr, sid, rows[sid]["v"])
    if "OVER" in expr:
        # the window's label is the whole partition's: 'eve' also has wechat/unknown rows
        assert rows[3]["v"] is None
    else:
        assert rows[3]["v"] is not None  # a user_input handle (and avatar) is clear


def test_derived_output_reports_nullify(qpolicy: QueryPolicy) -> None:
    r = rewrite("SELECT handle, substr(handle, 3) AS tail FROM profiles", default_schema(), qpolicy)
    by = {c.name: c for c in r.columns}
    assert not by["handle"].derived
    assert {s for s, _ in by["handle"].masks} == {"hash", "redact", "placeholder"}
    assert by["tail"].derived
    assert by["tail"].masks == (("nullify", WECHAT | QQ | UNKNOWN),)


def test_oracle_attack_cannot_match_the_masked_handle(qpolicy: QueryPolicy) -> None:
    """Before the fix ``'eve' || substr(handle, 1, 0)`` came out as HMAC('eve'), equal to the
    hash mask of a WeChat handle 'eve': a guess could be confirmed row by row."""
    rows = _run(
        "SELECT subject_id, handle, 'eve' || substr(handle, 1, 0) AS guess FROM profiles",
        qpolicy,
    )
    assert rows[4]["handle"] == hmac_hex("eve", HASH_KEY)  # the bare column keeps its hash
    assert rows[4]["guess"] is None
    assert rows[3]["guess"] == "eve"  # user_input: clear


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT subject_id, handle AS h FROM profiles",
        "WITH c AS (SELECT subject_id, handle AS h FROM profiles) SELECT subject_id, h FROM c",
        "SELECT d.subject_id, d.h FROM (SELECT subject_id, handle AS h FROM profiles) AS d",
        "SELECT u.subject_id, u.h FROM (SELECT subject_id, handle AS h FROM profiles"
        " UNION ALL SELECT subject_id, handle FROM profiles WHERE false) AS u",
    ],
)
def test_bare_columns_keep_their_strategy(sql: str, qpolicy: QueryPolicy) -> None:
    rows = _run(sql, qpolicy)
    assert rows[1]["h"] == hmac_hex("wxAlice", HASH_KEY)  # wechat: nick-wechat-hash
    assert rows[2]["h"] == "q***"  # qq: nick-qq-redact
    assert rows[3]["h"] == "eve"  # user_input: clear
    # several rules on one bare value: the strongest wins (placeholder > redact > hash)
    assert rows[5]["h"] == "w***"  # qq|wechat: redact beats hash
    assert rows[6]["h"] == PLACEHOLDER  # unknown: placeholder


def test_union_of_bare_and_derived_is_nullified(qpolicy: QueryPolicy) -> None:
    rows = _run(
        "SELECT u.subject_id, u.h FROM (SELECT subject_id, handle AS h FROM profiles WHERE false"
        " UNION ALL SELECT subject_id, lower(handle) FROM profiles) AS u",
        qpolicy,
    )
    assert rows[1]["h"] is None and rows[2]["h"] is None and rows[3]["h"] == "eve"


def test_row_strategy_reference_for_derived(qpolicy: QueryPolicy) -> None:
    nick = ("user.name.nickname",)
    assert qpolicy.row_strategy(nick, WECHAT) == ("mask", "hash")
    assert qpolicy.row_strategy(nick, WECHAT, derived=True) == ("mask", "nullify")
    assert qpolicy.row_strategy(nick, USER, derived=True) == ("clear", None)


def test_refusal_names_rule_ids_not_strategies(qpolicy: QueryPolicy) -> None:
    with pytest.raises(QueryRefused) as err:
        rewrite(
            "SELECT subject_id FROM profiles LIMIT (SELECT count(DISTINCT handle) FROM profiles)",
            default_schema(),
            qpolicy,
        )
    assert err.value.code == "PG162"
    assert err.value.rules == ("nick-qq-redact", "nick-wechat-hash", "unknown-fail-closed")
    message = str(err.value)
    named = message.split("rule(s) ", 1)[1].split(" deny it", 1)[0]
    assert named.split(", ") == ["nick-qq-redact", "nick-wechat-hash", "unknown-fail-closed"]


@pytest.mark.parametrize(
    ("sql", "needle"),
    [
        ("CREATE TEMP TABLE t AS SELECT subject_id FROM profiles", "persistent"),
        ("CREATE TEMPORARY TABLE t AS SELECT subject_id FROM profiles", "persistent"),
        ("CREATE TABLE main.t9 AS SELECT subject_id FROM profiles", "qualified table name"),
        ("CREATE TABLE db.s.t9 AS SELECT subject_id FROM profiles", "'db.s'"),
    ],
)
def test_create_forms_the_store_cannot_honour_are_refused(
    sql: str, needle: str, qpolicy: QueryPolicy
) -> None:
    with pytest.raises(QueryError) as err:
        rewrite(sql, default_schema(), qpolicy)
    assert err.value.code == "PG160"
    assert needle in str(err.value)
    plain = rewrite("CREATE TABLE t9 AS SELECT subject_id FROM profiles", default_schema(), qpolicy)
    assert plain.create_table == "t9"


def test_value_preserving_functions_are_nullified_and_say_why(qpolicy: QueryPolicy) -> None:
    """Issue 4, item 3: ``CAST``, ``TRIM`` and ``LOWER`` keep a handle's equality class (two
    rows with equal handles stay equal), so hashing them would still let the rows be matched:
    they are nullified where the rules hash, redact or withhold, and the column says so."""
    r = rewrite(
        "SELECT CAST(handle AS TEXT) AS c, TRIM(handle) AS t, LOWER(handle) AS l, handle"
        " FROM profiles",
        default_schema(),
        qpolicy,
    )
    by = {c.name: c for c in r.columns}
    for name in ("c", "t", "l"):
        assert by[name].masks == (("nullify", WECHAT | QQ | UNKNOWN),)
        assert by[name].nullified_from == ("placeholder", "redact", "hash")
        note = by[name].mask_note()
        assert note is not None and note.startswith(f"{name}: nullified, not withheld/redacted/")
    assert by["handle"].nullified_from == () and by["handle"].mask_note() is None
    con = duckdb.connect()
    con.register("profiles", make_profiles(ROWS))
    out = con.sql(r.sql).fetchall()
    for row, (_, _, _, label, _, _) in zip(out, ROWS, strict=True):
        if label & (WECHAT | QQ | UNKNOWN):
            assert row[:3] == (None, None, None)
    assert out[2][:3] == ("eve", "eve", "eve")  # user_input: clear

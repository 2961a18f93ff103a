"""The Tianjin case on the demo data: friend matching by a self-join on equal handles must not
run on WeChat/QQ handles under the injunction, even though it returns no handle."""

from __future__ import annotations

from typing import Any

import duckdb
import pyarrow as pa
import pytest

from provguard.dataplane import query_frames
from provguard.provenance import default_registry
from provguard.sqlgen import QueryPolicy, QueryRefused, default_schema, rewrite

SELF_JOIN = (
    "SELECT a.subject_id AS a_id, b.subject_id AS b_id FROM profiles AS a"
    " JOIN profiles AS b ON a.handle = b.handle AND a.subject_id < b.subject_id"
)
REG = default_registry()
PLATFORM = REG.mask(["wechat", "qq"])


def _plain(t: pa.Table, sql: str, app: str | None = None) -> list[tuple[Any, ...]]:
    """The plain query's rows; with ``app``, over that app's own rows only (what controller
    isolation lets a policy-aware query by ``app`` read)."""
    con = duckdb.connect()
    if app is not None:
        con.register("all_profiles", t)
        con.execute(f"CREATE VIEW profiles AS SELECT * FROM all_profiles WHERE app_id = '{app}'")
    else:
        con.register("profiles", t)
    return sorted(con.sql(sql).fetchall())


def test_self_join_on_platform_handles_is_refused(
    demo_profiles: pa.Table, injunction: QueryPolicy
) -> None:
    # the leak this closes: the plain query pairs thousands of accounts through WeChat/QQ handles
    leaked = _plain(
        demo_profiles,
        "SELECT count(*) FROM profiles AS a JOIN profiles AS b ON a.handle = b.handle"
        f" AND a.subject_id < b.subject_id WHERE (a.handle_origins & {PLATFORM}) <> 0"
        f" OR (b.handle_origins & {PLATFORM}) <> 0",
    )[0][0]
    assert isinstance(leaked, int) and leaked > 1000
    with pytest.raises(QueryRefused) as err:
        query_frames({"profiles": demo_profiles}, SELF_JOIN, default_schema(), injunction)
    assert err.value.clause == "JOIN ... ON"
    assert err.value.rules == ("no-platform-profile-in-friend-recommendation",)


def test_self_join_labels_carry_the_handles_origins(demo_profiles: pa.Table) -> None:
    """Without a policy the query runs, with the plain query's pairs, and each pair's labels
    carry the origins of the handles that matched it (implicit flow)."""
    res = query_frames({"profiles": demo_profiles}, SELF_JOIN, default_schema(), None)
    plain = _plain(demo_profiles, SELF_JOIN)
    got = sorted(zip(res.table["a_id"].to_pylist(), res.table["b_id"].to_pylist(), strict=True))
    assert got == plain and len(plain) > 1000
    first = REG.mask(["douyin", "duoshan"])
    expected = sorted(
        (a, b, (ha or 1) | (hb or 1) | first)
        for a, b, ha, hb in _plain(
            demo_profiles,
            "SELECT a.subject_id, b.subject_id, a.handle_origins, b.handle_origins"
            " FROM profiles AS a JOIN profiles AS b ON a.handle = b.handle"
            " AND a.subject_id < b.subject_id",
        )
    )
    rows = res.table.to_pylist()
    assert sorted((r["a_id"], r["b_id"], r["a_id__origins"]) for r in rows) == expected
    assert all(r["a_id__origins"] == r["b_id__origins"] for r in rows)
    assert sum(1 for r in rows if r["a_id__origins"] & PLATFORM) > 1000


def test_self_join_under_masks_keeps_only_permitted_matches(
    demo_profiles: pa.Table, mask_policy: QueryPolicy
) -> None:
    """With mask obligations (test policy) the query runs, and exactly the pairs matched through
    handles the PDP clears are returned."""
    res = query_frames({"profiles": demo_profiles}, SELF_JOIN, default_schema(), mask_policy)
    nick = ("user.name.nickname",)
    expected = sorted(
        (a, b)
        for a, b, ha, hb in _plain(
            demo_profiles,
            "SELECT a.subject_id, b.subject_id, a.handle_origins, b.handle_origins"
            " FROM profiles AS a JOIN profiles AS b ON a.handle = b.handle"
            " AND a.subject_id < b.subject_id",
            app=mask_policy.app,
        )
        if mask_policy.row_strategy(nick, (ha or 1) | (hb or 1))[0] == "clear"
    )
    got = sorted(zip(res.table["a_id"].to_pylist(), res.table["b_id"].to_pylist(), strict=True))
    assert got == expected and len(expected) > 0
    assert all(not r["a_id__origins"] & PLATFORM for r in res.table.to_pylist())
    # a permitted join key (subject_id) is untouched by the injunction ...
    same = (
        "SELECT a.subject_id AS s, b.subject_id AS t FROM profiles AS a"
        " JOIN profiles AS b ON a.subject_id + 1 = b.subject_id"
    )
    r = rewrite(same, default_schema(), mask_policy)
    assert r.control_filters == ()
    out = query_frames({"profiles": demo_profiles}, same, default_schema(), mask_policy).table
    assert sorted(zip(out["s"].to_pylist(), out["t"].to_pylist(), strict=True)) == _plain(
        demo_profiles, same, app="douyin"
    )
    assert out.num_rows > 1000
    # ... but douyin never reads duoshan's rows (controller isolation, PIPL Art. 23): the join
    # of the two apps' accounts of one subject, thousands of pairs in the plain query, is empty
    across = (
        "SELECT a.subject_id AS s, a.app_id AS x, b.app_id AS y FROM profiles AS a"
        " JOIN profiles AS b ON a.subject_id = b.subject_id AND a.app_id < b.app_id"
    )
    assert len(_plain(demo_profiles, across)) > 1000
    out = query_frames({"profiles": demo_profiles}, across, default_schema(), mask_policy).table
    assert out.num_rows == 0

"""Row labels of derived tables (issue 4, L5): a table made by ``CREATE TABLE AS`` records, per
row, the origins that decided that the row exists (its query's WHERE / JOIN ON / GROUP BY...),
and every later query over it folds that row label into its outputs and checks it like a control
position. Before the fix, a table made from a self-join on WeChat/QQ handles under
``profile.display`` could be counted under ``social.friend_recommendation``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provguard.dataplane import LabelledStore
from provguard.policy import load_policy_dir
from provguard.policy.model import PolicySet
from provguard.provenance import default_registry
from provguard.sqlgen import (
    PLACEHOLDER,
    QueryError,
    QueryPolicy,
    QueryRefused,
    SchemaRegistry,
    default_schema,
    rewrite,
)
from provguard.sqlgen.schema import ROW_LABEL

from .conftest import AT, HANDLES, HASH_KEY, LABELS, make_profiles, random_profiles

ROOT = Path(__file__).resolve().parents[2]
REG = default_registry()
FIRST_PARTY = REG.mask(["douyin", "duoshan"])
NICK = ("user.name.nickname",)
MATCH = (
    "CREATE TABLE t AS SELECT a.subject_id AS a_id, b.subject_id AS b_id, a.avatar_key AS av"
    " FROM profiles AS a JOIN profiles AS b ON a.handle = b.handle AND a.subject_id < b.subject_id"
)
# queries over the matched table that read none of its protected values
READS = [
    "SELECT count(*) AS n FROM t",
    "SELECT 1 AS one FROM t",
    "SELECT count(*) AS n FROM (SELECT * FROM t) AS x",
    "WITH x AS (SELECT a_id FROM t) SELECT count(*) AS n FROM x",
    "SELECT p.subject_id FROM profiles AS p WHERE EXISTS (SELECT 1 FROM t)",
    "SELECT p.app_id, count(*) AS n FROM profiles AS p JOIN t ON t.a_id = p.subject_id"
    " GROUP BY p.app_id",
]


@pytest.fixture(scope="module")
def injunction() -> PolicySet:
    return load_policy_dir(ROOT / "policies")


def _qp(policy: PolicySet, purpose: str) -> QueryPolicy:
    return QueryPolicy(policy, REG, app="douyin", purpose=purpose, at=AT, hash_key=HASH_KEY)


@pytest.fixture()
def matched_store(tmp_path: Path, injunction: PolicySet) -> Iterator[LabelledStore]:
    store = LabelledStore(tmp_path / "data")
    store.data.write_table("profiles", random_profiles(60, seed=3))
    made = store.query(MATCH, _qp(injunction, "profile.display"))
    assert made.table.num_rows > 20  # the handles matched (display may use them)
    yield store


@pytest.mark.parametrize("sql", READS)
def test_rows_of_a_handle_join_cannot_be_counted_under_friend_recommendation(
    matched_store: LabelledStore, injunction: PolicySet, sql: str
) -> None:
    """The leak, reproduced: these queries read no handle, yet their answer exists only because
    of the forbidden matching. Each is refused (PG162) naming the injunction's rule."""
    with pytest.raises(QueryRefused) as err:
        matched_store.query(sql, _qp(injunction, "social.friend_recommendation"))
    assert err.value.rules == ("no-platform-profile-in-friend-recommendation",)
    assert err.value.clause == "FROM t"
    assert "its row label" in str(err.value) and "qq, unknown, wechat" in str(err.value)


def test_the_row_label_is_recorded_and_read_back(
    matched_store: LabelledStore, injunction: PolicySet
) -> None:
    spec = matched_store.schema.table("t")
    assert spec.row_label is not None
    assert spec.row_label.categories == NICK
    assert "profiles.handle" in spec.row_label.sources
    raw = matched_store.data.read_table("t").to_pylist()
    # controller isolation: the table was made by douyin from douyin's rows only, and is douyin's
    assert spec.controller == "douyin"
    profiles = [
        r for r in matched_store.data.read_table("profiles").to_pylist() if r["app_id"] == "douyin"
    ]
    expect = sorted(
        (a["subject_id"], b["subject_id"], (a["handle_origins"] or 1) | (b["handle_origins"] or 1))
        for a in profiles
        for b in profiles
        if a["handle"] is not None and a["handle"] == b["handle"]
        if a["subject_id"] < b["subject_id"]
    )
    got = sorted((r["a_id"], r["b_id"], r[ROW_LABEL] & ~FIRST_PARTY) for r in raw)
    assert got == expect
    assert all(r[ROW_LABEL] & FIRST_PARTY == FIRST_PARTY for r in raw)  # subject_id's label
    # where it is allowed, the count comes back labelled with every matched row's label
    count = matched_store.query("SELECT count(*) AS n FROM t", _qp(injunction, "profile.display"))
    label = 0
    for row in raw:
        label |= row[ROW_LABEL]
    assert count.table.to_pylist() == [{"n": len(raw), "n__origins": label}]
    # and a table made from t inherits t's row label (the chain cannot launder it)
    matched_store.query(
        "CREATE TABLE t2 AS SELECT a_id FROM t WHERE a_id > 3", _qp(injunction, "profile.display")
    )
    with pytest.raises(QueryRefused):
        matched_store.query(
            "SELECT count(*) AS n FROM t2", _qp(injunction, "social.friend_recommendation")
        )


def test_a_table_made_without_control_has_an_empty_row_label(
    tmp_path: Path, injunction: PolicySet
) -> None:
    """Counting a copy of profiles reveals nothing the policy forbids: no refusal."""
    store = LabelledStore(tmp_path / "data")
    store.data.write_table("profiles", random_profiles(20, seed=1))
    store.query(
        "CREATE TABLE c AS SELECT subject_id FROM profiles", _qp(injunction, "profile.display")
    )
    out = store.query(
        "SELECT count(*) AS n FROM c", _qp(injunction, "social.friend_recommendation")
    )
    # douyin's 10 of the 20 rows (controller isolation; random_profiles alternates the apps)
    assert out.table.to_pylist() == [{"n": 10, "n__origins": 0}]


def test_reserved_row_name(qpolicy: QueryPolicy) -> None:
    with pytest.raises(QueryError, match="reserved"):
        rewrite("CREATE TABLE t AS SELECT subject_id AS __row FROM profiles", default_schema())


# ---------------------------------------------------------------- differential, mask policy


def _make_t(profiles: pa.Table, display: QueryPolicy) -> tuple[pa.Table, SchemaRegistry]:
    r = rewrite(MATCH, default_schema(), display, dialect="duckdb")
    assert r.created_spec is not None
    con = duckdb.connect()
    con.register("profiles", profiles)
    try:
        t = con.sql(r.query_sql).to_arrow_table()
    finally:
        con.close()
    return t, default_schema().with_table("t", r.created_spec)


OVER_T = {
    "t_count": "SELECT count(*) AS n FROM t",
    "t_project": "SELECT a_id, av FROM t",
    "t_exists": "SELECT p.subject_id FROM profiles AS p WHERE EXISTS"
    " (SELECT 1 FROM t WHERE t.a_id = p.subject_id)",
}


def _oracle(name: str, rows: list[dict[str, Any]], qp: QueryPolicy) -> list[tuple[Any, ...]]:
    """What the PDP says, computed from profiles directly: t's rows are the matching pairs,
    each labelled ``a.handle | b.handle | first party``; a pair whose label the PDP does not
    clear for a nickname may not decide anything under friend recommendation."""
    pairs = []
    for a in rows:
        for b in rows:
            if a["handle"] is None or a["handle"] != b["handle"]:
                continue
            if not a["subject_id"] < b["subject_id"]:
                continue
            row = (a["handle_origins"] or 1) | (b["handle_origins"] or 1) | FIRST_PARTY
            if qp.row_strategy(NICK, row)[0] != "clear":
                continue
            pairs.append((a, b, row))
    if name == "t_count":
        label = 0
        for _, _, row in pairs:
            label |= row
        return [(len(pairs), label)]
    if name == "t_project":
        out = []
        cats = ("user.avatar", "user.name.nickname")
        for a, _, row in pairs:
            av_label = (a["avatar_origins"] or 1) | row
            _, strategy = qp.row_strategy(cats, av_label)
            # the row's own bits are cleared; an avatar's wechat/qq nullifies, unknown withholds
            assert strategy in (None, "nullify", "placeholder"), strategy
            av = {None: a["avatar_key"], "nullify": None, "placeholder": PLACEHOLDER}[strategy]
            # a_id carries the join's categories (nickname), which text strategies may mask:
            # the column is returned as text
            out.append((str(a["subject_id"]), av, row, av_label))
        return sorted(out, key=repr)
    out = []
    for p in rows:
        label = 0
        for a, _, row in pairs:
            if a["subject_id"] == p["subject_id"]:
                label |= row | FIRST_PARTY
        if label:
            out.append((p["subject_id"], label | FIRST_PARTY))
    return sorted(out, key=repr)


def _sorted(t: pa.Table) -> list[tuple[Any, ...]]:
    return sorted((tuple(r.values()) for r in t.to_pylist()), key=repr)


rows_st = st.lists(
    st.tuples(
        st.integers(0, 6),
        st.sampled_from(["douyin", "duoshan"]),
        st.one_of(st.none(), st.integers(0, len(HANDLES) - 1)),
        st.sampled_from(LABELS),
        st.one_of(st.none(), st.integers(0, 3)),
        st.sampled_from([REG.mask(["user_input"]), REG.mask(["douyin"])]),
    ),
    min_size=1,
    max_size=20,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=rows_st, name=st.sampled_from(sorted(OVER_T)))
def test_pdp_vs_duckdb_over_a_derived_table(
    rows: list[Any], name: str, mask_policy: PolicySet, qpolicy: QueryPolicy
) -> None:
    """Under the mask policy the forbidden pairs are dropped at t's scan: the answer over t
    equals what the PDP allows on the pairs (and what the join itself would give)."""
    profiles = make_profiles(rows)
    t, schema = _make_t(profiles, _qp(mask_policy, "profile.display"))
    r = rewrite(OVER_T[name], schema, qpolicy, dialect="duckdb")
    assert any(f.clause == "FROM t" for f in r.control_filters)
    con = duckdb.connect()
    con.register("profiles", profiles)
    con.register("t", t)
    try:
        got = _sorted(con.sql(r.sql).to_arrow_table())
    finally:
        con.close()
    # controller isolation: t was made by douyin from douyin's rows only
    own = [r for r in profiles.to_pylist() if r["app_id"] == "douyin"]
    assert got == _oracle(name, own, qpolicy)


def test_count_over_t_equals_the_guarded_join(mask_policy: PolicySet, qpolicy: QueryPolicy) -> None:
    """Non-interference through the derived table: the count of t under friend recommendation
    is the count the join itself gives under it, whatever the forbidden handles hold."""
    profiles = random_profiles(80, seed=11)
    t, schema = _make_t(profiles, _qp(mask_policy, "profile.display"))
    direct = rewrite(
        "SELECT count(*) AS n FROM profiles AS a JOIN profiles AS b"
        " ON a.handle = b.handle AND a.subject_id < b.subject_id",
        default_schema(),
        qpolicy,
    )
    via_t = rewrite("SELECT count(*) AS n FROM t", schema, qpolicy)
    con = duckdb.connect()
    con.register("profiles", profiles)
    con.register("t", t)
    try:
        assert con.sql(via_t.sql).fetchall() == con.sql(direct.sql).fetchall()
        assert t.num_rows > con.sql(via_t.sql).fetchall()[0][0] > 0
    finally:
        con.close()


def test_pdp_vs_duckdb_vs_spark_over_a_derived_table(
    mask_policy: PolicySet, qpolicy: QueryPolicy, spark: Any
) -> None:
    profiles = random_profiles(50, seed=5)
    t, schema = _make_t(profiles, _qp(mask_policy, "profile.display"))
    spark.register("profiles", profiles)
    spark.register("t", t)
    con = duckdb.connect()
    con.register("profiles", profiles)
    con.register("t", t)
    try:
        for name, sql in OVER_T.items():
            d = rewrite(sql, schema, qpolicy, dialect="duckdb")
            s = rewrite(sql, schema, qpolicy, dialect="spark")
            d_rows = _sorted(con.sql(d.sql).to_arrow_table())
            s_rows = _sorted(spark.query(s.sql, s.label_columns))  # type: ignore[attr-defined]
            assert s_rows == d_rows, name
            assert d_rows == _oracle(name, profiles.to_pylist(), qpolicy), name
    finally:
        con.close()


def test_a_window_is_labelled_with_why_its_partition_rows_exist(
    tmp_path: Path, mask_policy: PolicySet, qpolicy: QueryPolicy
) -> None:
    """``count(*) OVER ()`` after a ``WHERE`` on handles counts rows that exist because of the
    handles: its label is the ``BIT_OR`` over the partition of the rows' control labels, not
    only its own row's. Before, a table made from it under ``profile.display`` returned, under
    friend recommendation, counts that included the forbidden rows with a clean label."""
    profiles = random_profiles(40, seed=2)
    sql = "SELECT subject_id, count(*) OVER () AS c FROM profiles WHERE handle LIKE '%e%'"
    r = rewrite(sql, default_schema(), None)
    con = duckdb.connect()
    con.register("profiles", profiles)
    try:
        got = con.sql(r.sql).to_arrow_table().to_pylist()
    finally:
        con.close()
    passing = [p for p in profiles.to_pylist() if p["handle"] is not None and "e" in p["handle"]]
    label = 0
    for p in passing:
        label |= p["handle_origins"] or 1
    assert got and {row["c__origins"] for row in got} == {label}
    assert {row["c"] for row in got} == {len(passing)}

    store = LabelledStore(tmp_path / "data")
    store.data.write_table("profiles", profiles)
    store.query(f"CREATE TABLE w AS {sql}", _qp(mask_policy, "profile.display"))
    out = store.query("SELECT subject_id, c FROM w", qpolicy).table.to_pylist()
    forbidden = REG.mask(["wechat", "qq", "unknown"])
    assert label & forbidden  # some counted rows were forbidden ...
    assert out and all(row["c"] is None for row in out)  # ... so no count comes back
    assert store.schema.table("w").columns["c"].derived


def test_create_table_on_spark_records_the_same_row_labels(
    tmp_path: Path, mask_policy: PolicySet, spark: Any
) -> None:
    """A CTAS run on Spark writes the row label converted back to uint64, equal to DuckDB's."""
    store = LabelledStore(tmp_path / "data")
    store.data.write_table("profiles", random_profiles(40, seed=9))
    display = _qp(mask_policy, "profile.display")
    on_spark = store.query(MATCH, display, engine="spark", spark=spark)
    on_duck = store.query(MATCH.replace("TABLE t ", "TABLE t_duck "), display)
    assert on_spark.table.schema.field(ROW_LABEL).type == pa.uint64()
    assert _sorted(on_spark.table) == _sorted(on_duck.table)
    assert on_spark.table.num_rows > 0

"""The execution plan of a DuckDB ``SELECT`` (SQL without the per-row constant label bits,
label normalisation and masks, then a post-fetch step per output in pyarrow) returns exactly
what the self-contained rewritten SQL returns: values and labels, cell by cell, on generated
labelled tables (NULL and 0 labels included), under masks, stored hashes, stored masks and
labels normalised at load, for projections, aggregates, joins, unions, windows, subqueries."""

from __future__ import annotations

from typing import Any

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provguard.dataplane import (
    normalised_labels_select,
    query_frames,
    run_duckdb,
    stored_mask_select,
    with_stored_hashes,
)
from provguard.policy.model import PolicySet
from provguard.provenance import default_registry
from provguard.sqlgen import (
    QueryPolicy,
    QueryRefused,
    Rewritten,
    SchemaRegistry,
    default_schema,
    rewrite,
)
from provguard.sqlgen.plan import ExecutionPlan, PostStep
from provguard.sqlgen.schema import PROFILES

from .conftest import AT, GOLDEN, HANDLES, HASH_KEY, LABELS, make_profiles, random_profiles

CORPUS = [
    p.read_text(encoding="utf-8")
    for p in sorted((GOLDEN / "corpus").glob("*.sql"))
    if not p.read_text(encoding="utf-8").lstrip().upper().startswith("CREATE")
]
EXTRA = [
    # the bench's filter+project: constant bits of the WHERE column, a constant output label
    "SELECT subject_id, handle, avatar_key FROM profiles WHERE subject_id % 3 = 1",
    # ORDER BY an output that is masked (the rename must not change what ORDER BY reads)
    "SELECT handle AS h, subject_id FROM profiles ORDER BY h, subject_id LIMIT 7",
    "SELECT p.subject_id, p.handle AS h FROM profiles AS p ORDER BY p.created_at LIMIT 9",
    # global aggregate (empty input: label 0), grouped aggregate with constant keys
    "SELECT count(*) AS n, max(handle) AS m FROM profiles WHERE subject_id < 0",
    # a masked value (0, not NULL) with label 0: the "label = 0 is unknown" test decides
    "SELECT count(handle) AS n FROM profiles WHERE subject_id < 0",
    "SELECT count(*) AS n, max(handle) AS m FROM profiles",
    "SELECT app_id, max(handle) AS m, count(*) AS n FROM profiles GROUP BY app_id",
    # an outer join pads NULL labels (read as unknown)
    "SELECT a.subject_id, b.handle, b.avatar_key FROM profiles AS a LEFT JOIN profiles AS b"
    " ON a.subject_id = b.subject_id + 1",
    # a derived output over a masked column; a literal output
    "SELECT subject_id, upper(handle) AS u, 'x' AS lit FROM profiles WHERE app_id = 'duoshan'",
    # constant bits that meet masks (grant_id is {wechat, qq})
    "SELECT handle, avatar_key FROM profiles WHERE grant_id IS NOT NULL",
    # a CTE and a union of masked columns
    "WITH c AS (SELECT subject_id, handle FROM profiles WHERE app_id = 'douyin')"
    " SELECT c.subject_id, c.handle FROM c",
    "SELECT handle AS v, subject_id FROM profiles UNION ALL SELECT avatar_key, subject_id"
    " FROM profiles",
    # integer and timestamp outputs under text masks / none
    "SELECT subject_id, created_at, handle_grant FROM profiles WHERE subject_id % 2 = 0",
    # packed labels: two scans of one table, each with two labels; a label fetched twice; a
    # window; DISTINCT and an outer join (never packed); a WHERE on a labelled column
    "SELECT a.handle, b.avatar_key, a.avatar_key AS a2, b.handle AS h2 FROM profiles AS a"
    " JOIN profiles AS b ON a.subject_id = b.subject_id + 1",
    "SELECT handle, avatar_key, handle AS again FROM profiles",
    "SELECT handle, avatar_key, count(*) OVER (PARTITION BY app_id) AS c FROM profiles",
    "SELECT DISTINCT handle, avatar_key FROM profiles",
    "SELECT a.handle, a.avatar_key, b.handle AS h2 FROM profiles AS a LEFT JOIN profiles AS b"
    " ON a.subject_id = b.subject_id + 1",
    "SELECT handle, avatar_key FROM profiles WHERE avatar_key IS NOT NULL",
]
QUERIES = CORPUS + EXTRA


def _policy(policy: PolicySet) -> QueryPolicy:
    return QueryPolicy(
        policy,
        default_registry(),
        app="douyin",
        purpose="social.friend_recommendation",
        at=AT,
        hash_key=HASH_KEY,
    )


def _rows(t: pa.Table) -> list[tuple[Any, ...]]:
    return sorted((tuple(r.values()) for r in t.to_pylist()), key=repr)


def _same(plan: pa.Table, direct: pa.Table, sql: str) -> None:
    assert plan.schema.names == direct.schema.names, sql
    assert plan.schema.types == direct.schema.types, sql
    assert _rows(plan) == _rows(direct), sql


_label = st.sampled_from([*LABELS, None])
_row = st.tuples(
    st.sampled_from(["douyin", "duoshan"]),
    st.one_of(st.none(), st.integers(0, len(HANDLES) - 1)),
    _label,
    st.one_of(st.none(), st.integers(0, 5)),
    _label,
)

#: (variant, table maker, rewrites) built once: the rewrites do not depend on the rows
_SETUP: dict[str, Any] = {}


def _setup(mask_policy: PolicySet) -> dict[str, Any]:
    if _SETUP:
        return _SETUP
    qp = _policy(mask_policy)
    probe = random_profiles(4, seed=1)
    _, hspec = with_stored_hashes(probe, PROFILES, HASH_KEY)
    hashed = SchemaRegistry(tables={"profiles": hspec})
    mselect, mspec, _ = stored_mask_select("profiles", hashed, qp)
    masked = SchemaRegistry(tables={"profiles": mspec})
    nsql, nspec = normalised_labels_select("profiles", PROFILES, 1)
    normalised = SchemaRegistry(tables={"profiles": nspec})
    nmselect, nmspec, _ = stored_mask_select("profiles", normalised, qp)
    norm_masked = SchemaRegistry(tables={"profiles": nmspec})
    psql, pspec = normalised_labels_select("profiles", PROFILES, 1, pack=True)
    assert pspec.labels_packed
    packed = SchemaRegistry(tables={"profiles": pspec})
    pmselect, pmspec, _ = stored_mask_select("profiles", packed, qp)
    packed_masked = SchemaRegistry(tables={"profiles": pmspec})
    variants: dict[str, tuple[SchemaRegistry, list[str]]] = {
        "computed": (default_schema(), []),
        "stored hashes": (hashed, []),
        "stored masks": (masked, [mselect]),
        "normalised": (normalised, [nsql]),
        "normalised + stored masks": (norm_masked, [nsql, nmselect]),
        "packed": (packed, [psql]),
        "packed + stored masks": (packed_masked, [psql, pmselect]),
    }
    rewrites: list[tuple[str, str, Rewritten]] = []
    for name, (schema, _) in variants.items():
        # without a policy nothing reads a stored hash or mask: two variants are enough
        for policy in (qp, None) if name in ("computed", "normalised", "packed") else (qp,):
            for sql in QUERIES:
                try:
                    rw = rewrite(sql, schema, policy)
                except QueryRefused:
                    continue
                rewrites.append((name, sql, rw))
    _SETUP.update(variants=variants, rewrites=rewrites)
    return _SETUP


def _tables(t: pa.Table) -> dict[str, pa.Table]:
    """Each variant's stored table made from the labelled rows ``t``."""
    out: dict[str, pa.Table] = {}
    hashed, _ = with_stored_hashes(t, PROFILES, HASH_KEY)
    con = duckdb.connect()
    try:
        for name, (_, steps) in _SETUP["variants"].items():
            cur = hashed if name in ("stored hashes", "stored masks") else t
            for sql in steps:
                con.register("profiles", cur)
                cur = con.sql(sql).to_arrow_table()
            out[name] = cur
    finally:
        con.close()
    return out


def test_plans_exist_and_differ(mask_policy: PolicySet) -> None:
    """The plan is built for DuckDB SELECTs and differs from the self-contained text where the
    constant bits / normalisation / masks moved out; never for CREATE TABLE AS or Spark."""
    setup = _setup(mask_policy)
    planned = [rw for _, _, rw in setup["rewrites"] if rw.plan is not None]
    assert len(planned) >= len(setup["rewrites"]) // 2
    for rw in planned:
        assert rw.plan is not None and rw.plan.sql != rw.sql
        assert len(rw.plan.steps) == len(rw.columns)
    qp = _policy(mask_policy)
    sql = "SELECT subject_id, handle, avatar_key FROM profiles WHERE subject_id % 100 = 7"
    assert rewrite(sql, default_schema(), qp, dialect="spark").plan is None
    assert rewrite("CREATE TABLE f AS " + sql, default_schema(), qp).plan is None
    # no policy: the labels' '| 192' and COALESCE(NULLIF(...)) move out of the SQL
    bare = rewrite(sql, default_schema(), None)
    assert bare.plan is not None
    assert "| 192" in bare.sql and "NULLIF" in bare.sql
    assert "192" not in bare.plan.sql and "NULLIF" not in bare.plan.sql
    assert "_pg_q" not in bare.plan.sql  # a pure rename: flattened
    assert bare.plan.steps[0] == PostStep("subject_id", "subject_id__origins", None, const=192)
    assert bare.plan.steps[1] == PostStep(
        "handle", "handle__origins", "handle__origins", normalise=True, const=192
    )


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(_row, min_size=0, max_size=30))
def test_plan_equals_self_contained_sql(rows: list[Any], mask_policy: PolicySet) -> None:
    """Hypothesis tables: for every query, variant and policy, the plan (SQL + post-fetch
    steps) answers exactly as the self-contained SQL, values and labels cell by cell."""
    setup = _setup(mask_policy)
    t = make_profiles([(i, app, h, hl, a, al) for i, (app, h, hl, a, al) in enumerate(rows)])
    tables = _tables(t)
    cons: dict[str, duckdb.DuckDBPyConnection] = {}
    try:
        for name, table in tables.items():
            con = duckdb.connect(config={"threads": 1})
            con.register("profiles", table)
            cons[name] = con
        for name, sql, rw in setup["rewrites"]:
            con = cons[name]
            direct = con.sql(rw.sql).to_arrow_table()
            if rw.plan is None:
                _same(run_duckdb(con, rw), direct, f"{name}: {sql}")
                continue
            # what run_duckdb returns, without its fallback (every text mask here is over a
            # string or an integer, so finish() must not decline)
            finished = rw.plan.finish(con.sql(rw.plan.sql).to_arrow_table())
            assert finished is not None, sql
            _same(finished, direct, f"{name}: {sql}")
    finally:
        for con in cons.values():
            con.close()


def test_plan_moves_the_masks_out(mask_policy: PolicySet) -> None:
    """Default path (stored hashes, raw labels): filter+project fetches values, stored hash and
    raw labels with no CASE; stored masks: the companion, no CASE either."""
    setup = _setup(mask_policy)
    qp = _policy(mask_policy)
    sql = "SELECT subject_id, handle, avatar_key FROM profiles WHERE subject_id % 100 = 7"
    hashed = setup["variants"]["stored hashes"][0]
    rw = rewrite(sql, hashed, qp)
    assert rw.plan is not None
    assert "CASE" in rw.sql and "CASE" not in rw.plan.sql
    assert "handle__hmac" in rw.plan.sql and "SHA256" not in rw.plan.sql
    handle = rw.plan.steps[1]
    assert [s for s, _ in handle.masks] == ["placeholder", "redact", "hash"]
    assert handle.as_text and handle.hash_column == "_pg_hash1"
    # without a stored hash the HMAC stays in SQL, and the label it reads stays whole
    computed = rewrite(sql, default_schema(), qp)
    assert computed.plan is not None and "SHA256" in computed.plan.sql
    assert computed.plan.steps[1].masks == () and computed.plan.steps[1].const == 0
    norm_masked = setup["variants"]["normalised + stored masks"][0]
    nm = rewrite(sql, norm_masked, qp)
    assert nm.plan is not None and "CASE" not in nm.plan.sql and "| 192" not in nm.plan.sql
    assert "| 192" in nm.sql


def test_packed_labels_are_fetched_once_per_scan(mask_policy: PolicySet) -> None:
    """On a table with packed labels, two labels of one scan are fetched as its one packed
    column (two scans: two); one label alone, an aggregate, DISTINCT and an outer join read
    the label columns as before."""
    setup = _setup(mask_policy)
    qp = _policy(mask_policy)
    packed = setup["variants"]["packed + stored masks"][0]
    sql = "SELECT subject_id, handle, avatar_key FROM profiles WHERE subject_id % 100 = 7"
    rw = rewrite(sql, packed, qp)
    assert rw.plan is not None
    assert "__packed__origins" in rw.plan.sql and "_origins AS" not in rw.plan.sql.replace(
        "__packed__origins AS", ""
    )
    assert "__packed__origins" not in rw.sql  # the self-contained text reads the labels
    handle, avatar = rw.plan.steps[1], rw.plan.steps[2]
    assert (handle.fetch_label, handle.shift, handle.width) == ("_pg_packed0", 16, 16)
    assert (avatar.fetch_label, avatar.shift, avatar.width) == ("_pg_packed0", 0, 16)
    assert handle.const == avatar.const == 192
    join = rewrite(QUERIES[QUERIES.index(EXTRA[-6])], packed, qp)
    assert join.plan is not None and join.plan.sql.count("__packed__origins") == 2
    for unpacked in (
        "SELECT subject_id, handle FROM profiles",
        "SELECT app_id, max(handle) AS m, max(avatar_key) AS a FROM profiles GROUP BY app_id",
        "SELECT DISTINCT handle, avatar_key FROM profiles",
        "SELECT a.handle, a.avatar_key, b.handle AS h2 FROM profiles AS a LEFT JOIN profiles"
        " AS b ON a.subject_id = b.subject_id + 1",
    ):
        plan = rewrite(unpacked, packed, qp).plan
        assert plan is None or "__packed__origins" not in plan.sql, unpacked


def test_text_cast_falls_back_for_other_types(mask_policy: PolicySet) -> None:
    """A text mask over a type whose text form only DuckDB gives (a timestamp) is not
    reproduced in pyarrow: finish() declines and run_duckdb runs the self-contained SQL."""
    steps = (PostStep("t", "t__origins", "t__origins", masks=(("placeholder", 4),), as_text=True),)
    plan = ExecutionPlan("SELECT 1", steps, 1, "[withheld]", "***")
    fetched = pa.table(
        {
            "t": pa.array([0, 1], pa.timestamp("us")),
            "t__origins": pa.array([4, 2], pa.uint64()),
        }
    )
    assert plan.finish(fetched) is None
    ints = fetched.set_column(0, "t", pa.array([5, None], pa.int64()))
    done = plan.finish(ints)
    assert done is not None
    assert done["t"].to_pylist() == ["[withheld]", None]
    assert done.schema.types == [pa.string(), pa.uint64()]


def test_query_frames_uses_the_plan(mask_policy: PolicySet) -> None:
    """The frames entry point answers through the plan, as the SQL does."""
    t = random_profiles(50, seed=11)
    qp = _policy(mask_policy)
    sql = "SELECT subject_id, handle, avatar_key FROM profiles WHERE subject_id % 3 = 1"
    got = query_frames({"profiles": t}, sql, default_schema(), qp)
    assert got.rewritten.plan is not None
    con = duckdb.connect()
    con.register("profiles", t)
    try:
        _same(got.table, con.sql(got.rewritten.sql).to_arrow_table(), sql)
    finally:
        con.close()


@pytest.mark.parametrize("dialect", ["spark", "postgres"])
def test_other_dialects_have_no_plan(dialect: str) -> None:
    sql = "SELECT subject_id, handle FROM profiles WHERE subject_id % 3 = 1"
    assert rewrite(sql, default_schema(), None, dialect=dialect).plan is None


def test_run_duckdb_falls_back_when_pyarrow_declines(mask_policy: PolicySet) -> None:
    """A post-fetch step pyarrow's kernels cannot compute (here: a placeholder mask on an
    integer value with no text cast, so the placeholder scalar cannot be built) makes
    ``run_duckdb`` answer with the self-contained SQL instead of failing."""
    import dataclasses

    t = random_profiles(30, seed=3)
    qp = _policy(mask_policy)
    sql = "SELECT subject_id, avatar_key FROM profiles WHERE subject_id % 2 = 0"
    rw = rewrite(sql, default_schema(), qp)
    assert rw.plan is not None
    bad = dataclasses.replace(rw.plan.steps[0], masks=(("placeholder", 192),), as_text=False)
    broken = dataclasses.replace(
        rw, plan=dataclasses.replace(rw.plan, steps=(bad, *rw.plan.steps[1:]))
    )
    assert broken.plan is not None
    con = duckdb.connect()
    con.register("profiles", t)
    try:
        with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)):
            broken.plan.finish(con.sql(broken.plan.sql).to_arrow_table())
        _same(run_duckdb(con, broken), con.sql(rw.sql).to_arrow_table(), sql)
    finally:
        con.close()


@pytest.mark.parametrize("alias", ["_pg_packed0", "_PG_HASH0", "_pg_mask1", "_pg_q"])
def test_the_plans_hidden_column_names_are_reserved(alias: str) -> None:
    """An output named like a hidden column of the plan (the packed labels, a stored hash or
    mask) would collide with it after fetch: refused with PG160 (fresh user 13, M1)."""
    from provguard.sqlgen import QueryError

    with pytest.raises(QueryError, match="prefix '_pg_' is reserved"):
        rewrite(f"SELECT handle AS {alias}, avatar_key FROM profiles", default_schema(), None)

"""Lineage, refusal, row filters, CREATE TABLE AS labels, declassification, CLI."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.cli.query import query_app
from provguard.dataplane import LabelledStore, query_frames
from provguard.errors import InputError
from provguard.policy import load_policy_dir
from provguard.provenance import default_registry
from provguard.sqlgen import (
    ColumnSpec,
    LineageError,
    QueryError,
    QueryPolicy,
    QueryRefused,
    RowSpec,
    SchemaRegistry,
    TableSpec,
    default_schema,
    lineage,
    rewrite,
)

from .conftest import AT, REG, make_profiles, random_profiles

INJUNCTION = Path(__file__).resolve().parents[2] / "policies"


def _injunction(app: str = "douyin") -> QueryPolicy:
    return QueryPolicy(
        load_policy_dir(INJUNCTION),
        default_registry(),
        app=app,
        purpose="social.friend_recommendation",
        at=AT,
    )


def test_lineage_of_join_expression_and_aggregate() -> None:
    got = lineage(
        "SELECT a.subject_id, a.handle || b.avatar_key AS k, count(*) OVER () AS n"
        " FROM profiles a JOIN profiles b USING (subject_id)",
        default_schema(),
    )
    by = {c.name: c for c in got}
    assert by["subject_id"].sources == (("profiles", "subject_id"),)
    assert by["k"].sources == (("profiles", "avatar_key"), ("profiles", "handle"))
    assert by["k"].categories == ("user.avatar", "user.name.nickname")
    assert by["n"].sources == ()


def test_injunction_refuses_platform_handles_for_friend_recommendation() -> None:
    with pytest.raises(QueryRefused) as err:
        rewrite("SELECT subject_id, handle FROM profiles", default_schema(), _injunction())
    assert err.value.code == "PG162"
    assert err.value.column == "handle"
    assert err.value.rules == ("no-platform-profile-in-friend-recommendation",)
    # derived through a CTE and an aggregate: still refused
    with pytest.raises(QueryRefused):
        rewrite(
            "WITH c AS (SELECT upper(handle) AS u FROM profiles) SELECT count(DISTINCT u) AS n"
            " FROM c",
            default_schema(),
            _injunction(),
        )
    # columns the injunction does not cover pass, labelled
    r = rewrite("SELECT subject_id, app_id FROM profiles", default_schema(), _injunction())
    assert [c.origins_column for c in r.columns] == ["subject_id__origins", "app_id__origins"]
    # the same query for another purpose is allowed
    other = QueryPolicy(
        load_policy_dir(INJUNCTION), REG, app="douyin", purpose="profile.display", at=AT
    )
    assert rewrite("SELECT handle FROM profiles", default_schema(), other).columns[0].masks == ()
    # before the order took effect nothing is denied
    before = QueryPolicy(
        load_policy_dir(INJUNCTION),
        REG,
        app="douyin",
        purpose="social.friend_recommendation",
        at=datetime(2019, 3, 1, tzinfo=UTC),
    )
    rewrite("SELECT handle FROM profiles", default_schema(), before)


@pytest.mark.parametrize(
    ("sql", "error"),
    [
        ("SELECT handle FROM profiles INTERSECT SELECT handle FROM profiles", LineageError),
        ("SELECT handle FROM profiles EXCEPT SELECT handle FROM profiles", LineageError),
        (
            "WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r WHERE n < 3)"
            " SELECT n FROM r",
            LineageError,
        ),
        ("SELECT u FROM profiles, UNNEST([handle]) AS t(u)", QueryError),
        ("SELECT * FROM read_parquet('x.parquet')", QueryError),
        ("SELECT handle_origins FROM profiles", QueryError),
        ("SELECT handle AS x__origins FROM profiles", QueryError),
        ("SELECT handle FROM unknown_table", QueryError),
        ("DELETE FROM profiles", QueryError),
        ("SELECT handle FROM profiles; SELECT 1", QueryError),
        ("SELEC handle", QueryError),
        ("SELECT DISTINCT count(*) AS n FROM profiles", LineageError),
        ("SELECT app_id, sum(count(*)) OVER () AS s FROM profiles GROUP BY app_id", LineageError),
        # DuckDB star expressions pick columns by pattern at run time (fresh user 10, H2)
        ("SELECT * LIKE 'handle' FROM profiles", LineageError),
        ("SELECT * SIMILAR TO 'handle' FROM profiles", LineageError),
        ("SELECT * GLOB 'hand*' FROM profiles", LineageError),
        ("SELECT p.* LIKE 'avatar_key' FROM profiles AS p", LineageError),
        ("SELECT struct_pack(*) AS s FROM profiles", LineageError),
        # BY NAME pairs branch columns by name, the lineage by position (H1)
        (
            "SELECT x FROM (SELECT CAST(subject_id AS VARCHAR) AS x, app_id AS y FROM profiles"
            " UNION ALL BY NAME SELECT app_id AS y, handle AS x FROM profiles)",
            LineageError,
        ),
        ("SELECT handle FROM profiles UNION BY NAME SELECT handle FROM profiles", LineageError),
    ],
)
def test_unsupported_constructs_are_refused(sql: str, error: type[Exception]) -> None:
    with pytest.raises(error) as exc:
        rewrite(sql, default_schema())
    assert str(exc.value).startswith("[PG16")


@pytest.mark.parametrize("sql", ["EXPLAIN SELECT handle FROM profiles", "PREPARE q AS SELECT 1"])
def test_an_opaque_statement_is_named_and_sqlglot_does_not_warn(
    sql: str, caplog: pytest.LogCaptureFixture
) -> None:
    """sqlglot parses these as an opaque Command, warned once per parse and was named
    "COMMAND" in the refusal (fresh user 10, L3)."""
    with caplog.at_level("WARNING"), pytest.raises(QueryError) as exc:
        rewrite(sql, default_schema())
    assert str(exc.value).endswith(f"not {sql.split()[0]}")
    assert not [r for r in caplog.records if r.name.startswith("sqlglot")]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(*) AS n FROM profiles",
        "SELECT app_id, count(*) OVER () AS n FROM profiles",
        "SELECT * EXCLUDE (handle) FROM profiles",
        "SELECT p.* FROM profiles AS p",
        "SELECT handle FROM profiles UNION ALL SELECT handle FROM profiles",
    ],
)
def test_stars_the_qualifier_expands_and_positional_set_operations_still_run(sql: str) -> None:
    assert rewrite(sql, default_schema()).sql


def test_row_filter_from_rules(qpolicy: QueryPolicy) -> None:
    friends = TableSpec(
        columns={
            "src": ColumnSpec(origins=("douyin",)),
            "dst": ColumnSpec(origins_column="dst_o"),
        },
        rows=RowSpec(category="user.social.friend_list", origins_column="edge_origins"),
    )
    schema = default_schema().with_table("friends", friends)
    import pyarrow as pa

    wechat, user, qq = REG.mask(["wechat"]), REG.mask(["user_input"]), REG.mask(["qq"])
    table = pa.table(
        {
            "src": [1, 1, 2, 3],
            "dst": [2, 3, 3, 1],
            "dst_o": pa.array([user] * 4, pa.uint64()),
            "edge_origins": pa.array([wechat, user, qq, user], pa.uint64()),
        }
    )
    res = query_frames({"friends": table}, "SELECT src, dst FROM friends", schema, qpolicy)
    assert res.rewritten.filtered == {"friends": wechat | qq}
    assert sorted(zip(res.table["src"].to_pylist(), res.table["dst"].to_pylist(), strict=True)) == [
        (1, 3),
        (3, 1),
    ]
    # without a policy every row is returned
    assert (
        query_frames({"friends": table}, "SELECT src FROM friends", schema, None).table.num_rows
        == 4
    )


def test_ctas_keeps_labels_and_declassify_is_audited(tmp_path: Path, qpolicy: QueryPolicy) -> None:
    store = LabelledStore(tmp_path / "data")
    wechat, user = REG.mask(["wechat"]), REG.mask(["user_input"])
    store.data.write_table(
        "profiles",
        make_profiles([(1, "douyin", 1, wechat, 2, user), (2, "douyin", 0, user, 3, user)]),
    )
    # a CREATE TABLE AS over profiles (rows of several controllers) needs an app: made by
    # douyin for display (no deny), it reads douyin's rows and belongs to douyin
    display = QueryPolicy(qpolicy.policy, REG, app="douyin", purpose="profile.display", at=AT)
    created = store.query(
        "CREATE TABLE feats AS SELECT subject_id, lower(handle) AS h FROM profiles", display
    )
    assert created.table.column_names == [
        "subject_id",
        "h",
        "subject_id__origins",
        "h__origins",
        "__row__origins",  # why each row exists (no control here: 0)
    ]
    assert created.table["__row__origins"].to_pylist() == [0, 0]
    assert created.created == "created"
    spec = store.schema.table("feats")
    assert spec.columns["h"] == ColumnSpec(
        categories=("user.name.nickname",), origins_column="h__origins", derived=True
    )
    # the derived table is labelled: the policy masks it like its source
    out = store.query("SELECT subject_id, h FROM feats ORDER BY subject_id", qpolicy).table
    # ORDER BY subject_id is an implicit flow: its first-party label joins every output's
    first = REG.mask(["douyin", "duoshan"])
    assert out["h__origins"].to_pylist() == [wechat | first, user | first]
    assert out["h"].to_pylist()[1] == "小明"
    # lower(handle) was computed: a table does not launder it into a bare column, so the
    # wechat row is nullified, not hashed (a hash of a computed value is an oracle)
    assert out["h"].to_pylist()[0] is None
    with pytest.raises(QueryError):
        store.query("CREATE TABLE feats AS SELECT subject_id FROM profiles", display)
    assert store.schema.table("feats").controller == "douyin"

    audit = SqliteAuditLog(tmp_path / "audit.db")
    at = datetime(2019, 4, 1, tzinfo=UTC)
    with pytest.raises(InputError):
        store.declassify("feats", "h", "wechat", actor=" ", reason="x", at=at, audit=audit)
    with pytest.raises(InputError):
        store.declassify(
            "feats",
            "h",
            "wechat",
            actor="a",
            reason="r",
            at=at,
            audit=audit,
            where="subject_id IN (SELECT 1)",
        )
    assert audit.count() == 0
    res = store.declassify(
        "feats",
        "h",
        "wechat",
        actor="dpo@douyin",
        reason="user re-entered the handle in the app",
        at=at,
        audit=audit,
        where="subject_id = 1",
    )
    assert (res.rows, res.changes) == (1, ((wechat, 0, 1),))
    entry = next(audit.entries(kind="declassify"))
    assert entry.payload["actor"] == "dpo@douyin"
    assert entry.payload["changes"] == [{"after": [], "before": ["wechat"], "rows": 1}]
    assert audit.verify().ok
    after = store.query("SELECT subject_id, h FROM feats ORDER BY subject_id", qpolicy).table
    # label 0 now = no recorded origin, read as unknown: fail closed (the unknown rule's
    # placeholder, nullified here since h was computed)
    assert after["h__origins"].to_pylist() == [REG.mask(["unknown"]) | first, user | first]
    assert after["h"].to_pylist() == [None, "小明"]


def test_schema_registry_errors(tmp_path: Path) -> None:
    bad = tmp_path / "s.yaml"
    bad.write_text("tables:\n  t:\n    columns:\n      c: {categories: [user.nope]}\n")
    with pytest.raises(InputError, match=r"user\.nope"):
        SchemaRegistry.load(bad)
    with pytest.raises(InputError):
        SchemaRegistry.load(tmp_path / "missing.yaml")


def test_real_job_output_and_cli(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = LabelledStore(data)
    store.data.write_table("profiles", random_profiles(50, seed=11))
    from provguard.adapters.control_sqlite import SqlControlStore

    SqlControlStore(tmp_path / "control.db")  # every query is audited in the control store
    runner = CliRunner()
    args = ["--app", "douyin", "--purpose", "social.friend_recommendation", "--store", str(data)]
    args += ["--at", "2019-06-01", "--policy", str(INJUNCTION)]
    ok = runner.invoke(
        query_app,
        [
            *args,
            "--json",
            "--raw-labels",
            "SELECT app_id, count(*) AS n FROM profiles GROUP BY app_id ORDER BY app_id",
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert '"n": 25' in ok.output and '"n__origins": 192' in ok.output
    refused = runner.invoke(query_app, [*args, "SELECT handle FROM profiles"])
    assert refused.exit_code == 2
    assert "PG162" in refused.output
    # a misspelt app is not "not_applicable everywhere": it is refused before anything runs
    typo = [a if a != "douyin" else "dooyin" for a in args]
    res = runner.invoke(query_app, [*typo, "SELECT handle FROM profiles"])
    assert res.exit_code == 2 and "PG100" in res.output and "did you mean 'douyin'" in res.output
    res = runner.invoke(query_app, [*typo, "--any-app", "SELECT app_id FROM profiles"])
    assert res.exit_code == 0, res.output


def test_labels_match_duckdb_plain_values(qpolicy: QueryPolicy) -> None:
    """Without masks the rewritten query returns the plain query's values, plus labels."""
    t = random_profiles(80, seed=5)
    con = duckdb.connect()
    con.register("profiles", t)
    sql = "SELECT subject_id, handle, avatar_key FROM profiles ORDER BY created_at"
    plain = con.sql(sql).fetchall()
    r = rewrite(sql, default_schema(), None)
    got = con.sql(r.sql).fetchall()
    assert [g[:3] for g in got] == plain
    # the handle's own label (0 read as unknown) plus ORDER BY created_at's (implicit flow)
    first = REG.mask(["douyin", "duoshan"])
    assert [g[4] for g in got] == [(o or 1) | first for o in t["handle_origins"].to_pylist()]

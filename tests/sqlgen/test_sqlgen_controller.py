"""Controller isolation (fresh user 6, F6): app X reads a table with a controller column only
through the row filter ``<controller_column> = 'X'``, in every scope; a table made by X's
``CREATE TABLE AS`` belongs to X."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from provguard.dataplane import LabelledStore
from provguard.errors import InputError
from provguard.policy import load_policy_dir
from provguard.policy.model import PolicySet
from provguard.sqlgen import (
    QueryPolicy,
    QueryRefused,
    SchemaRegistry,
    TableSpec,
    default_schema,
    job_schema,
    rewrite,
)
from provguard.sqlgen.schema import ANY_CONTROLLER, PROFILES

from .conftest import AT, REG, make_profiles, random_profiles

INJUNCTION = Path(__file__).resolve().parents[2] / "policies"

#: one query per scope shape: each reads profiles in the scopes named
SCOPES = {
    "base": "SELECT subject_id FROM profiles",
    "self_join": "SELECT a.subject_id FROM profiles AS a JOIN profiles AS b"
    " ON a.subject_id = b.subject_id",
    "left_join": "SELECT a.subject_id, b.app_id FROM profiles AS a LEFT JOIN profiles AS b"
    " ON a.subject_id = b.subject_id AND b.app_id = 'douyin'",
    "derived": "SELECT s FROM (SELECT subject_id AS s FROM profiles) AS d",
    "cte": "WITH c AS (SELECT subject_id FROM profiles) SELECT subject_id FROM c",
    "in_subquery": "SELECT subject_id FROM profiles WHERE subject_id IN"
    " (SELECT subject_id FROM profiles WHERE app_id = 'douyin')",
    "exists": "SELECT p.subject_id FROM profiles AS p WHERE EXISTS"
    " (SELECT 1 FROM profiles AS q WHERE q.subject_id = p.subject_id AND q.app_id = 'douyin')",
    "scalar": "SELECT subject_id, (SELECT count(*) FROM profiles WHERE app_id = 'douyin') AS n"
    " FROM profiles",
    "union": "SELECT subject_id FROM profiles WHERE app_id = 'douyin' UNION ALL"
    " SELECT subject_id FROM profiles",
    "ctas": "CREATE TABLE t AS SELECT subject_id FROM profiles WHERE app_id = 'douyin'",
}


def _qp(app: str, purpose: str = "account", policy: PolicySet | None = None) -> QueryPolicy:
    return QueryPolicy(policy or load_policy_dir(INJUNCTION), REG, app=app, purpose=purpose, at=AT)


def _run(sql: str, t: pa.Table) -> list[tuple[object, ...]]:
    con = duckdb.connect()
    con.register("profiles", t)
    try:
        return sorted(con.sql(sql).fetchall(), key=repr)
    finally:
        con.close()


def _two_apps() -> pa.Table:
    """douyin's rows (subjects 0-9, WeChat/QQ labels) and duoshan's (subjects 0-9)."""
    rows = [(i, "douyin", i % 7, 4 if i % 2 else 8, i % 5, 4) for i in range(10)]
    rows += [(i, "duoshan", i % 7, 2, None, 2) for i in range(10)]
    return make_profiles(rows)


@pytest.mark.parametrize("name", sorted(SCOPES))
@pytest.mark.parametrize("dialect", ["duckdb", "spark", "postgres"])
def test_every_scan_of_profiles_is_filtered_by_the_reading_app(name: str, dialect: str) -> None:
    sql = SCOPES[name]
    r = rewrite(sql, default_schema(), _qp("duoshan"), dialect=dialect)
    assert r.controller_filters == {"profiles": "duoshan"}
    scans = len(re.findall(r"\bFROM profiles\b", sql)) + len(re.findall(r"JOIN profiles\b", sql))
    # each scan is filtered once: "<alias>.app_id = 'duoshan'" in its scope's WHERE or LEFT
    # JOIN ... ON, or "(SELECT * FROM profiles WHERE profiles.app_id = 'duoshan') AS <alias>"
    filters = re.findall(r"\b\w+\.app_id = 'duoshan'", r.sql)
    # every scan of the rewritten SQL, the label subqueries of IN / EXISTS / scalar subqueries
    # included (session 6: they read the same rows as the subquery itself)
    out = len(re.findall(r"\bFROM profiles\b", r.sql)) + len(re.findall(r"JOIN profiles\b", r.sql))
    assert len(filters) == out >= scans > 0, r.sql
    # the filter reads a constant label: no control filter, no label column added for it
    assert r.control_filters == ()
    assert "app_id__origins" not in r.sql or "app_id" in [c.name for c in r.columns]


@pytest.mark.parametrize("name", sorted(n for n in SCOPES if n != "ctas"))
def test_duoshan_reads_none_of_douyins_rows_in_any_scope(name: str) -> None:
    """Differential: the rewritten query over both apps' rows equals the plain query over
    duoshan's rows alone (in every scope), and never equals it over both apps' rows."""
    t = _two_apps()
    own = pa.Table.from_pylist([r for r in t.to_pylist() if r["app_id"] == "duoshan"], t.schema)
    r = rewrite(SCOPES[name], default_schema(), _qp("duoshan"))
    width = len(r.columns)
    got = sorted((row[:width] for row in _run(r.sql, t)), key=repr)
    assert got == _run(SCOPES[name], own)
    assert got != _run(SCOPES[name], t)


def test_the_fresh_users_queries_return_nothing_of_douyins() -> None:
    """F6, reproduced: duoshan reading douyin's login grant ids (and which of its handles came
    from WeChat/QQ), and an unknown app reading every raw handle."""
    t = _two_apps()
    grants = (
        "SELECT subject_id, account_id, grant_id, handle_grant FROM profiles"
        " WHERE app_id = 'douyin' AND grant_id IS NOT NULL"
    )
    assert len(_run(grants, t)) == 10  # the leak: ten of douyin's grant ids
    assert _run(rewrite(grants, default_schema(), _qp("duoshan")).sql, t) == []
    which = "SELECT count(*) FROM profiles WHERE app_id = 'douyin' AND handle_grant IS NOT NULL"
    assert _run(rewrite(which, default_schema(), _qp("duoshan")).sql, t)[0][0] == 0
    raw = "SELECT subject_id, handle, avatar_key FROM profiles WHERE app_id = 'douyin'"
    r = rewrite(raw, default_schema(), _qp("huoshan", "social.friend_recommendation"))
    assert _run(r.sql, t) == []
    # douyin itself still reads its own rows (labels unchanged by the filter)
    own = rewrite(grants, default_schema(), _qp("douyin"))
    rows = _run(own.sql, t)
    assert len(rows) == 10
    assert {row[1] for row in rows} == {f"do{i:06d}" for i in range(10)}


def test_the_filter_changes_no_label() -> None:
    """The controller column's label is constant: the outputs' labels are those of the same
    query over the app's own rows without isolation (a schema with no controller column)."""
    t = random_profiles(40, seed=2)
    sql = "SELECT subject_id, handle FROM profiles WHERE subject_id < 15"
    plain = SchemaRegistry(
        tables={"profiles": PROFILES.model_copy(update={"controller_column": None})}
    )
    own = pa.Table.from_pylist([r for r in t.to_pylist() if r["app_id"] == "douyin"], t.schema)
    isolated = _run(rewrite(sql, default_schema(), _qp("douyin", "profile.display")).sql, t)
    reference = _run(rewrite(sql, plain, _qp("douyin", "profile.display")).sql, own)
    assert isolated == reference and len(isolated) == 15


def test_a_derived_table_belongs_to_the_app_that_made_it(tmp_path: Path) -> None:
    store = LabelledStore(tmp_path / "data")
    store.data.write_table("profiles", _two_apps())
    made = store.query(
        "CREATE TABLE mine AS SELECT subject_id, handle FROM profiles",
        _qp("douyin", "profile.display"),
    )
    assert made.table.num_rows == 10  # douyin's rows only
    assert made.rewritten.created_spec is not None
    assert store.schema.table("mine").controller == "douyin"  # read back from the sidecar
    out = store.query("SELECT count(*) AS n FROM mine", _qp("douyin", "profile.display"))
    assert out.table["n"].to_pylist() == [10]
    for app in ("duoshan", "huoshan"):
        with pytest.raises(QueryRefused) as err:
            store.query("SELECT count(*) AS n FROM mine", _qp(app, "profile.display"))
        assert err.value.clause == "FROM mine" and err.value.rules == ()
        assert "app 'douyin'" in str(err.value) and err.value.code == "PG162"
    # nor through a join with its own rows, nor by replacing it
    with pytest.raises(QueryRefused):
        store.query(
            "SELECT p.subject_id FROM profiles AS p JOIN mine AS m ON p.subject_id = m.subject_id",
            _qp("duoshan", "profile.display"),
        )
    before = store.data.read_table("mine")
    with pytest.raises(QueryRefused, match="may not replace another controller's table"):
        store.query(
            "CREATE OR REPLACE TABLE mine AS SELECT subject_id FROM profiles",
            _qp("duoshan", "profile.display"),
        )
    assert store.data.read_table("mine").equals(before)  # nothing lost
    # douyin may replace its own table
    again = store.query(
        "CREATE OR REPLACE TABLE mine AS SELECT subject_id FROM profiles",
        _qp("douyin", "profile.display"),
    )
    assert again.created == "replaced" and store.schema.table("mine").controller == "douyin"


def test_a_table_made_without_a_policy_from_several_controllers_is_read_by_no_app(
    tmp_path: Path,
) -> None:
    store = LabelledStore(tmp_path / "data")
    store.data.write_table("profiles", _two_apps())
    store.query("CREATE TABLE everyone AS SELECT subject_id FROM profiles", None)
    assert store.schema.table("everyone").controller == ANY_CONTROLLER
    assert store.query("SELECT count(*) AS n FROM everyone", None).table["n"].to_pylist() == [20]
    for app in ("douyin", "duoshan"):
        with pytest.raises(QueryRefused, match="several apps"):
            store.query("SELECT count(*) AS n FROM everyone", _qp(app, "profile.display"))


def test_job_tables_with_a_controller_column() -> None:
    """``profiles``, ``profile_display`` and ``recommendations`` (the app whose cards they are,
    finding F11) carry ``app_id``; ``edges`` has no controller column (no filter)."""
    schema = job_schema()
    assert {n: s.controller_column for n, s in schema.tables.items()} == {
        "profiles": "app_id",
        "profile_display": "app_id",
        "edges": None,
        "recommendations": "app_id",
    }
    cards = rewrite(
        "SELECT viewer, candidate FROM recommendations", schema, _qp("duoshan", "profile.display")
    )
    assert cards.controller_filters == {"recommendations": "duoshan"}
    r = rewrite(
        "SELECT d.subject_id, e.dst FROM profile_display AS d"
        " JOIN edges AS e ON d.subject_id = e.src",
        schema,
        _qp("duoshan", "profile.display"),
    )
    assert r.controller_filters == {"profile_display": "duoshan"}
    assert r.sql.count("app_id = 'duoshan'") == 1


def test_a_controller_column_must_be_a_column() -> None:
    with pytest.raises(ValueError, match="controller column 'owner'"):
        TableSpec.model_validate({"columns": {"a": {}}, "controller_column": "owner"})
    with pytest.raises(InputError, match=r"tables\.t: .*controller column 'b'"):
        SchemaRegistry.parse({"tables": {"t": {"columns": {"a": {}}, "controller_column": "b"}}})


def test_a_stale_sidecar_does_not_switch_isolation_off(tmp_path: Path) -> None:
    """A sidecar of ``profiles`` written before controller columns existed (stored masks or
    hashes) keeps the base schema's controller column."""
    store = LabelledStore(tmp_path / "data")
    store.data.write_table("profiles", _two_apps())
    store.store_hashes("profiles", b"0123456789abcdef-controller-test", columns=["handle"])
    sidecar = store.data.root / "_labels" / "profiles.json"
    import json

    raw = json.loads(sidecar.read_text(encoding="utf-8"))
    raw["spec"].pop("controller_column", None)
    sidecar.write_text(json.dumps(raw), encoding="utf-8")
    assert LabelledStore(store.data.root).schema.table("profiles").controller_column == "app_id"
    out = LabelledStore(store.data.root).query(
        "SELECT subject_id FROM profiles", _qp("duoshan", "profile.display")
    )
    assert out.table.num_rows == 10

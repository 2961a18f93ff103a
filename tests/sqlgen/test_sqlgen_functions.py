"""The function allowlist (sqlgen/functions.py), the audit summary of a statement
(sqlgen/statement.py) and the actions a query is checked under (QueryPolicy.actions)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest
import sqlglot
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlglot import exp

from provguard.policy import load_policy_dir
from provguard.provenance import default_registry
from provguard.sqlgen import QueryError, QueryPolicy, QueryRefused, default_schema, rewrite
from provguard.sqlgen.functions import ALLOWED_FUNCTIONS, ALLOWED_NAMES, check_functions
from provguard.sqlgen.statement import describe_statement

ROOT = Path(__file__).resolve().parents[2]
REG = default_registry()
AT = datetime(2019, 6, 1, tzinfo=UTC)
RULE = "no-platform-profile-in-friend-recommendation"


def _all_func_keys() -> set[str]:
    seen: set[str] = set()
    stack: list[type[exp.Func]] = [exp.Func]
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            seen.add(sub.key)
            stack.append(sub)
    return seen


def test_every_allowlisted_key_is_a_sqlglot_function() -> None:
    """A typo in the allowlist would silently refuse a function (or allow nothing)."""
    assert not ALLOWED_FUNCTIONS - _all_func_keys()


def test_every_allowlisted_name_is_a_duckdb_scalar_or_aggregate() -> None:
    """Names sqlglot leaves anonymous are checked against DuckDB's own catalogue: each exists
    and none is a table function (those read files, settings or the catalog)."""
    con = duckdb.connect()
    rows = con.sql("SELECT function_name, function_type FROM duckdb_functions()").fetchall()
    kinds: dict[str, set[str]] = {}
    for name, kind in rows:
        kinds.setdefault(name.lower(), set()).add(kind)
    missing = sorted(n for n in ALLOWED_NAMES if n not in kinds)
    assert not missing
    tables = sorted(n for n in ALLOWED_NAMES if "table" in kinds[n])
    assert not tables
    # and the host-reading ones are really there, as what they are
    assert "table" in kinds["duckdb_settings"] and "table" in kinds["glob"]
    assert "current_setting" in kinds
    assert {"current_setting", "getenv"}.isdisjoint(ALLOWED_NAMES)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT current_setting('home_directory') AS h",
        "SELECT getenv('HOME') AS h",
        "SELECT subject_id FROM profiles WHERE handle = getenv('USER')",
        "SELECT * FROM duckdb_settings()",
        "SELECT * FROM pragma_database_size()",
        "SELECT * FROM glob('*')",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_json_auto('x.json')",
        "SELECT * FROM sniff_csv('/etc/passwd')",
        "SELECT * FROM query_table('profiles')",
        "SELECT * FROM query('SELECT 1')",
        "SELECT current_schema() AS s",
        "SELECT version() AS v",
        "WITH t AS (SELECT getenv('HOME') AS h) SELECT h FROM t",
        "CREATE TABLE t AS SELECT current_setting('threads') AS n",
        # an error on purpose is an oracle under a mask policy (docs/dataplane.md)
        "SELECT CASE WHEN handle = 'x' THEN error('y') END AS z FROM profiles",
    ],
)
def test_host_reading_functions_are_refused_with_pg160(sql: str) -> None:
    with pytest.raises(QueryError) as err:
        rewrite(sql, default_schema(), None)
    assert type(err.value) is QueryError and err.value.code == "PG160"
    assert "allowlist" in str(err.value)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT upper(handle) AS u, length(handle) AS n FROM profiles",
        "SELECT substr(handle, 1, 2) AS s, coalesce(account_id, 'x') AS a FROM profiles",
        "SELECT app_id, count(*) AS n, max(created_at) AS m FROM profiles GROUP BY app_id",
        "SELECT subject_id, row_number() OVER (ORDER BY subject_id) AS r FROM profiles",
        "SELECT CASE WHEN handle LIKE 'a%' THEN 1 ELSE 0 END AS x FROM profiles",
        "SELECT strftime(created_at, '%Y') AS y, date_trunc('day', created_at) AS d FROM profiles",
        "SELECT levenshtein(handle, 'ab') AS d, starts_with(handle, 'a') AS s FROM profiles",
        "SELECT string_agg(account_id, ',') AS a FROM profiles",
    ],
)
def test_pure_functions_still_run(sql: str) -> None:
    rw = rewrite(sql, default_schema(), None)
    assert rw.columns


def test_check_functions_ignores_lineage_constructs() -> None:
    """UNNEST and COLUMNS(...) are left to the lineage check, which refuses them (PG161)."""
    check_functions(sqlglot.parse_one("SELECT u FROM profiles, UNNEST([handle]) AS t(u)"))
    check_functions(sqlglot.parse_one("SELECT COLUMNS('hand.*') FROM profiles"))


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=4, max_size=20))
def test_statement_summary_keeps_no_literal(secret: str) -> None:
    quoted = secret.replace("'", "''")
    sql = (
        f"SELECT subject_id FROM profiles WHERE handle = '{quoted}' OR account_id LIKE '{quoted}%'"
    )
    s = describe_statement(sql)
    assert s.sha256 == hashlib.sha256(sql.encode()).hexdigest()
    assert s.kind == "select" and s.tables_read == ("profiles",)
    assert s.shape == "SELECT subject_id FROM profiles WHERE handle = ? OR account_id LIKE ?"


def test_statement_summary_kinds_and_tables() -> None:
    s = describe_statement(
        "CREATE TABLE m AS WITH c AS (SELECT src FROM edges) SELECT p.handle, 42 AS n"
        " FROM c JOIN profiles p ON p.subject_id = c.src WHERE p.handle = N'小明'"
    )
    assert s.kind == "create_table_as" and s.tables_created == ("m",)
    assert s.tables_read == ("edges", "profiles")
    assert s.shape is not None and "42" not in s.shape and "小明" not in s.shape
    commented = describe_statement("SELECT handle /* 温柔月亮 */ FROM profiles -- wx_1\nLIMIT 5")
    assert commented.shape == "SELECT handle FROM profiles LIMIT ?"
    bad = describe_statement("SELEC handle FRM profiles '温柔月亮")
    assert bad.kind == "unparsable" and bad.shape is None
    assert describe_statement("SELECT 1; SELECT 2").kind == "unparsable"
    assert describe_statement("PRAGMA version").kind != "select"


def _policy(action: str, **kw: object) -> QueryPolicy:
    return QueryPolicy(
        load_policy_dir(ROOT / "policies"),
        REG,
        app="douyin",
        purpose="social.friend_recommendation",
        at=AT,
        action=action,
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("action", ["display", "store", "use", "derive"])
def test_every_action_is_checked_as_a_use_too(action: str) -> None:
    qp = _policy(action)
    assert qp.actions[0] == "use" and action in qp.actions
    with pytest.raises(QueryRefused) as err:
        rewrite("SELECT handle FROM profiles", default_schema(), qp)
    assert err.value.rules == (RULE,)
    # the reference per-cell answer agrees: a WeChat handle is refused under any declared action
    assert qp.row_strategy(["user.name.nickname"], REG.mask(["wechat"])) == ("refuse", None)
    assert qp.row_strategy(["user.name.nickname"], REG.mask(["user_input"])) == ("clear", None)


def test_create_table_as_adds_store_and_the_stricter_answer_wins(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "instrument: {id: t, kind: internal_policy, issuer: t, effective_from: 2019-03-20}\n"
        "rules:\n"
        "  - id: no-store\n"
        "    effect: deny\n"
        "    actions: [store]\n"
        "    data: {categories: [user.name.nickname], origins: [wechat]}\n"
        "  - id: mask-use\n"
        "    effect: deny\n"
        "    actions: [use]\n"
        "    data: {categories: [user.name.nickname], origins: [qq]}\n"
        "    obligations: [{kind: mask, strategy: nullify}]\n",
        encoding="utf-8",
    )
    qp = QueryPolicy(load_policy_dir(policy), REG, app="douyin", purpose="profile.display", at=AT)
    assert qp.actions == ("use",)
    select = rewrite("SELECT handle FROM profiles", default_schema(), qp)
    assert select.actions == ("use",)
    assert select.columns[0].masks == (("nullify", REG.mask(["qq", "unknown"])),)
    with pytest.raises(QueryRefused) as err:
        rewrite("CREATE TABLE t AS SELECT handle FROM profiles", default_schema(), qp)
    assert err.value.rules == ("no-store",)
    stored = qp.with_actions("store")
    assert stored.actions == ("use", "store") and qp.actions == ("use",)
    assert stored.row_strategy(["user.name.nickname"], REG.mask(["wechat"])) == ("refuse", None)
    assert qp.row_strategy(["user.name.nickname"], REG.mask(["wechat"])) == ("clear", None)
    assert stored.row_strategy(["user.name.nickname"], REG.mask(["qq"])) == ("mask", "nullify")

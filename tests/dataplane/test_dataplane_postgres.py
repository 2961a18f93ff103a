"""PostgreSQL back-end: the same rewrite in the postgres dialect gives DuckDB's answer cell by
cell (masks, keyed hashes and labels) on the corpus of query shapes; labels are BIGINT bits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from provguard.adapters.data_postgres import to_signed, to_unsigned
from provguard.dataplane import LabelledStore
from provguard.provenance import default_registry
from provguard.sqlgen import QueryPolicy, default_schema, hmac_hex, rewrite

from .conftest import HASH_KEY, ROOT

CORPUS = sorted((ROOT / "tests" / "golden" / "sqlgen" / "corpus").glob("*.sql"))
REG = default_registry()
EXTRA = {
    "self_join": "SELECT a.subject_id AS a_id, b.subject_id AS b_id, a.avatar_key AS av"
    " FROM profiles AS a JOIN profiles AS b ON a.handle = b.handle AND a.subject_id < b.subject_id",
    "group_hidden_key": "SELECT app_id, count(*) AS n FROM profiles GROUP BY app_id, handle",
    "order_by": "SELECT subject_id, handle FROM profiles ORDER BY avatar_key",
}


def _profiles(seed: int) -> pa.Table:
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from sqlgen.conftest import random_profiles  # the generator of the sqlgen tests

    return random_profiles(70, seed=seed)


def _key(row: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(repr(v) for v in row)


def _rows(t: pa.Table) -> list[tuple[Any, ...]]:
    return sorted((tuple(r.values()) for r in t.to_pylist()), key=_key)


def _duck(sql: str, t: pa.Table) -> pa.Table:
    con = duckdb.connect()
    con.register("profiles", t)
    try:
        return con.sql(sql).to_arrow_table()
    finally:
        con.close()


def _queries() -> dict[str, str]:
    out = {p.stem: p.read_text(encoding="utf-8") for p in CORPUS}
    out.update(EXTRA)
    return out


@pytest.mark.parametrize("seed", [7, 19])
def test_duckdb_vs_postgres_on_the_corpus(seed: int, pg: Any, mask_policy: QueryPolicy) -> None:
    t = _profiles(seed)
    pg.register("profiles", t)
    checked = 0
    for name, sql in _queries().items():
        d = rewrite(sql, default_schema(), mask_policy, dialect="duckdb")
        p = rewrite(sql, default_schema(), mask_policy, dialect="postgres")
        assert [c.name for c in p.columns] == [c.name for c in d.columns]
        d_rows = _rows(_duck(d.query_sql, t))
        p_rows = _rows(pg.query(p.query_sql, [c.origins_column for c in p.columns]))
        assert p_rows == d_rows, name
        checked += len(d_rows)
    assert checked > 300


def test_keyed_hash_is_identical_in_postgres(pg: Any, mask_policy: QueryPolicy) -> None:
    t = _profiles(3)
    pg.register("profiles", t)
    r = rewrite(
        "SELECT subject_id, handle FROM profiles", default_schema(), mask_policy, dialect="postgres"
    )
    got = pg.query(r.sql, ["subject_id__origins", "handle__origins"]).to_pylist()
    wechat = REG.mask(["wechat"])
    # controller isolation: douyin's rows only (one per subject), in the same filter in SQL
    assert "profiles.app_id = 'douyin'" in r.sql
    raw = [r for r in t.to_pylist() if r["app_id"] == "douyin"]
    by_subject = {r["subject_id"]: r for r in raw}
    assert len(by_subject) == len(raw) == len(got)
    hashed = 0
    for row in got:
        src = by_subject[row["subject_id"]]
        if src["handle_origins"] == wechat and src["handle"] is not None:
            assert row["handle"] == hmac_hex(src["handle"], HASH_KEY)
            hashed += 1
    assert hashed > 0


def test_bit_63_round_trips_and_bit_or(pg: Any) -> None:
    """A label with bit 63 set is a negative BIGINT in PostgreSQL; &, | and BIT_OR act on the
    same bits, and results come back as the uint64 DuckDB computes."""
    top = 1 << 63
    assert to_signed(top) == -(1 << 63) and to_unsigned(-(1 << 63)) == top
    assert to_unsigned(to_signed((1 << 64) - 1)) == (1 << 64) - 1
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from sqlgen.conftest import make_profiles

    t = make_profiles(
        [
            (1, "douyin", 1, top | 4, 1, top),
            (2, "douyin", 2, 2, 2, (1 << 64) - 1),
            (3, "duoshan", 3, top | 8, None, 2),
        ]
    )
    pg.register("profiles", t)
    for sql in (
        "SELECT subject_id, handle, avatar_key FROM profiles",
        "SELECT app_id, max(handle) AS h, count(avatar_key) AS n FROM profiles GROUP BY app_id",
    ):
        d = rewrite(sql, default_schema(), None, dialect="duckdb")
        p = rewrite(sql, default_schema(), None, dialect="postgres")
        d_rows = _rows(_duck(d.sql, t))
        p_rows = _rows(pg.query(p.sql, [c.origins_column for c in p.columns]))
        assert p_rows == d_rows
        assert any(v >= top for row in d_rows for v in row if isinstance(v, int))


def test_labelled_store_runs_on_postgres(tmp_path: Path, pg: Any, mask_policy: QueryPolicy) -> None:
    store = LabelledStore(tmp_path / "data")
    store.data.write_table("profiles", _profiles(5))
    sql = "SELECT subject_id, handle FROM profiles WHERE avatar_key IS NOT NULL"
    on_pg = store.query(sql, mask_policy, engine="postgres", postgres=pg)
    on_duck = store.query(sql, mask_policy)
    assert _rows(on_pg.table) == _rows(on_duck.table)
    assert on_pg.rewritten.dialect == "postgres"


def test_cli_query_on_postgres(tmp_path: Path, pg: Any) -> None:
    import os

    from typer.testing import CliRunner

    from provguard.cli.query import query_app

    data = tmp_path / "data"
    LabelledStore(data).data.write_table("profiles", _profiles(11))
    from provguard.adapters.control_sqlite import SqlControlStore

    SqlControlStore(tmp_path / "control.db")  # every query is audited in the control store
    args = ["--app", "douyin", "--purpose", "social.friend_recommendation", "--store", str(data)]
    args += ["--at", "2019-06-01", "--policy", str(ROOT / "policies"), "--engine", "postgres"]
    args += ["--pg-url", os.environ["PROVGUARD_TEST_PG_URL"], "--json", "--raw-labels"]
    ok = CliRunner().invoke(
        query_app,
        [*args, "SELECT app_id, count(*) AS n FROM profiles GROUP BY app_id ORDER BY app_id"],
    )
    assert ok.exit_code == 0, ok.output
    assert '"n": 35' in ok.output and '"n__origins": 192' in ok.output
    refused = CliRunner().invoke(
        query_app, [*args, "SELECT subject_id FROM profiles WHERE handle LIKE 'wx%'"]
    )
    assert refused.exit_code == 2 and "PG162" in refused.output

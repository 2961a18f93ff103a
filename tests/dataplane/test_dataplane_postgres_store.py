"""``provguard query --engine postgres`` on a store shaped like the demo's (fresh user 4,
finding 3): binary columns (the 32-byte PDQ hashes) load as BYTEA, and only the tables the
statement reads are loaded."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from provguard.adapters.control_sqlite import SqlControlStore
from provguard.adapters.data_postgres import PostgresEngine, _pg_type
from provguard.cli.query import query_app
from provguard.dataplane import LabelledStore
from provguard.errors import StoreError
from provguard.provenance import default_registry

ROOT = Path(__file__).resolve().parents[2]
PG_ENV = "PROVGUARD_TEST_PG_URL"
REG = default_registry()


def demo_like_store(root: Path) -> Path:
    """``data/`` with the job's Arrow types (profiles with uint64 labels, int64 edges, the
    32-byte PDQ hashes of ``picture_hashes``) and a ``control.db`` beside it."""
    data = root / "data"
    ls = LabelledStore(data)
    n = 3
    ls.data.write_table(
        "profiles",
        pa.table(
            {
                "app_id": ["douyin"] * n,
                "subject_id": pa.array(range(n), pa.int64()),
                "account_id": [f"dy{i:06d}" for i in range(n)],
                "handle": ["温柔月亮", "海风", "小明"],
                "handle_origins": pa.array(
                    [REG.mask([o]) for o in ("wechat", "user_input", "qq")], pa.uint64()
                ),
                "handle_grant": pa.array([None] * n, pa.string()),
                "avatar_key": [f"douyin/avatars/{i}.jpg" for i in range(n)],
                "avatar_origins": pa.array([REG.mask(["qq"])] * n, pa.uint64()),
                "avatar_grant": pa.array([None] * n, pa.string()),
                "grant_id": pa.array([None] * n, pa.string()),
                "created_at": pa.array([None] * n, pa.timestamp("us", tz="UTC")),
            }
        ),
    )
    ls.data.write_table(
        "edges", pa.table({"src": pa.array([0, 1], pa.int64()), "dst": pa.array([1, 2])})
    )
    ls.data.write_table(
        "picture_hashes",
        pa.table(
            {
                "avatar_key": ["douyin/avatars/0.jpg"],
                "pdq": pa.array([b"\x01" * 32], pa.binary(32)),
            }
        ),
    )
    SqlControlStore(root / "control.db")
    return data


def _url() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        message = f"{PG_ENV} is not set (run .ci/postgres.sh to start a PostgreSQL server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return url


def test_arrow_types_of_the_job_tables_have_postgres_types() -> None:
    assert _pg_type(pa.binary(32)) == "BYTEA"
    assert _pg_type(pa.binary()) == "BYTEA"
    assert _pg_type(pa.large_binary()) == "BYTEA"
    assert _pg_type(pa.list_(pa.float32(), 3)) == "DOUBLE PRECISION[]"
    assert _pg_type(pa.list_(pa.string())) == "TEXT[]"
    with pytest.raises(StoreError, match="nested"):
        _pg_type(pa.list_(pa.list_(pa.int64())))
    with pytest.raises(StoreError, match="no PostgreSQL type"):
        _pg_type(pa.struct([("a", pa.int64())]))


def test_binary_and_list_columns_round_trip() -> None:
    hashes = pa.table(
        {
            "avatar_key": ["a.jpg", "b.jpg"],
            "pdq": pa.array([bytes(range(32)), b"\xff" * 32], pa.binary(32)),
            "dihedral": pa.array([b"\x00\x01" * 128, b"\x80" * 256], pa.binary(256)),
            "chroma": pa.array([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]], pa.list_(pa.float32(), 3)),
            "quality": pa.array([100, 7], pa.int32()),
        }
    )
    with PostgresEngine(_url(), schema=f"pgstore_{uuid.uuid4().hex[:10]}") as pg:
        try:
            pg.register("picture_hashes", hashes)
            got = pg.query("SELECT * FROM picture_hashes ORDER BY avatar_key")
        finally:
            pg.drop_schema()
    assert got["pdq"].to_pylist() == hashes["pdq"].to_pylist()
    assert got["dihedral"].to_pylist() == hashes["dihedral"].to_pylist()
    assert got["chroma"].to_pylist() == hashes["chroma"].to_pylist()  # exact in float32
    assert got["quality"].to_pylist() == [100, 7]


def test_only_the_named_tables_are_loaded() -> None:
    t = pa.table({"x": [1]})
    with PostgresEngine(_url(), schema=f"pgstore_{uuid.uuid4().hex[:10]}", tables=["a"]) as pg:
        try:
            pg.register("a", t)
            pg.register("b", t)
            assert pg.loaded == ["a"]
            with pytest.raises(StoreError):
                pg.query("SELECT x FROM b")
        finally:
            pg.drop_schema()


def test_query_on_a_demo_like_store_matches_duckdb(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = demo_like_store(tmp_path)
    loaded: list[list[str]] = []
    drop = PostgresEngine.drop_schema

    def spy(self: PostgresEngine) -> None:
        loaded.append(list(self.loaded))
        drop(self)

    monkeypatch.setattr(PostgresEngine, "drop_schema", spy)
    base = [
        "--store",
        str(store),
        "--app",
        "douyin",
        "--purpose",
        "profile.display",
        "--at",
        "2019-06-01",
        "--policy",
        str(ROOT / "policies"),
        "--json",
    ]
    out: dict[str, list[dict[str, Any]]] = {}
    for engine in ("duckdb", "postgres"):
        extra = ["--engine", engine, "--pg-url", _url()] if engine == "postgres" else []
        res = CliRunner().invoke(
            query_app,
            [
                *base,
                *extra,
                "SELECT e.src, p.account_id FROM edges e JOIN profiles p"
                " ON p.subject_id = e.src ORDER BY e.src",
            ],
        )
        assert res.exit_code == 0, res.output
        out[engine] = [json.loads(ln) for ln in res.output.splitlines() if ln.startswith("{")]
    assert out["postgres"] == out["duckdb"] and len(out["duckdb"]) == 2
    # picture_hashes (fixed_size_binary[32]) is in the store but was never copied
    assert loaded == [["profiles", "edges"]] or loaded == [["edges", "profiles"]]

"""Stored keyed hashes in a labelled store: ``LabelledStore.store_hashes`` hashes once, the
sidecar records the key's fingerprint, and DuckDB and PostgreSQL return the same cells reading
the stored hash as computing it (and as Python's ``hmac``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from provguard.dataplane import LabelledStore, stored_hash_select
from provguard.provenance import default_registry
from provguard.sqlgen import QueryPolicy, hmac_hex
from provguard.sqlgen.keyed import key_id
from provguard.sqlgen.schema import PROFILES

from .conftest import HASH_KEY
from .test_dataplane_postgres import _profiles, _rows

SQL = "SELECT subject_id, handle, avatar_key FROM profiles WHERE subject_id % 2 = 0"
WECHAT = default_registry().mask(["wechat"])


def _store(tmp_path: Path, name: str) -> LabelledStore:
    ls = LabelledStore(tmp_path / name)
    ls.data.write_table("profiles", _profiles(5))
    return ls


def test_store_hashes_duckdb(tmp_path: Path, mask_policy: QueryPolicy) -> None:
    plain, hashed = _store(tmp_path, "plain"), _store(tmp_path, "hashed")
    spec = hashed.store_hashes("profiles", HASH_KEY, columns=["handle"])
    assert spec.hash_key_id == key_id(HASH_KEY)
    # a fresh store object reads the spec back from the sidecar
    again = LabelledStore(hashed.data.root)
    assert again.schema.table("profiles").columns["handle"].hash_column == "handle__hmac"
    stored = again.query(SQL, mask_policy)
    assert "handle__hmac" in stored.rewritten.sql and "SHA256" not in stored.rewritten.sql
    computed = plain.query(SQL, mask_policy)
    assert "SHA256" in computed.rewritten.sql
    assert _rows(stored.table) == _rows(computed.table)
    rows = plain.data.read_table("profiles").to_pylist()
    hashed_cells = {r["handle"] for r in stored.table.to_pylist()}
    expected = {
        hmac_hex(r["handle"], HASH_KEY)
        for r in rows
        if r["subject_id"] % 2 == 0
        and r["handle"]
        and r["handle_origins"] == WECHAT
        and r["app_id"] == "douyin"  # controller isolation: douyin's rows only
    }
    assert expected and expected <= hashed_cells


def test_store_hashes_postgres(tmp_path: Path, pg: Any, mask_policy: QueryPolicy) -> None:
    """Hashed by PostgreSQL's own SQL, read back by the rewrite in PostgreSQL, equal to DuckDB
    computing it."""
    t = _profiles(6)
    sql, spec = stored_hash_select("profiles", PROFILES, HASH_KEY, dialect="postgres")
    pg.register("profiles", t)
    hashed = pg.query(sql)
    pg.register("profiles", hashed)
    ls = LabelledStore(tmp_path / "d")
    ls.data.write_table("profiles", t)
    computed = ls.query(SQL, mask_policy)
    from provguard.sqlgen import SchemaRegistry, rewrite

    r = rewrite(SQL, SchemaRegistry(tables={"profiles": spec}), mask_policy, dialect="postgres")
    assert "handle__hmac" in r.sql
    got = pg.query(r.sql, [c.origins_column for c in r.columns])
    assert _rows(got) == _rows(computed.table)
    assert isinstance(got, pa.Table)


def test_rekeying_replaces_the_companions(tmp_path: Path, mask_policy: QueryPolicy) -> None:
    ls = _store(tmp_path, "rekey")
    ls.store_hashes("profiles", b"an-older-deployment-key-1", columns=["handle"])
    spec = ls.store_hashes("profiles", HASH_KEY, columns=["handle"])
    assert spec.hash_key_id == key_id(HASH_KEY)
    table = ls.data.read_table("profiles")
    assert table.column_names.count("handle__hmac") == 1
    for value, h in zip(
        table["handle"].to_pylist(), table["handle__hmac"].to_pylist(), strict=True
    ):
        assert h == (None if value is None else hmac_hex(value, HASH_KEY))
    r = LabelledStore(ls.data.root).query(SQL, mask_policy)
    assert "handle__hmac" in r.rewritten.sql

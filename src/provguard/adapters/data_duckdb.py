"""The data plane: labelled tables as Parquet files, queried in-process with DuckDB.

Each table is one Parquet file ``<root>/<name>.parquet``, written atomically (temp file in the same
folder, then ``os.replace``), so a crash mid-write leaves the previous version. Queries see every
table as a DuckDB view of the same name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from provguard.errors import StoreError, engine_failure

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class ParquetDataStore:
    """:class:`provguard.ports.DataStore` over a folder of Parquet files."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        if not _NAME.match(name):
            raise StoreError(f"bad table name '{name}' (lowercase letters, digits, _)")
        return self.root / f"{name}.parquet"

    def write_table(self, name: str, table: pa.Table) -> None:
        target = self.path(name)
        tmp = target.with_suffix(".parquet.tmp")
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, target)
        except OSError as exc:
            raise StoreError(f"cannot write table {name}: {exc}") from exc

    def read_table(self, name: str) -> pa.Table:
        try:
            return pq.read_table(self.path(name))
        except OSError as exc:
            raise StoreError(f"cannot read table {name}: {exc}") from exc

    def tables(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.parquet"))

    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with one view per stored table."""
        con = duckdb.connect()
        for name in self.tables():
            path = str(self.path(name)).replace("'", "''")
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{path}')")
        return con

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> pa.Table:
        con = self.connect()
        try:
            result = con.sql(sql, params=dict(params) if params else None).to_arrow_table()
        except duckdb.Error as exc:
            raise engine_failure("query failed", exc) from exc
        finally:
            con.close()
        return result

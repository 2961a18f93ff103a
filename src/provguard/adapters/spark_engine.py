"""Spark SQL execution of policy-aware queries (the scale-out back-end).

One :class:`SparkEngine` owns one ``SparkSession``. Tests and the default use ``local[2]`` with
every socket on the loopback interface (``SPARK_LOCAL_IP``, ``spark.driver.host`` and
``spark.driver.bindAddress`` = 127.0.0.1, UI off); production passes a cluster ``master`` URL.

Labels: Spark has no unsigned 64-bit integer, so origins columns (Arrow ``uint64``, DuckDB
``UBIGINT``) are registered as ``BIGINT`` holding the same 64 bits (two's complement) and converted
back to ``uint64`` in results; bitwise ``&``/``|``/``BIT_OR`` are identical on both.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from provguard.errors import StoreError, engine_failure

LOOPBACK = "127.0.0.1"


def _to_signed(table: pa.Table) -> pa.Table:
    cols = []
    for field in table.schema:
        col = table.column(field.name)
        if pa.types.is_uint64(field.type):
            col = pc.cast(col, pa.int64(), safe=False)
        cols.append(col)
    return pa.table(cols, names=table.column_names)


def _to_unsigned(table: pa.Table, columns: Iterable[str]) -> pa.Table:
    wanted = set(columns)
    cols = []
    for field in table.schema:
        col = table.column(field.name)
        if field.name in wanted and pa.types.is_int64(field.type):
            col = pc.cast(col, pa.uint64(), safe=False)
        cols.append(col)
    return pa.table(cols, names=table.column_names)


class SparkEngine:
    """A Spark session for running rewritten queries.

    ``master``: ``local[2]`` (default) or a cluster URL; ``conf``: extra Spark settings.
    Raises :class:`StoreError` when the session cannot start or a query fails.
    """

    def __init__(
        self,
        master: str = "local[2]",
        *,
        app_name: str = "provguard",
        conf: Mapping[str, str] | None = None,
    ) -> None:
        os.environ["SPARK_LOCAL_IP"] = LOOPBACK
        try:
            from pyspark.sql import SparkSession

            builder: Any = (
                SparkSession.builder.master(master)
                .appName(app_name)
                .config("spark.driver.host", LOOPBACK)
                .config("spark.driver.bindAddress", LOOPBACK)
                .config("spark.ui.enabled", "false")
                .config("spark.ui.showConsoleProgress", "false")
                .config("spark.sql.session.timeZone", "UTC")
                .config("spark.sql.shuffle.partitions", "4")
                .config("spark.sql.ansi.enabled", "false")
                .config("spark.driver.memory", "2g")
            )
            for key, value in (conf or {}).items():
                builder = builder.config(key, value)
            self.session: Any = builder.getOrCreate()
        except Exception as exc:  # the JVM gateway raises many kinds
            raise StoreError(f"cannot start Spark ({master}): {exc}") from exc
        running = self.session.sparkContext.master
        if running != master:
            # getOrCreate hands back a session already running in this process, whatever the
            # master asked for: a query meant for the cluster would quietly run elsewhere
            raise StoreError(
                f"cannot start Spark ({master}): this process already runs a Spark session on"
                f" {running}; stop it first (one SparkContext per process)"
            )
        self.session.sparkContext.setLogLevel("ERROR")

    def register(self, name: str, table: pa.Table) -> None:
        """Expose ``table`` as the temporary view ``name`` (uint64 columns as BIGINT)."""
        try:
            df = self.session.createDataFrame(_to_signed(table))
            df.createOrReplaceTempView(name)
        except Exception as exc:
            raise StoreError(f"cannot register table {name} in Spark: {exc}") from exc

    def register_parquet(self, name: str, path: str | Path) -> None:
        """Register a Parquet file (read with pyarrow, so unsigned labels convert exactly)."""
        try:
            table = pq.read_table(path)
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc}") from exc
        self.register(name, table)

    def query(self, sql: str, label_columns: Iterable[str] = ()) -> pa.Table:
        """Run Spark SQL and return Arrow, ``label_columns`` converted back to uint64."""
        try:
            result = self.session.sql(sql).toArrow()
        except Exception as exc:
            raise engine_failure("Spark query failed", exc) from exc
        return _to_unsigned(result, label_columns)

    def stop(self) -> None:
        self.session.stop()

    def __enter__(self) -> SparkEngine:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

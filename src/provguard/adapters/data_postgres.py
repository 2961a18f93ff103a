"""PostgreSQL execution of policy-aware queries (where the control plane already lives).

The rewrite is emitted in the ``postgres`` dialect by sqlglot (:func:`provguard.sqlgen.rewrite`
with ``dialect="postgres"``). PostgreSQL has no unsigned 64-bit integer, so an origins bitmask
(Arrow ``uint64``, DuckDB ``UBIGINT``) is stored as ``BIGINT`` holding the same 64 bits in two's
complement: bit 63 set means a negative ``BIGINT``. ``&``, ``|`` and the ``BIT_OR`` aggregate act
on the bits, so every label computes the same bits as in DuckDB; results are converted back to
``uint64`` (:func:`to_unsigned`). Mask literals with bit 63 are emitted as negative ``BIGINT``
literals by the rewrite.

:class:`PostgresEngine` connects with psycopg 3 (a SQLAlchemy-style URL
``postgresql+psycopg://user@host:port/db`` or a plain libpq URL), optionally inside its own
``schema`` (created if missing; the search path is set to it), loads Arrow tables with ``COPY``,
and runs queries. Errors are :class:`~provguard.errors.StoreError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from provguard.errors import StoreError, engine_failure

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_TWO64 = 1 << 64
_TWO63 = 1 << 63


def to_signed(value: int | None) -> int | None:
    """A uint64 label as the BIGINT holding the same bits (None stays None)."""
    if value is None:
        return None
    return value - _TWO64 if value >= _TWO63 else value


def to_unsigned(value: int | None) -> int | None:
    """A BIGINT label back to its uint64 bits (None stays None)."""
    if value is None:
        return None
    return value + _TWO64 if value < 0 else value


def _pg_type(t: pa.DataType) -> str:
    """The PostgreSQL column type of Arrow type ``t``: text, integers (``BIGINT``; uint64 labels
    keep their bits, see the module docstring), floats, booleans, timestamps, dates, binary of
    any width (``BYTEA``: e.g. the 32-byte PDQ hashes of ``picture_hashes``) and lists of those
    (arrays). Raises :class:`StoreError` for any other type."""
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        inner = t.value_type
        if pa.types.is_nested(inner):
            raise StoreError(f"no PostgreSQL type for Arrow type {t} (nested lists)")
        return _pg_type(inner) + "[]"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "TEXT"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return "BYTEA"
    if pa.types.is_integer(t):
        return "BIGINT"
    if pa.types.is_floating(t):
        return "DOUBLE PRECISION"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz is not None else "TIMESTAMP"
    if pa.types.is_date(t):
        return "DATE"
    raise StoreError(f"no PostgreSQL type for Arrow type {t}")


def _conninfo(url: str) -> str:
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


class PostgresEngine:
    """One psycopg connection (autocommit) for loading labelled tables and running rewritten
    queries. ``url``: SQLAlchemy or libpq URL; ``schema``: a schema of this engine's own (tests
    use a fresh one and :meth:`drop_schema` it). Raises :class:`StoreError` if it cannot
    connect."""

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        tables: Iterable[str] | None = None,
    ) -> None:
        import psycopg

        if schema is not None and not _NAME.match(schema):
            raise StoreError(f"bad schema name '{schema}'")
        self.schema = schema
        #: the only tables :meth:`register` loads (None: all); ``provguard query`` passes the
        #: tables its statement reads, so a store's other tables are never copied
        self.tables: frozenset[str] | None = None if tables is None else frozenset(tables)
        #: the tables loaded so far, in order
        self.loaded: list[str] = []
        try:
            self.conn: Any = psycopg.connect(_conninfo(url), autocommit=True)
            if schema is not None:
                self.conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                self.conn.execute(f'SET search_path TO "{schema}"')
        except psycopg.Error as exc:
            raise StoreError(f"cannot open PostgreSQL ({schema or 'public'}): {exc}") from exc

    def register(self, name: str, table: pa.Table) -> None:
        """(Re)create table ``name`` from Arrow ``table`` (uint64 labels as BIGINT bits); a
        no-op for a table outside :attr:`tables`. Raises :class:`StoreError` for a bad name, a
        column type with no PostgreSQL type (:func:`_pg_type`) or a failed load."""
        import psycopg

        if not _NAME.match(name):
            raise StoreError(f"bad table name '{name}'")
        if self.tables is not None and name not in self.tables:
            return
        cols = []
        unsigned = []
        for f in table.schema:
            if not _NAME.match(f.name):
                raise StoreError(f"bad column name '{f.name}'")
            cols.append(f'"{f.name}" {_pg_type(f.type)}')
            unsigned.append(pa.types.is_uint64(f.type))
        names = ", ".join(f'"{f.name}"' for f in table.schema)
        try:
            with self.conn.transaction():
                self.conn.execute(f'DROP TABLE IF EXISTS "{name}"')
                self.conn.execute(f'CREATE TABLE "{name}" ({", ".join(cols)})')
                columns = [c.to_pylist() for c in table.columns]
                with (
                    self.conn.cursor() as cur,
                    cur.copy(f'COPY "{name}" ({names}) FROM STDIN') as copy,
                ):
                    for i in range(table.num_rows):
                        copy.write_row(
                            [
                                to_signed(col[i]) if u else col[i]
                                for col, u in zip(columns, unsigned, strict=True)
                            ]
                        )
                self.conn.execute(f'ANALYZE "{name}"')
        except psycopg.Error as exc:
            raise StoreError(f"cannot load table {name} into PostgreSQL: {exc}") from exc
        self.loaded.append(name)

    def query(self, sql: str, label_columns: Iterable[str] = ()) -> pa.Table:
        """Run ``sql``; return Arrow with ``label_columns`` converted back to uint64."""
        import psycopg

        try:
            with self.conn.cursor() as cur:
                cur.execute(sql)
                names = [d.name for d in cur.description or []]
                rows = cur.fetchall()
        except psycopg.Error as exc:
            raise engine_failure("PostgreSQL query failed", exc) from exc
        labels = set(label_columns)
        arrays = []
        for j, n in enumerate(names):
            values = [r[j] for r in rows]
            if n in labels:
                arrays.append(pa.array([to_unsigned(v) for v in values], pa.uint64()))
            else:
                arrays.append(pa.array(values))
        return pa.table(arrays, names=names)

    def drop_schema(self) -> None:
        """Drop this engine's schema and everything in it."""
        if self.schema is not None:
            self.conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> PostgresEngine:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

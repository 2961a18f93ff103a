"""Keyed hashes stored once at load time (the ``hash`` mask without per-query hashing).

The ``hash`` mask is HMAC-SHA256 under the deployment key (:mod:`provguard.sqlgen.keyed`); in
SQL it costs two SHA-256 calls per hashed cell, every time a query returns the cell. Because the
HMAC of a value depends only on the value and the key, it can be computed once when a labelled
table is loaded and stored as a companion column per protected column (``<column>__hmac``,
64 lowercase hex digits). The table's :class:`~provguard.sqlgen.TableSpec` records, per column,
``hash_column`` and, per table, ``hash_key_id`` (:func:`provguard.sqlgen.keyed.key_id`, a
fingerprint, not the key). The rewrite reads the stored hash only when the query's key has that
fingerprint and the output is a bare column of the table; under another key it computes the
HMAC as before, so a stale companion can never produce a wrong hash.

:func:`stored_hash_select` gives the SQL (any back-end: DuckDB, Spark, PostgreSQL) that adds the
companions; :func:`with_stored_hashes` applies it to an Arrow table through DuckDB;
:meth:`provguard.dataplane.LabelledStore.store_hashes` rewrites a stored table and its sidecar.
"""

from __future__ import annotations

from collections.abc import Iterable

import duckdb
import pyarrow as pa
from sqlglot import exp

from provguard.errors import InputError, StoreError
from provguard.sqlgen import QueryError, TableSpec
from provguard.sqlgen.keyed import key_id, resolve_hash_key
from provguard.sqlgen.rewrite import _hmac

HASH_SUFFIX = "__hmac"


def hashable_columns(spec: TableSpec) -> list[str]:
    """The columns worth a stored hash: those with a data category (the policy may mask them)."""
    return [name for name, c in spec.columns.items() if c.categories]


def stored_hash_select(
    table: str,
    spec: TableSpec,
    key: bytes | str,
    *,
    columns: Iterable[str] | None = None,
    dialect: str = "duckdb",
) -> tuple[str, TableSpec]:
    """``SELECT *, <HMAC(col)> AS col__hmac, ... FROM table`` in ``dialect`` and the spec of its
    result (``hash_column`` per hashed column, ``hash_key_id`` of ``key``).

    ``columns``: default :func:`hashable_columns`. A NULL value gets a NULL hash (its mask is
    NULL too). Raises :class:`InputError` for an unknown column, a name clash, or a key under
    16 bytes (:class:`~provguard.sqlgen.QueryError`)."""
    raw = resolve_hash_key(key)
    if raw is None:
        raise QueryError("a stored hash needs a key")
    names = list(columns) if columns is not None else hashable_columns(spec)
    taken = set(spec.columns) | spec.origins_columns() | spec.hash_columns()
    updated = dict(spec.columns)
    added: list[exp.Expr] = []
    for name in names:
        cs = spec.columns.get(name)
        if cs is None:
            raise InputError(f"column '{name}' is not a data column of '{table}'")
        target = name + HASH_SUFFIX
        if target in taken and cs.hash_column != target:
            raise InputError(f"cannot add stored hash '{target}': the name is taken")
        value = exp.column(name, table=table)
        added.append(exp.alias_(_hmac(value, raw, dialect), target))
        updated[name] = cs.model_copy(update={"hash_column": target})
    # columns of an older stored hash (another key) are replaced, not duplicated
    old = sorted(spec.hash_columns())
    star = exp.Star(**({"except_": [exp.column(c) for c in old]} if old else {}))
    if old and dialect != "duckdb":
        raise InputError(
            "re-keying stored hashes is done in DuckDB (LabelledStore.store_hashes): the other"
            " back-ends have no SELECT * EXCLUDE"
        )
    query = exp.select(star, *added).from_(table)
    new_spec = spec.model_copy(update={"columns": updated, "hash_key_id": key_id(raw)})
    return query.sql(dialect=dialect), TableSpec.model_validate(new_spec.model_dump())


def with_stored_hashes(
    table: pa.Table,
    spec: TableSpec,
    key: bytes | str,
    *,
    columns: Iterable[str] | None = None,
) -> tuple[pa.Table, TableSpec]:
    """``table`` (Arrow, laid out as ``spec``) with a ``<col>__hmac`` companion per hashed
    column, computed by DuckDB, and its new spec. Errors as :func:`stored_hash_select`;
    :class:`StoreError` if DuckDB fails."""
    sql, new_spec = stored_hash_select("t", spec, key, columns=columns)
    con = duckdb.connect()
    try:
        con.register("t", table)
        return con.sql(sql).to_arrow_table(), new_spec
    except duckdb.Error as exc:
        raise StoreError(f"cannot compute stored hashes: {exc}") from exc
    finally:
        con.close()

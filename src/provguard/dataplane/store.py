"""Labelled tables in a folder of Parquet files, queried under a policy.

:class:`LabelledStore` couples a :class:`~provguard.adapters.data_duckdb.ParquetDataStore` with
its :class:`~provguard.sqlgen.SchemaRegistry`: the main job's ``profiles`` by default, plus one
sidecar ``<root>/_labels/<table>.json`` per table created by a policy-aware ``CREATE TABLE AS``
(its derived spec and the origin names its bitmasks use). Queries are rewritten by
:func:`provguard.sqlgen.rewrite` and run in DuckDB (default), Spark or PostgreSQL.

A derived table and its sidecar are two files, so they carry the same random *labels token*
(Parquet schema metadata ``provguard.labels`` and the sidecar's ``token``): a table whose token
does not match its sidecar (an interrupted ``CREATE OR REPLACE``) cannot be queried until it is
made again, and a derived table made before row labels were recorded (no ``row_label`` in its
spec: its row count was unlabelled, issue 4 L5) is refused too (PG160).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from provguard.adapters.data_duckdb import ParquetDataStore
from provguard.errors import InputError, StoreError
from provguard.provenance import OriginRegistry, ProvenanceLabel, declassify, default_registry
from provguard.sqlgen import (
    QueryError,
    QueryPolicy,
    QueryRefused,
    Rewritten,
    SchemaRegistry,
    TableSpec,
    default_schema,
    rewrite,
)
from provguard.sqlgen.schema import ANY_CONTROLLER, UNLABELLED_JOB_TABLES

LABELS_DIR = "_labels"
#: Parquet schema-metadata key holding a derived table's labels token (equal to its sidecar's)
TOKEN_KEY = b"provguard.labels"
#: Parquet schema-metadata key holding the token of a table's stored masks (equal to the
#: sidecar's ``masks_token``): a table rewritten by anything else loses its stored masks
MASKS_TOKEN_KEY = b"provguard.masks"
#: sidecar key of the Parquet file's identity as provguard wrote it with its masks token
MASKS_FILE_KEY = "masks_file"
#: sidecar key of a derived table's Parquet file identity as provguard wrote it with its labels
#: token: its labels and row labels are trusted only while the file is that very file
LABELS_FILE_KEY = "labels_file"
#: how long (seconds) a write waits for the filesystem clock to pass the table's timestamps
_CLOCK_WAIT = 2.0


def _file_identity(st: os.stat_result) -> dict[str, int]:
    """The identity of a file as ``os.stat`` gives it: byte ``size``, ``mtime_ns``,
    ``ctime_ns`` (nanoseconds since the epoch; the kernel sets ctime on every change, no
    ``utime`` can set it back) and inode ``ino``. Any rewrite of the file changes it."""
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "ino": st.st_ino,
    }


def _with_masks_token(table: pa.Table, spec: TableSpec) -> tuple[dict[bytes, bytes], str | None]:
    """``table``'s Parquet metadata with a fresh masks token when ``spec`` has stored masks or
    normalised labels (the token is also written to the sidecar; a table rewritten by anything
    else then no longer matches), and without one otherwise; and the token (or None)."""
    meta = dict(table.schema.metadata or {})
    if spec.mask_columns() or spec.labels_normalised:
        token = uuid.uuid4().hex
        meta[MASKS_TOKEN_KEY] = token.encode("ascii")
        return meta, token
    meta.pop(MASKS_TOKEN_KEY, None)
    return meta, None


@dataclass(frozen=True)
class QueryResult:
    """The rows (Arrow; ``<col>__origins`` columns are uint64 bitmasks) and the rewrite used."""

    table: pa.Table
    rewritten: Rewritten
    #: what happened to a ``CREATE TABLE`` target: ``created``, ``replaced`` (``CREATE OR
    #: REPLACE`` of a derived table) or ``kept`` (``IF NOT EXISTS`` on an existing one: nothing
    #: was run or written); None for a query
    created: str | None = None


@dataclass(frozen=True)
class DeclassifyResult:
    """What a declassification changed: rows whose label lost ``origin``, per before-mask."""

    table: str
    origins_column: str
    origin: str
    rows: int
    changes: tuple[tuple[int, int, int], ...] = field(default=())  # (before, after, rows)
    audit_seq: int | None = None


def run_duckdb(con: duckdb.DuckDBPyConnection, rw: Rewritten) -> pa.Table:
    """The rows of the rewritten statement ``rw`` (DuckDB dialect) on ``con``, as Arrow.

    A ``SELECT`` with an execution plan (:attr:`Rewritten.plan`, :mod:`provguard.sqlgen.plan`)
    runs the plan's SQL and applies its post-fetch steps (constant label bits, label
    normalisation, masks) to the Arrow result; it returns exactly what :attr:`Rewritten.sql`
    returns (values and labels, cell by cell). Everything else (``CREATE TABLE AS``, no plan,
    a value whose text form only DuckDB can give, a value type pyarrow's kernels do not take)
    runs :attr:`Rewritten.query_sql`.
    Raises :class:`duckdb.Error` as DuckDB does."""
    plan = rw.plan
    if plan is not None and rw.create_table is None:
        fetched = con.sql(plan.sql).to_arrow_table()
        try:
            done = plan.finish(fetched)
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
            done = None  # a value type pyarrow's kernels do not take: DuckDB answers
        if done is not None:
            return done
    return con.sql(rw.query_sql).to_arrow_table()


def _connect_frames(frames: Mapping[str, pa.Table]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    for name, table in frames.items():
        con.register(name, table)
    return con


def _as_arrow(obj: Any) -> pa.Table:
    if isinstance(obj, pa.Table):
        return obj
    if hasattr(obj, "to_arrow"):  # polars
        table = obj.to_arrow()
        if isinstance(table, pa.Table):
            return table
    if type(obj).__module__.startswith("pandas"):
        return pa.Table.from_pandas(obj, preserve_index=False)
    try:
        return pa.table(obj)
    except (TypeError, ValueError, pa.ArrowInvalid) as exc:
        raise InputError(f"not a table-like object: {type(obj).__name__}") from exc


def query_frames(
    frames: Mapping[str, Any],
    sql: str,
    schema: SchemaRegistry,
    policy: QueryPolicy | None,
) -> QueryResult:
    """Run a policy-aware ``SELECT`` over in-memory tables through Arrow (DuckDB).

    ``frames``: table name -> ``pyarrow.Table``, pandas or Polars DataFrame (anything exposing
    Arrow); each must hold the data and origins columns its :class:`TableSpec` names. Returns
    Arrow (``.to_pandas()`` / ``polars.from_arrow`` for a frame). Errors as
    :func:`provguard.sqlgen.rewrite`; :class:`StoreError` if DuckDB fails.
    """
    rw = rewrite(sql, schema, policy, dialect="duckdb")
    if rw.create_table is not None:
        raise QueryError("CREATE TABLE AS needs a LabelledStore (frames are read-only)")
    con = _connect_frames({n: _as_arrow(f) for n, f in frames.items()})
    try:
        return QueryResult(run_duckdb(con, rw), rw)
    except duckdb.Error as exc:
        raise StoreError(f"query failed: {exc}") from exc
    finally:
        con.close()


def query_polars(
    frames: Mapping[str, Any],
    sql: str,
    schema: SchemaRegistry,
    policy: QueryPolicy | None,
) -> Any:
    """:func:`query_frames` returning a ``polars.DataFrame`` (zero-copy through Arrow; the
    ``<col>__origins`` labels are ``UInt64``). ``frames`` may be Polars, pandas or Arrow tables.
    Raises :class:`InputError` if Polars is not installed; errors as :func:`query_frames`."""
    try:
        import polars as pl
    except ImportError as exc:  # pragma: no cover - polars is a declared dependency
        raise InputError("query_polars needs the 'polars' package") from exc
    return pl.from_arrow(query_frames(frames, sql, schema, policy).table)


class LabelledStore:
    """Labelled Parquet tables under ``root`` with their provenance schema.

    ``base``: the registry of the tables not created here (default
    :func:`~provguard.sqlgen.default_schema`); ``registry``: origin names of the bitmasks.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        base: SchemaRegistry | None = None,
        registry: OriginRegistry | None = None,
    ) -> None:
        self.data = ParquetDataStore(root)
        self.base = base or default_schema()
        self.registry = registry or default_registry()
        #: derived tables that cannot be read, with why (filled by :attr:`schema`)
        self.unreadable: dict[str, str] = {}

    # ------------------------------------------------------------------ schema
    def _sidecar(self, name: str) -> Path:
        self.data.path(name)  # validates the name
        return self.data.root / LABELS_DIR / f"{name}.json"

    @property
    def schema(self) -> SchemaRegistry:
        """The base registry plus every derived table's sidecar spec (only existing tables)."""
        reg = self.base
        folder = self.data.root / LABELS_DIR
        present = set(self.data.tables())
        unreadable: dict[str, str] = {}
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            if path.stem not in present:
                continue
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise StoreError(f"cannot read labels sidecar {path}: {exc}") from exc
            names = tuple(raw.get("origins", ()))
            if names != self.registry.names[: len(names)]:
                raise StoreError(
                    f"{path}: its origin registry {names} does not match this store's"
                    f" {self.registry.names}"
                )
            spec = SchemaRegistry.parse({"tables": {path.stem: raw["spec"]}}, str(path))
            table_spec = spec.tables[path.stem]
            loaded = table_spec.mask_columns() or table_spec.labels_normalised
            if loaded and not self._masks_current(path.stem, raw):
                # the table was rewritten since its masks were stored or its labels normalised:
                # never read those masks, read its labels as raw ones
                table_spec = _without_masks(table_spec, normalised=False)
            if path.stem not in self.base.tables:
                why = self._derived_problem(path.stem, raw, table_spec)
                if why is not None:
                    unreadable[path.stem] = why
            else:
                # controller isolation is the schema's, never the sidecar's: a sidecar written
                # before it existed (stored masks / hashes of profiles) does not switch it off
                base = self.base.tables[path.stem]
                if table_spec.controller_column != base.controller_column:
                    table_spec = table_spec.model_copy(
                        update={"controller_column": base.controller_column}
                    )
            reg = reg.with_table(path.stem, table_spec)
        self.unreadable = unreadable
        return reg

    def derived_tables(self) -> frozenset[str]:
        """The stored tables made by ``CREATE TABLE AS`` here (a sidecar, not a base table)."""
        folder = self.data.root / LABELS_DIR
        present = set(self.data.tables())
        sidecars = {p.stem for p in folder.glob("*.json")} if folder.is_dir() else set()
        return frozenset((sidecars & present) - set(self.base.tables))

    def _derived_problem(self, name: str, raw: Mapping[str, Any], spec: TableSpec) -> str | None:
        """Why derived table ``name`` cannot be read, or None."""
        if spec.row_label is None:
            return (
                f"table '{name}' was created before row labels were recorded: which of its rows"
                " exist may depend on data the policy forbids (issue 4, L5), so it cannot be"
                f" queried under a policy; make it again (CREATE OR REPLACE TABLE {name} AS ...)"
            )
        token = raw.get("token")
        try:
            meta = pq.read_schema(self.data.path(name)).metadata or {}
        except (OSError, pa.ArrowInvalid) as exc:
            raise StoreError(f"cannot read table {name}: {exc}") from exc
        stored = meta.get(TOKEN_KEY)
        if token is None or stored is None or stored.decode("ascii", "replace") != token:
            return (
                f"table '{name}' does not match its labels sidecar (an interrupted CREATE OR"
                " REPLACE, or a file changed outside provguard): it cannot be queried until"
                f" it is made again (CREATE OR REPLACE TABLE {name} AS ...)"
            )
        if not self._same_file(name, raw.get(LABELS_FILE_KEY)):
            # the token is schema metadata, which a pyarrow rewrite keeps: the file's identity
            # is what tells provguard's write from any other
            return (
                f"table '{name}' is not the file provguard wrote with its labels (its size,"
                " mtime, ctime or inode differ from those recorded in its labels sidecar: it was"
                " rewritten outside provguard, or made before file identities were recorded),"
                " so its labels and row labels cannot be trusted; it cannot be queried until it"
                f" is made again (CREATE OR REPLACE TABLE {name} AS ...)"
            )
        return None

    def _write_derived(self, name: str, table: pa.Table, spec: TableSpec) -> None:
        """Write derived table ``name`` and then its sidecar, both with a fresh labels token:
        until both are written the pair does not match and the table cannot be read."""
        token = uuid.uuid4().hex
        meta, masks_token = _with_masks_token(table, spec)
        meta[TOKEN_KEY] = token.encode("ascii")
        self.data.write_table(name, table.replace_schema_metadata(meta))
        self._write_sidecar(
            name, spec, token=token, masks_token=masks_token, written=self._stat(name)
        )

    def _write_labelled(self, name: str, table: pa.Table, spec: TableSpec) -> None:
        """Write ``table`` and its sidecar ``spec``: a derived table with a new labels token; a
        base table with, when its spec has stored masks, a new masks token in both."""
        if name in self.derived_tables():
            self._write_derived(name, table, spec)
            return
        meta, masks_token = _with_masks_token(table, spec)
        # the table first: until the sidecar names its masks token (if any) no stored mask of
        # either version is read (the tokens differ), so the CASE answers in between
        self.data.write_table(name, table.replace_schema_metadata(meta))
        self._write_sidecar(name, spec, masks_token=masks_token, written=self._stat(name))

    def _stat(self, name: str) -> os.stat_result:
        try:
            return os.stat(self.data.path(name))
        except OSError as exc:
            raise StoreError(f"cannot stat table {name}: {exc}") from exc

    def _same_file(self, name: str, recorded: Any) -> bool:
        """Whether table ``name``'s Parquet file is the one whose identity (``size``,
        ``mtime_ns``, ``ctime_ns``, ``ino``: :func:`_file_identity`) provguard ``recorded`` in a
        sidecar right after writing it; False when nothing was recorded. Used for stored masks,
        normalised labels and derived tables' labels alike."""
        return isinstance(recorded, dict) and recorded == _file_identity(self._stat(name))

    def _masks_current(self, name: str, raw: Mapping[str, Any]) -> bool:
        """Whether ``name``'s stored masks (and normalised-labels flag) were written with the
        table as it is now: the Parquet masks token equals the sidecar's ``masks_token`` AND the
        file's size, ``mtime_ns``, ``ctime_ns`` and inode equal the sidecar's ``masks_file``
        (recorded by provguard's own write). A file rewritten by any other writer keeps the
        token if it copies the schema metadata (pyarrow does), but never its identity."""
        token = raw.get("masks_token")
        if token is None or not self._same_file(name, raw.get(MASKS_FILE_KEY)):
            return False
        try:
            meta = pq.read_schema(self.data.path(name)).metadata or {}
        except (OSError, pa.ArrowInvalid) as exc:
            raise StoreError(f"cannot read table {name}: {exc}") from exc
        stored = meta.get(MASKS_TOKEN_KEY)
        return stored is not None and stored.decode("ascii", "replace") == token

    def _write_sidecar(
        self,
        name: str,
        spec: TableSpec,
        *,
        token: str | None = None,
        masks_token: str | None = None,
        written: os.stat_result | None = None,
        identity: Mapping[str, int] | None = None,
        labels_identity: Mapping[str, int] | None = None,
        record_labels: bool = True,
    ) -> None:
        """Write ``name``'s sidecar atomically (temporary file, then ``os.replace``).

        With a ``masks_token``, ``written`` (``os.stat`` of the table right after provguard
        wrote it) is recorded as ``masks_file`` (:func:`_file_identity`); or ``identity``, an
        identity recorded earlier, is kept as it is (the table was not rewritten). Likewise with
        a labels ``token`` (a derived table) as ``labels_file`` (``record_labels=False``: not
        from ``written``, e.g. a declassification of a table whose file was already changed
        elsewhere; ``labels_identity``: one recorded earlier, kept). Before the
        sidecar is published the write waits (at most ``_CLOCK_WAIT`` s, usually one clock tick
        of a few ms) until the filesystem's clock, probed on the temporary sidecar itself, is
        past the table's mtime and ctime: any later rewrite of the table then gets another
        mtime even within the same tick. If the clock does not get there (a skewed network
        filesystem), no identity is recorded and the stored masks are not used (the ``CASE``
        answers).
        Raises :class:`StoreError` on I/O failure."""
        path = self._sidecar(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        body: dict[str, Any] = {
            "origins": list(self.registry.names),
            "spec": spec.model_dump(mode="json"),
        }
        if token is not None:
            body["token"] = token
            if written is not None and record_labels:
                body[LABELS_FILE_KEY] = _file_identity(written)
            elif labels_identity is not None:
                body[LABELS_FILE_KEY] = dict(labels_identity)
        if masks_token is not None:
            body["masks_token"] = masks_token
            if written is not None:
                body[MASKS_FILE_KEY] = _file_identity(written)
            elif identity is not None:
                body[MASKS_FILE_KEY] = dict(identity)
        try:
            tmp.write_text(json.dumps(body, indent=2, sort_keys=True), encoding="utf-8")
            stamp = max(written.st_mtime_ns, written.st_ctime_ns) if written else None
            recorded = {MASKS_FILE_KEY, LABELS_FILE_KEY} & set(body)
            if recorded and stamp is not None and not _clock_passed(tmp, stamp):
                for key in recorded:
                    del body[key]
                tmp.write_text(json.dumps(body, indent=2, sort_keys=True), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            raise StoreError(f"cannot write labels sidecar {path}: {exc}") from exc

    def _read_sidecar(self, name: str) -> dict[str, Any]:
        path = self._sidecar(name)
        try:
            raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read labels sidecar {path}: {exc}") from exc
        return raw

    # ------------------------------------------------------------------ queries
    def rewrite(
        self, sql: str, policy: QueryPolicy | None, *, dialect: str = "duckdb"
    ) -> Rewritten:
        """:func:`provguard.sqlgen.rewrite` against this store's schema. A query naming a table
        without a provenance schema raises :class:`QueryError` (PG160) that lists which of the
        store's tables can be queried and which cannot."""
        schema = self.schema
        if self.unreadable:
            for name in _read_tables(sql):
                if name in self.unreadable:
                    raise QueryError(self.unreadable[name])
        try:
            return rewrite(sql, schema, policy, dialect=dialect, registry=self.registry)
        except QueryError as exc:
            if type(exc) is not QueryError:
                raise
            missing = _unschematised(sql, schema)
            if not missing:
                raise
            stored = set(self.data.tables())
            queryable = sorted(stored & set(schema.tables)) or ["none"]
            without = sorted(stored - set(schema.tables)) or ["none"]
            raise QueryError(
                f"table(s) {', '.join(missing)} have no provenance schema, so they cannot be"
                f" queried under a policy. Queryable in {self.data.root}:"
                f" {', '.join(queryable)}; stored without a schema: {', '.join(without)}."
                + (
                    f" {', '.join(job)}: written by the main job without per-row origins,"
                    " never queryable under a policy."
                    if (job := sorted(set(missing) & UNLABELLED_JOB_TABLES))
                    else ""
                )
                + (
                    " Declare a table of your own (categories and labels) in a schema file"
                    " (provguard query --schema FILE, docs/dataplane.md)"
                    if set(missing) - UNLABELLED_JOB_TABLES
                    else ""
                )
            ) from None

    def query(
        self,
        sql: str,
        policy: QueryPolicy | None,
        *,
        engine: str = "duckdb",
        spark: Any = None,
        postgres: Any = None,
    ) -> QueryResult:
        """Run ``sql`` under ``policy`` (None: labels only, no enforcement).

        ``engine``: ``duckdb`` (in-process), ``spark`` (pass a
        :class:`~provguard.adapters.spark_engine.SparkEngine` as ``spark``) or ``postgres`` (pass
        a :class:`~provguard.adapters.data_postgres.PostgresEngine` as ``postgres``; the store's
        tables are loaded into it). A ``CREATE TABLE t
        AS`` writes ``t`` (values as masked, with ``__origins`` columns and the row label
        ``__row__origins``) and its labels sidecar, and returns the rows written.

        ``CREATE TABLE`` targets (:meth:`_create_target`): never a base table of the schema or a
        stored table without a derived spec (PG160: that would replace a source or relabel it);
        an existing derived table only with ``OR REPLACE`` (rewritten with its new spec) or
        ``IF NOT EXISTS`` (kept as it is: nothing is run or written, ``created="kept"``).
        Errors: :class:`QueryError` family, :class:`StoreError`.
        """
        if engine not in ("duckdb", "spark", "postgres"):
            raise QueryError(f"unknown engine '{engine}' (duckdb, spark or postgres)")
        rw = self.rewrite(sql, policy, dialect=engine)
        created: str | None = None
        if rw.create_table is not None:
            created = self._create_target(rw)
            if created == "kept":
                empty = pq.read_schema(self.data.path(rw.create_table)).empty_table()
                return QueryResult(empty, rw, created)
        if engine == "duckdb":
            con = self.data.connect()
            try:
                table = run_duckdb(con, rw)
            except duckdb.Error as exc:
                raise StoreError(f"query failed: {exc}") from exc
            finally:
                con.close()
        elif engine == "postgres":
            if postgres is None:
                raise QueryError("engine 'postgres' needs a PostgresEngine")
            for name in self.data.tables():
                postgres.register(name, self.data.read_table(name))
            table = postgres.query(rw.query_sql, rw.label_columns)
        else:
            if spark is None:
                raise QueryError("engine 'spark' needs a SparkEngine")
            for name in self.data.tables():
                spark.register(name, self.data.read_table(name))
            table = spark.query(rw.query_sql, rw.label_columns)
        if rw.create_table is not None:
            assert rw.created_spec is not None
            self._write_derived(rw.create_table, table, rw.created_spec)
        return QueryResult(table, rw, created)

    def _create_target(self, rw: Rewritten) -> str:
        """Whether ``CREATE TABLE`` may write ``rw.create_table``: ``created`` (new),
        ``replaced`` or ``kept``; raises :class:`QueryError` (PG160) for what cannot be
        honoured."""
        name = rw.create_table
        assert name is not None
        if rw.replace and rw.if_not_exists:
            raise QueryError("CREATE OR REPLACE TABLE ... IF NOT EXISTS: choose one of the two")
        derived = self.derived_tables()
        if name in self.base.tables or (name in self.data.tables() and name not in derived):
            what = (
                "a table of the store's provenance schema"
                if name in self.base.tables
                else "a stored table with no derived labels"
            )
            raise QueryError(
                f"CREATE TABLE {name}: '{name}' is {what}, not one made by CREATE TABLE AS; a"
                " policy-aware statement never replaces or relabels a source table (with OR"
                " REPLACE, IF NOT EXISTS or not): choose another name"
            )
        if name not in derived:
            return "created"
        if rw.if_not_exists:
            return "kept"
        owner = self.schema.table(name).controller
        made_by = rw.created_spec.controller if rw.created_spec is not None else None
        if rw.replace and owner is not None and made_by is not None and owner != made_by:
            # controller isolation: one app never replaces (destroys) another app's table
            raise QueryRefused(
                f"CREATE OR REPLACE TABLE {name}: '{name}' belongs to"
                f" {'several apps' if owner == ANY_CONTROLLER else repr(owner)}; app"
                f" '{made_by}' may not replace another controller's table: choose another name",
                column=name,
                rules=(),
                clause=f"CREATE TABLE {name}",
            )
        if not rw.replace:
            raise QueryError(
                f"table '{name}' already exists (CREATE OR REPLACE TABLE replaces a table made by"
                " CREATE TABLE AS, with its labels; CREATE TABLE IF NOT EXISTS keeps it)"
            )
        return "replaced"

    def _rewrite_table(self, table: str, sql: str, new_spec: TableSpec, what: str) -> None:
        """Run ``sql`` (the table plus or minus companions) and write its result as ``table``
        with ``new_spec`` (:meth:`_write_labelled`: sidecar and Parquet token together).
        ``what``: the operation, for the :class:`StoreError` a failing query raises. A derived
        table whose labels cannot be trusted (:meth:`_derived_problem`: changed outside
        provguard) raises :class:`StoreError`: rewriting it would record its file as
        provguard's and make it readable again."""
        _ = self.schema  # refreshes self.unreadable from the files as they are now
        if table in self.unreadable:
            raise StoreError(f"cannot {what} of {table}: {self.unreadable[table]}")
        con = self.data.connect()
        try:
            result = con.sql(sql).to_arrow_table()
        except duckdb.Error as exc:
            raise StoreError(f"cannot {what} of {table}: {exc}") from exc
        finally:
            con.close()
        self._write_labelled(table, result, new_spec)

    def store_hashes(
        self, table: str, key: bytes | str, *, columns: list[str] | None = None
    ) -> TableSpec:
        """Compute the keyed hash of ``columns`` (default: every column with a data category)
        of ``table`` once and store it as ``<col>__hmac`` companions; the table's spec, with
        ``hash_column`` per column and the key's fingerprint, is written to its sidecar. Queries
        under the same key read the stored hashes instead of computing them
        (:mod:`provguard.dataplane.hashes`). Returns the new spec. Errors as
        :func:`~provguard.dataplane.hashes.stored_hash_select`; :class:`StoreError` on I/O."""
        from provguard.dataplane.hashes import stored_hash_select

        spec = self.schema.table(table)
        sql, new_spec = stored_hash_select(table, spec, key, columns=columns)
        self._rewrite_table(table, sql, new_spec, "compute stored hashes")
        return new_spec

    def store_masks(
        self, table: str, policy: QueryPolicy, *, columns: list[str] | None = None
    ) -> dict[str, str]:
        """Compute the masked value of ``columns`` of ``table`` under ``policy`` once (the
        rewrite's own ``CASE`` for ``SELECT col FROM table``) and store it as
        ``<col>__mask_<fp12>`` companions; each column's spec records the fingerprint ``fp``
        (:mod:`provguard.dataplane.masks`, :mod:`provguard.sqlgen.stored`). Queries whose
        verdict and label give the same fingerprint read the companion instead of the ``CASE``.
        Masks of other fingerprints are kept (one per policy/app/purpose served); the same
        fingerprint is recomputed. ``columns``: default every protected column with a per-row
        label that ``policy`` masks. Returns column -> fingerprint. Errors as
        :func:`~provguard.dataplane.masks.stored_mask_select` and
        :func:`~provguard.dataplane.masks.check_mask_types`; :class:`StoreError` on I/O."""
        from provguard.dataplane.masks import check_mask_types, stored_mask_select

        sql, new_spec, stored = stored_mask_select(table, self.schema, policy, columns=columns)
        if not stored:
            return stored
        check_mask_types(pq.read_schema(self.data.path(table)), stored)
        self._rewrite_table(table, sql, new_spec, "compute stored masks")
        return stored

    def normalise_labels(self, table: str) -> TableSpec:
        """Rewrite the per-row origins columns of ``table`` with 0 and NULL as the ``unknown``
        bit (the same meaning) and set ``labels_normalised`` in its spec, so the rewrite reads
        them without ``COALESCE(NULLIF(x, 0), unknown)``. Stored masks are dropped (their
        fingerprints name the old label expression): call :meth:`store_masks` after this. The
        flag is protected like stored masks (the Parquet masks token): a table rewritten by
        anything else is read with raw labels again. Returns the new spec. Errors as
        :func:`~provguard.dataplane.masks.normalised_labels_select`; :class:`StoreError`."""
        from provguard.dataplane.masks import normalised_labels_select

        spec = self.schema.table(table)
        unknown = 1 << self.registry.bit("unknown")
        sql, new_spec = normalised_labels_select(table, spec, unknown)
        self._rewrite_table(table, sql, new_spec, "normalise the labels")
        return new_spec

    def drop_masks(
        self,
        table: str,
        *,
        fingerprints: list[str] | None = None,
        policy: QueryPolicy | None = None,
    ) -> TableSpec:
        """Remove stored masks of ``table``: those with the listed ``fingerprints``, those
        :meth:`store_masks` would make under ``policy``, or (neither given) all of them. The
        sidecar is written first, so queries fall back to the ``CASE`` before the companions
        disappear. Returns the new spec; :class:`StoreError` on I/O."""
        from provguard.dataplane.masks import drop_masks_select, mask_fingerprints

        spec = self.schema.table(table)
        wanted: list[str] | None = fingerprints
        if policy is not None:
            wanted = [*(wanted or []), *mask_fingerprints(table, self.schema, policy).values()]
        sql, new_spec = drop_masks_select(table, spec, wanted)
        if new_spec == spec:
            return spec
        self._rewrite_table(table, sql, new_spec, "drop stored masks")
        return new_spec

    # ------------------------------------------------------------------ declassification
    def declassify(
        self,
        table: str,
        column: str,
        origin: str,
        *,
        actor: str,
        reason: str,
        at: datetime,
        audit: Any,
        where: str | None = None,
    ) -> DeclassifyResult:
        """Remove ``origin`` from the label of ``column`` in ``table`` (rows matching the SQL
        predicate ``where``, default all), recording who (``actor``) and why (``reason``).

        The audit entry (kind ``declassify``; ``audit`` is an
        :class:`~provguard.adapters.audit_sqlite.SqliteAuditLog`) is appended before the table
        is rewritten atomically; a failed write appends ``declassify.aborted``. Every data column
        sharing the same origins column is declassified with it (listed in the payload).
        Raises :class:`InputError` for an empty actor/reason, an unknown origin/column, a
        predicate with subqueries or non-table columns; :class:`StoreError` on I/O failure.
        """
        if not actor.strip() or not reason.strip():
            raise InputError("declassification needs an actor and a reason")
        spec = self.schema.table(table)
        cs = spec.columns.get(column)
        if cs is None or cs.origins_column is None:
            raise InputError(f"column '{column}' of '{table}' has no per-row origins column")
        bit = 1 << self.registry.bit(origin)
        ocol = cs.origins_column
        sharing = sorted(n for n, c in spec.columns.items() if c.origins_column == ocol)
        cond = self._predicate(where, spec)
        o = exp.column(ocol)
        hit = exp.and_(
            cond,
            exp.NEQ(
                this=exp.Paren(this=exp.BitwiseAnd(this=o.copy(), expression=_u(bit))),
                expression=_u(0),
            ),
        )
        counts_sql = (
            exp.select(exp.alias_(o.copy(), "before"), exp.alias_(exp.Count(this=exp.Star()), "n"))
            .from_(table)
            .where(hit.copy())
            .group_by(o.copy())
            .order_by(o.copy())
            .sql(dialect="duckdb")
        )
        keep = ~bit & ((1 << 64) - 1)
        kept: exp.Expr = exp.BitwiseAnd(this=o.copy(), expression=_u(keep))
        if spec.labels_normalised:
            # a normalised label holds no 0: removing its last origin leaves it unknown
            unknown = _u(1 << self.registry.bit("unknown"))
            kept = exp.Coalesce(this=exp.Nullif(this=kept, expression=_u(0)), expressions=[unknown])
        new_value = exp.Case(ifs=[exp.If(this=hit.copy(), true=kept)], default=o.copy())
        update_sql = (
            exp.select(exp.Star(**{"replace": [exp.alias_(new_value, ocol)]}))
            .from_(table)
            .sql(dialect="duckdb")
        )
        con = self.data.connect()
        try:
            counts = con.sql(counts_sql).fetchall()
            new_table = con.sql(update_sql).to_arrow_table()
        except duckdb.Error as exc:
            raise StoreError(f"declassification query failed: {exc}") from exc
        finally:
            con.close()
        changes: list[tuple[int, int, int]] = []
        records = []
        for before, n in counts:
            label, record = declassify(
                ProvenanceLabel(int(before)),
                self.registry,
                origin,
                actor=actor,
                reason=reason,
                at=at,
            )
            changes.append((int(before), label.mask, int(n)))
            records.append(
                {
                    "before": sorted(self.registry.names_of(record.before)),
                    "after": sorted(self.registry.names_of(record.after)),
                    "rows": int(n),
                }
            )
        rows = sum(n for _, _, n in changes)
        payload = {
            "table": table,
            "columns": sharing,
            "origins_column": ocol,
            "origin": origin,
            "actor": actor,
            "reason": reason,
            "where": where or "",
            "rows": rows,
            "changes": records,
        }
        # stored masks of the relabelled columns are stale once the labels change
        stale = sorted(m for n in sharing for m in spec.columns[n].stored_masks.values())
        if rows and stale:
            payload["stored_masks_dropped"] = stale
        entry = audit.append("declassify", payload, at)
        if rows:
            try:
                if stale:
                    self._forget_masks(table, sharing)  # queries use the CASE from now on
                # the other columns' masks (and the normalised flag) stay current only if they
                # were current before this write: then the new file's identity is recorded
                raw = self._read_sidecar(table) if self._sidecar(table).is_file() else {}
                current = self._masks_current(table, raw)
                # a derived table's labels likewise: only if its file was provguard's
                labels_current = raw.get("token") is not None and self._same_file(
                    table, raw.get(LABELS_FILE_KEY)
                )
                old = self.data.read_table(table).schema
                kept = pa.schema([f for f in old if f.name not in stale], metadata=old.metadata)
                self.data.write_table(table, new_table.drop_columns(stale).cast(kept))
                if current or labels_current:
                    spec_now = SchemaRegistry.parse(
                        {"tables": {table: raw["spec"]}}, str(self._sidecar(table))
                    ).tables[table]
                    self._write_sidecar(
                        table,
                        spec_now,
                        token=raw.get("token"),
                        masks_token=raw.get("masks_token") if current else None,
                        written=self._stat(table),
                        record_labels=labels_current,
                    )
            except (StoreError, pa.ArrowInvalid) as exc:
                audit.append(
                    "declassify.aborted", {"declassify_seq": entry.seq, "error": str(exc)}, at
                )
                raise StoreError(f"declassification not written: {exc}") from exc
        return DeclassifyResult(table, ocol, origin, rows, tuple(changes), entry.seq)

    def _forget_masks(self, table: str, columns: list[str]) -> None:
        """Rewrite ``table``'s sidecar without the stored masks of ``columns`` (tokens and the
        recorded file identity kept: the table is not rewritten by this)."""
        path = self._sidecar(table)
        raw = self._read_sidecar(table)
        spec = SchemaRegistry.parse({"tables": {table: raw["spec"]}}, str(path)).tables[table]
        spec = _without_masks(spec, columns)
        recorded = raw.get(MASKS_FILE_KEY)
        labels = raw.get(LABELS_FILE_KEY)
        self._write_sidecar(
            table,
            spec,
            token=raw.get("token"),
            masks_token=raw.get("masks_token"),
            identity=recorded if isinstance(recorded, dict) else None,
            labels_identity=labels if isinstance(labels, dict) else None,
        )

    def _predicate(self, where: str | None, spec: TableSpec) -> exp.Expr:
        if where is None or not where.strip():
            return exp.true()
        try:
            pred = sqlglot.parse_one(where, read="duckdb", into=exp.Condition)
        except SqlglotError as exc:
            raise InputError(f"bad declassification predicate: {exc}") from None
        if pred.find(exp.Select, exp.Subquery, exp.Query) is not None:
            raise InputError("a declassification predicate cannot contain subqueries")
        allowed = set(spec.columns) | spec.origins_columns()
        for col in pred.find_all(exp.Column):
            if col.table or col.name not in allowed:
                raise InputError(f"predicate column '{col.sql()}' is not a column of the table")
        return pred


def _clock_passed(probe: Path, after_ns: int) -> bool:
    """Whether the filesystem clock, read by touching ``probe`` (``os.utime`` with the current
    time), passes ``after_ns`` (nanoseconds since the epoch) within ``_CLOCK_WAIT`` seconds."""
    deadline = time.monotonic() + _CLOCK_WAIT
    while True:
        os.utime(probe)
        if os.stat(probe).st_mtime_ns > after_ns:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)


def _without_masks(
    spec: TableSpec, columns: list[str] | None = None, *, normalised: bool | None = None
) -> TableSpec:
    """``spec`` without the stored masks of ``columns`` (default: all); ``normalised`` sets
    ``labels_normalised`` (None: kept)."""
    updated = {
        n: c.model_copy(update={"stored_masks": {}}) if columns is None or n in columns else c
        for n, c in spec.columns.items()
    }
    changes: dict[str, Any] = {"columns": updated}
    if normalised is not None:
        changes["labels_normalised"] = normalised
    return TableSpec.model_validate(spec.model_copy(update=changes).model_dump())


def _unschematised(sql: str, schema: SchemaRegistry) -> list[str]:
    """The tables ``sql`` reads that ``schema`` does not declare (CTE names excluded)."""
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except SqlglotError:
        return []
    ctes = {c.alias_or_name for c in tree.find_all(exp.CTE)}
    names = {t.name for t in tree.find_all(exp.Table) if t.name and t.name not in ctes}
    created = tree.this.name if isinstance(tree, exp.Create) and tree.this else None
    return sorted(n for n in names if n not in schema.tables and n != created)


def _read_tables(sql: str) -> list[str]:
    """The tables ``sql`` reads (CTE names and a ``CREATE TABLE`` target excluded)."""
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except SqlglotError:
        return []
    query = tree.expression if isinstance(tree, exp.Create) else tree
    if query is None:
        return []
    ctes = {c.alias_or_name for c in query.find_all(exp.CTE)}
    return sorted({t.name for t in query.find_all(exp.Table) if t.name and t.name not in ctes})


def _u(value: int) -> exp.Expr:
    return exp.cast(exp.Literal.number(value), exp.DataType.build("ubigint", dialect="duckdb"))

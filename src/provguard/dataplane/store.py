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

The token and the file identity live in the same sidecar as the labels, so they only catch
accidents: someone who can write the folder can edit both (findings I-3). With a *ledger*
(:class:`AuditLabelsLedger` over the control store's hash-chained audit log, what the CLI
passes) a derived table is read only while its file's SHA-256 and its spec digest equal those
recorded by the newest verified audit entry that wrote it (:class:`UnattestedLabelsError`,
PG210, otherwise). A data folder is bound to its control store (:func:`bind_data_store`,
:func:`check_binding`: findings I-4).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from provguard.adapters.data_duckdb import ParquetDataStore
from provguard.errors import (
    ControlStoreMismatchError,
    EngineError,
    InputError,
    StoreError,
    UnattestedLabelsError,
    engine_failure,
)
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
from provguard.sqlgen.schema import (
    ANY_CONTROLLER,
    PACKED_LABELS,
    PACKED_WIDTH,
    UNLABELLED_JOB_TABLES,
)

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
#: payload key of an audit entry that wrote derived tables: table -> ``{"file_sha256": ...,
#: "spec_sha256": ...}`` (:class:`DerivedDigests`); read back by :class:`AuditLabelsLedger`
DERIVED_LABELS_KEY = "derived_labels"
#: the audit entry kinds that may carry :data:`DERIVED_LABELS_KEY`: ``provguard query``
#: (``CREATE TABLE AS``), :meth:`LabelledStore.declassify` and the ``provguard data`` commands
LABELS_ENTRY_KINDS = (
    "query",
    "declassify",
    "data.store_masks",
    "data.drop_masks",
    "data.normalise_labels",
    "data.store_hashes",
)
#: the entry a failed declassification appends (its ``declassify_seq`` wrote nothing)
DECLASSIFY_ABORTED = "declassify.aborted"
#: file in a data folder naming the control store it is bound to (findings I-4)
CONTROL_BINDING_FILE = "_control_store.json"
#: table of the control store (SQLite) holding its random id
STORE_IDENTITY_TABLE = "store_identity"


# ---------------------------------------------------------------------- digests (findings I-3)
@dataclass(frozen=True)
class DerivedDigests:
    """What an audit entry records of a derived table it wrote: ``file_sha256``, the SHA-256
    (FIPS 180-4, 64 lowercase hex digits) of the Parquet file's bytes, and ``spec_sha256``, the
    SHA-256 of the canonical JSON (:func:`provguard.audit.chain.canonical_json`: sorted keys,
    no whitespace, UTF-8) of the table's spec as written to its labels sidecar (``spec``)."""

    file_sha256: str
    spec_sha256: str
    #: the data folder (resolved path) the table was written in: a table another folder
    #: sharing the control store wrote is not this folder's (fresh user 9, G16); None in
    #: entries written before session 6's last commit, which any folder accepts
    data_root: str | None = None

    def as_payload(self) -> dict[str, str]:
        """``{"file_sha256": ..., "spec_sha256": ...[, "data_root": ...]}``, as the audit entry
        stores it."""
        out = {"file_sha256": self.file_sha256, "spec_sha256": self.spec_sha256}
        if self.data_root is not None:
            out["data_root"] = self.data_root
        return out


def spec_digest(spec_json: Mapping[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of a sidecar's ``spec`` (a :class:`TableSpec` as
    ``model_dump(mode="json")`` gives it). Raises :class:`~provguard.errors.AuditError` for a
    value JSON cannot hold canonically (a non-finite float)."""
    from provguard.audit.chain import canonical_json

    return hashlib.sha256(canonical_json(dict(spec_json)).encode("utf-8")).hexdigest()


_SHA_CACHE: dict[tuple[str, int, int, int, int, int], str] = {}
_SHA_LOCK = threading.Lock()
_SHA_MAX = 1024


def file_sha256(path: Path) -> str:
    """SHA-256 hex of the bytes of ``path``, cached within the process on (path, device,
    inode, size, mtime_ns, ctime_ns): any rewrite (which changes ctime, and provguard's own
    writes replace the inode) is hashed again. Raises :class:`StoreError` on I/O failure."""
    try:
        st = os.stat(path)
        key = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with _SHA_LOCK:
            hit = _SHA_CACHE.get(key)
        if hit is not None:
            return hit
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise StoreError(f"cannot hash {path}: {exc}") from exc
    digest = h.hexdigest()
    with _SHA_LOCK:
        if len(_SHA_CACHE) >= _SHA_MAX:
            _SHA_CACHE.clear()
        _SHA_CACHE[key] = digest
    return digest


@dataclass(frozen=True)
class LabelsRecord:
    """The newest chained audit entry that wrote a derived table: its ``seq``, ``kind`` and the
    :class:`DerivedDigests` it recorded for the table."""

    seq: int
    kind: str
    digests: DerivedDigests


class LabelsLedger(Protocol):
    """Where :class:`LabelledStore` checks a derived table's file and sidecar against what
    provguard recorded when it wrote them (:class:`AuditLabelsLedger`: the audit log)."""

    def newest(self, table: str) -> LabelsRecord | None:
        """The newest verified record for ``table``, None when there is none. Raises
        :class:`UnattestedLabelsError` when that record does not verify."""
        ...


class AuditLabelsLedger:
    """The :data:`DERIVED_LABELS_KEY` records of the audit log in ``control_store`` (the SQLite
    control store, ``control.db``), verified as instrument events are.

    :meth:`newest` returns the newest entry of a :data:`LABELS_ENTRY_KINDS` kind recording the
    table (a ``declassify`` entry followed by its ``declassify.aborted`` is skipped: it wrote
    nothing). That entry must be inside the hash chain: its own hash, canonical payload and
    every link from it to the first verifying signed checkpoint at or after it (else to the
    log's head) are recomputed
    (:func:`provguard.adapters.control_sqlite.verify_event_entries`). When ``audit.pub`` is
    beside the control store, the entry must moreover be covered by a checkpoint signed with
    that key (Ed25519, RFC 8032; stored in the log or ``checkpoint.json`` beside it,
    :func:`provguard.adapters.control_sqlite.signed_cover`): an entry appended without the
    signing key does not vouch for a table (findings I-1, I-3). Reads only: the log is scanned
    newest first in pages and the scan stops at the table's newest record (a full scan, about
    50 ms on the demo's 92,791 entries, only when no entry records the table).

    Subclasses read other records the same way by setting :attr:`records_key`,
    :attr:`record_kinds` and :meth:`remedy` (:mod:`provguard.dataplane.attest`: base tables and
    registered ``--schema`` tables)."""

    #: the payload key holding ``{table: {"file_sha256": ..., "spec_sha256": ...}}``
    records_key: str = DERIVED_LABELS_KEY
    #: the entry kinds that may carry :attr:`records_key`
    record_kinds: tuple[str, ...] = LABELS_ENTRY_KINDS

    def remedy(self, table: str) -> str:
        """How a user makes ``table`` readable again (quoted in the PG210 messages)."""
        return f"CREATE OR REPLACE TABLE {table} AS ..."

    def __init__(self, control_store: Path) -> None:
        self.control_store = Path(control_store)
        self._engine: Any = None

    def close(self) -> None:
        """Release the pooled connections (the ledger can still be used afterwards)."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def newest(self, table: str) -> LabelsRecord | None:
        from sqlalchemy import create_engine, text
        from sqlalchemy.exc import SQLAlchemyError

        from provguard.adapters.sql_engine import store_url

        if not self.control_store.is_file():
            return None
        if self._engine is None:
            self._engine = create_engine(store_url(self.control_store))
        engine = self._engine
        kinds = ", ".join(f"'{k}'" for k in self.record_kinds)
        # newest first, one row at a time (SQLite walks the rowid backwards and stops at the
        # first match only under a LIMIT): the scan stops at the table's newest record, usually
        # near the head; the aborted declassifications it must skip are newer than it
        sql = text(
            "SELECT seq, at, kind, payload, prev_hash, hash FROM audit_log WHERE seq < :before"
            f" AND ((kind IN ({kinds}) AND json_extract(payload, :path) IS NOT NULL)"
            " OR kind = :aborted) ORDER BY seq DESC LIMIT 1"
        )
        try:
            with engine.connect() as conn:
                has_log = conn.execute(
                    text("SELECT 1 FROM sqlite_master WHERE type='table' AND name='audit_log'")
                ).first()
                if has_log is None:
                    return None
                params = {
                    "path": f'$.{self.records_key}."{table}"',
                    "aborted": DECLASSIFY_ABORTED,
                    "before": 1 << 62,
                }
                aborted: set[int] = set()
                while True:
                    rows = conn.execute(sql, params).all()
                    for row in rows:
                        entry = _entry_of(row)
                        if entry.kind == DECLASSIFY_ABORTED:
                            seq = entry.payload.get("declassify_seq")
                            if isinstance(seq, int):
                                aborted.add(seq)
                        elif not (entry.kind == "declassify" and entry.seq in aborted):
                            return self._verified(conn, entry, table)
                    if not rows:
                        break
                    params["before"] = int(rows[-1].seq)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read the audit log of {self.control_store}: {exc}") from exc
        return None

    def _verified(self, conn: Any, entry: Any, table: str) -> LabelsRecord:
        from provguard.adapters.control_sqlite import signed_cover, verify_event_entries
        from provguard.audit.folder import CHECKPOINT_FILE, PUBLIC_KEY_FILE
        from provguard.audit.signing import SignedCheckpoint, load_public_key
        from provguard.errors import AuditError

        where = f"audit entry #{entry.seq} ({entry.kind}) recording table '{table}'"
        folder = self.control_store.resolve().parent
        public = folder / PUBLIC_KEY_FILE
        key = None
        if public.is_file():
            try:
                key = load_public_key(public)
            except AuditError as exc:
                raise UnattestedLabelsError(
                    f"{public} cannot be read ({exc.message}): {where} cannot be checked",
                    table=table,
                    differs=("entry",),
                ) from None
        try:
            # from the entry to the first signed checkpoint after it (else the head)
            verify_event_entries(conn, [entry], key)
        except AuditError as exc:
            raise UnattestedLabelsError(
                f"{where} is not in the audit chain of {self.control_store} ({exc.message}), so"
                f" the labels of '{table}' cannot be trusted",
                table=table,
                differs=("entry",),
            ) from None
        if key is not None:
            exported = None
            path = folder / CHECKPOINT_FILE
            if path.is_file():
                try:
                    exported = SignedCheckpoint.from_json(path.read_text(encoding="utf-8"))
                except (AuditError, ValueError, OSError):
                    exported = None
            covered = signed_cover(conn, key, exported)
            if covered < entry.seq:
                raise UnattestedLabelsError(
                    f"{where} is not covered by a checkpoint signed with the key of {public}"
                    f" (signed up to #{covered}): an entry appended without the signing key"
                    f" does not vouch for a table's labels. After reviewing the log, sign it"
                    f" (provguard audit checkpoint export), or make the table again where the"
                    f" key is available ({self.remedy(table)})",
                    table=table,
                    differs=("entry",),
                )
        tables = entry.payload.get(self.records_key)
        recorded = tables.get(table) if isinstance(tables, dict) else None
        if not isinstance(recorded, dict) or not all(
            isinstance(recorded.get(k), str) for k in ("file_sha256", "spec_sha256")
        ):
            raise UnattestedLabelsError(
                f"{where} has no file_sha256 / spec_sha256 for it",
                table=table,
                differs=("entry",),
            )
        return LabelsRecord(
            entry.seq,
            entry.kind,
            DerivedDigests(
                recorded["file_sha256"],
                recorded["spec_sha256"],
                recorded["data_root"] if isinstance(recorded.get("data_root"), str) else None,
            ),
        )


def _entry_of(row: Any) -> Any:
    """An :class:`~provguard.audit.chain.AuditEntry` from an ``audit_log`` row (undecodable
    text kept raw, so verification flags it)."""
    from provguard.audit.chain import AuditEntry, parse_at
    from provguard.errors import AuditError

    try:
        at = parse_at(row.at)
    except AuditError:
        at = datetime(1, 1, 1, tzinfo=UTC)
    try:
        decoded = json.loads(row.payload)
    except (TypeError, ValueError):
        decoded = None
    return AuditEntry(
        seq=row.seq,
        at=at,
        kind=row.kind,
        payload=decoded if isinstance(decoded, dict) else {},
        prev_hash=row.prev_hash,
        hash=row.hash,
        payload_json=row.payload,
        at_text=row.at,
    )


# ---------------------------------------------------------------- control-store binding (I-4)
def control_store_id(control_store: Path, *, create: bool) -> str | None:
    """The random id (32 hex digits) of the SQLite control store ``control_store``, kept in
    its table ``store_identity``; ``create``: make one if it has none (the file must exist).
    None when the store has no id and ``create`` is False. Raises :class:`StoreError`."""
    if not control_store.is_file():
        return None
    try:
        con = sqlite3.connect(control_store, timeout=30)
        try:
            if create:
                with con:
                    con.execute(
                        f"CREATE TABLE IF NOT EXISTS {STORE_IDENTITY_TABLE}"
                        " (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
                    )
                    con.execute(
                        f"INSERT OR IGNORE INTO {STORE_IDENTITY_TABLE} VALUES (?, ?)",
                        ("control_store_id", uuid.uuid4().hex),
                    )
            elif (
                con.execute(
                    "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                    (STORE_IDENTITY_TABLE,),
                ).fetchone()
                is None
            ):
                return None
            row = con.execute(
                f"SELECT value FROM {STORE_IDENTITY_TABLE} WHERE name = 'control_store_id'"
            ).fetchone()
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the store id of {control_store}: {exc}") from exc
    return None if row is None else str(row[0])


def bound_control_store(data_root: Path) -> dict[str, str] | None:
    """The binding recorded in ``data_root/_control_store.json`` (``control_store_id`` and the
    ``control_store`` path it was made with), or None for an unbound data folder. Raises
    :class:`StoreError` for a file that is not such a binding."""
    path = Path(data_root) / CONTROL_BINDING_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read the control-store binding {path}: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("control_store_id"), str):
        raise StoreError(f"{path} is not a control-store binding (no control_store_id)")
    return {
        "control_store_id": raw["control_store_id"],
        "control_store": str(raw.get("control_store", "")),
    }


def bind_data_store(data_root: Path, control_store: Path) -> str:
    """Bind the data folder ``data_root`` to the SQLite control store ``control_store`` (which
    must exist): give the store an id if it has none (:func:`control_store_id`) and write it,
    with the store's path, to ``data_root/_control_store.json`` (atomically). What the main job
    does when it creates a data folder, and ``provguard query`` on an unbound one. Returns the
    id. Raises :class:`StoreError` on I/O failure."""
    sid = control_store_id(control_store, create=True)
    if sid is None:
        raise StoreError(f"no control store at {control_store} to bind {data_root} to")
    path = Path(data_root) / CONTROL_BINDING_FILE
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    body = {"control_store_id": sid, "control_store": str(control_store.resolve())}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(body, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise StoreError(f"cannot write the control-store binding {path}: {exc}") from exc
    return sid


def check_binding(data_root: Path, control_store: Path) -> str | None:
    """Refuse a control store other than the one ``data_root`` is bound to (findings I-4: a
    copy of the data queried with ``--control-store mine.db`` would keep the query out of the
    genuine audit log). Returns the bound id, or None for an unbound data folder. Raises
    :class:`~provguard.errors.ControlStoreMismatchError` (PG101) naming both ids when
    ``control_store`` is missing, has no id, or has another; :class:`StoreError` on I/O."""
    binding = bound_control_store(data_root)
    if binding is None:
        return None
    bound = binding["control_store_id"]
    given = control_store_id(control_store, create=False)
    if given != bound:
        made = f" (bound at {binding['control_store']})" if binding["control_store"] else ""
        what = (
            "does not exist"
            if not control_store.is_file()
            else f"has {'no store id' if given is None else f'store id {given}'}"
        )
        raise ControlStoreMismatchError(
            f"the data folder {data_root} is bound to control store {bound}{made}; the"
            f" control store {control_store} {what}. Every query on this data is recorded in"
            " the audit log of the control store it was created with: give that one"
            " (--control-store), or copy the data folder together with its control.db",
            bound=bound,
            given=given,
        )
    return bound


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
        failed = _engine_error(engine_failure("query failed", exc), sql, rw, schema, policy)
        raise failed from (None if failed.withheld else exc)
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

    ``ledger`` (e.g. :class:`AuditLabelsLedger` over the control store's audit log, what
    ``provguard query`` / ``provguard data`` pass): a derived table is then readable only while
    its Parquet file's SHA-256 and its sidecar's spec digest equal those of the newest verified
    audit entry that wrote it (:class:`LabelsRecord`); otherwise every query naming it raises
    :class:`~provguard.errors.UnattestedLabelsError` (PG210), and so do the load-time
    rewrites of it. Without a ledger (the Python API on its own) a derived table is checked
    against its sidecar only (labels token and file identity), which someone who can write the
    data folder can forge (findings I-3): the protection needs the audit log.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        base: SchemaRegistry | None = None,
        registry: OriginRegistry | None = None,
        ledger: LabelsLedger | None = None,
    ) -> None:
        self.data = ParquetDataStore(root)
        self.base = base or default_schema()
        self.registry = registry or default_registry()
        self.ledger = ledger
        #: derived tables that cannot be read, with why (filled by :attr:`schema`)
        self.unreadable: dict[str, str] = {}
        #: the derived tables among :attr:`unreadable` refused by the ledger, with the error
        self.unattested: dict[str, UnattestedLabelsError] = {}
        #: the digests of every derived table this instance wrote, newest write per table:
        #: what the audit entry of the write must record (:meth:`derived_labels_payload`)
        self.written: dict[str, DerivedDigests] = {}

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
        unattested: dict[str, UnattestedLabelsError] = {}
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
                if why is None and self.ledger is not None:
                    refused = self._attestation_problem(path.stem, raw)
                    if refused is not None:
                        unattested[path.stem] = refused
                        why = refused.message
                if why is not None:
                    unreadable[path.stem] = why
            else:
                # a base table's labels are the schema's, never the sidecar's: the sidecar only
                # adds what provguard computed (stored hashes and masks, normalised labels).
                # Controller isolation likewise (a sidecar written before it existed does not
                # switch it off), and an edited sidecar cannot empty a column's categories
                # (session 6: the I-3 edit on _labels/profiles.json made QQ handles unprotected)
                table_spec = _managed_overlay(self.base.tables[path.stem], table_spec)
            reg = reg.with_table(path.stem, table_spec)
        self.unreadable = unreadable
        self.unattested = unattested
        return reg

    def digests(self, name: str) -> DerivedDigests:
        """The :class:`DerivedDigests` of table ``name`` as it is now: SHA-256 of its Parquet
        file and of its sidecar's spec. Raises :class:`StoreError` when either cannot be read."""
        raw = self._read_sidecar(name)
        spec = raw.get("spec")
        if not isinstance(spec, dict):
            raise StoreError(f"labels sidecar of {name} has no spec")
        return DerivedDigests(
            file_sha256(self.data.path(name)), spec_digest(spec), str(self.data.root.resolve())
        )

    def _attestation_problem(
        self, name: str, raw: Mapping[str, Any]
    ) -> UnattestedLabelsError | None:
        """Why derived table ``name`` (sidecar ``raw``) does not match the newest record of the
        ledger, or None when it does (see the class docstring)."""
        assert self.ledger is not None
        try:
            record = self.ledger.newest(name)
        except UnattestedLabelsError as exc:
            return exc
        if record is None:
            return UnattestedLabelsError(
                f"table '{name}' has a labels sidecar but no audit entry records its writing"
                " (CREATE TABLE AS through provguard query, or a provguard data command): its"
                " file and labels were not written through the audited path, so they cannot be"
                f" trusted; make it again (CREATE OR REPLACE TABLE {name} AS ...)",
                table=name,
                differs=("entry",),
            )
        spec = raw.get("spec")
        now = DerivedDigests(
            file_sha256(self.data.path(name)),
            spec_digest(spec) if isinstance(spec, dict) else "",
        )
        here = str(self.data.root.resolve())
        differs = tuple(
            k
            for k, a, b in (
                ("file_sha256", now.file_sha256, record.digests.file_sha256),
                ("spec_sha256", now.spec_sha256, record.digests.spec_sha256),
                ("data_root", here, record.digests.data_root or here),
            )
            if a != b
        )
        if not differs:
            return None
        what = {
            "data_root": f"the entry wrote it in the data folder {record.digests.data_root},"
            f" not in {here}",
            "file_sha256": f"its Parquet file's SHA-256 is {now.file_sha256[:16]}..., the"
            f" entry recorded {record.digests.file_sha256[:16]}...",
            "spec_sha256": f"its labels sidecar's spec digest is {now.spec_sha256[:16]}...,"
            f" the entry recorded {record.digests.spec_sha256[:16]}...",
        }
        return UnattestedLabelsError(
            f"table '{name}' does not match audit entry #{record.seq} ({record.kind}), the"
            f" newest that wrote it: {'; '.join(what[k] for k in differs)}. The file or its"
            " labels were changed outside provguard, so its labels cannot be trusted; make it"
            f" again (CREATE OR REPLACE TABLE {name} AS ...)",
            table=name,
            differs=differs,
        )

    def derived_labels_payload(self, *names: str) -> dict[str, object]:
        """``{"derived_labels": {table: digests}}`` for each of ``names`` this instance wrote
        (:attr:`written`), ``{}`` when none: the part of an audit entry that lets later reads
        through an :class:`AuditLabelsLedger` trust those tables."""
        found = {n: self.written[n].as_payload() for n in names if n in self.written}
        return {DERIVED_LABELS_KEY: found} if found else {}

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
        until both are written the pair does not match and the table cannot be read. The
        digests of what was written are kept in :attr:`written`."""
        token = uuid.uuid4().hex
        meta, masks_token = _with_masks_token(table, spec)
        meta[TOKEN_KEY] = token.encode("ascii")
        digests = self._write_parquet(name, table.replace_schema_metadata(meta), spec)
        self._write_sidecar(
            name, spec, token=token, masks_token=masks_token, written=self._stat(name)
        )
        self.written[name] = digests

    def _write_parquet(self, name: str, table: pa.Table, spec: TableSpec) -> DerivedDigests:
        """Write ``table`` as ``name``'s Parquet file atomically (temporary file, then
        ``os.replace``, as :class:`ParquetDataStore` does) and return the digests of the bytes
        written and of ``spec``. Raises :class:`StoreError`."""
        data = _parquet_bytes(table)
        digests = DerivedDigests(
            hashlib.sha256(data).hexdigest(),
            spec_digest(spec.model_dump(mode="json")),
            str(self.data.root.resolve()),
        )
        target = self.data.path(name)
        tmp = target.with_suffix(".parquet.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)
        except OSError as exc:
            raise StoreError(f"cannot write table {name}: {exc}") from exc
        return digests

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
                if name in self.unattested:
                    raise self.unattested[name]
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
                failed = engine_failure("query failed", exc)
                failed = _engine_error(failed, sql, rw, self.schema, policy)
                raise failed from (None if failed.withheld else exc)
            finally:
                con.close()
        elif engine == "postgres":
            if postgres is None:
                raise QueryError("engine 'postgres' needs a PostgresEngine")
            for name in self.data.tables():
                postgres.register(name, self.data.read_table(name))
            try:
                table = postgres.query(rw.query_sql, rw.label_columns)
            except EngineError as failed:
                if not (withheld := _engine_error(failed, sql, rw, self.schema, policy)).withheld:
                    raise
                raise withheld from None
        else:
            if spark is None:
                raise QueryError("engine 'spark' needs a SparkEngine")
            for name in self.data.tables():
                spark.register(name, self.data.read_table(name))
            try:
                table = spark.query(rw.query_sql, rw.label_columns)
            except EngineError as failed:
                if not (withheld := _engine_error(failed, sql, rw, self.schema, policy)).withheld:
                    raise
                raise withheld from None
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
        if table in self.unattested:
            refused = self.unattested[table]
            raise UnattestedLabelsError(
                f"cannot {what} of {table}: {refused.message}",
                table=table,
                differs=refused.differs,
            )
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
        in_file = PACKED_LABELS in pq.read_schema(self.data.path(table)).names
        sql, new_spec = normalised_labels_select(
            table, spec, unknown, pack=self._labels_fit(table, spec), packed_in_file=in_file
        )
        self._rewrite_table(table, sql, new_spec, "normalise the labels")
        return new_spec

    def _labels_fit(self, table: str, spec: TableSpec) -> bool:
        """Whether every label of ``spec``'s packable columns fits a packed field: the registry
        names at most :data:`~provguard.sqlgen.schema.PACKED_WIDTH` origins and no stored label
        has a bit above them (one aggregate scan)."""
        names = spec.packable_columns()
        if len(names) < 2 or len(self.registry.names) > PACKED_WIDTH:
            return False
        bits = " | ".join(f"coalesce(bit_or({n}), 0)" for n in names)
        con = self.data.connect()
        try:
            rows = con.sql(f"SELECT ({bits}) >> {PACKED_WIDTH} FROM {table}").fetchall()
        except duckdb.Error as exc:
            raise engine_failure("cannot read the labels to pack", exc) from exc
        finally:
            con.close()
        return bool(rows) and int(rows[0][0] or 0) == 0

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
        replaced = [exp.alias_(new_value, ocol)]
        offset = spec.packed_fields().get(ocol)
        if offset is not None:
            # the packed copy of the label changes with it (a field loses bits, or becomes
            # the unknown bit, so it still fits its field)
            field = _u(((1 << PACKED_WIDTH) - 1) << offset)
            cleared = exp.BitwiseAnd(
                this=exp.column(PACKED_LABELS), expression=exp.BitwiseNot(this=field)
            )
            shifted = exp.BitwiseLeftShift(
                this=exp.Paren(this=new_value.copy()), expression=exp.Literal.number(offset)
            )
            replaced.append(
                exp.alias_(
                    exp.BitwiseOr(this=exp.Paren(this=cleared), expression=exp.Paren(this=shifted)),
                    PACKED_LABELS,
                )
            )
        update_sql = (
            exp.select(exp.Star(**{"replace": replaced})).from_(table).sql(dialect="duckdb")
        )
        con = self.data.connect()
        try:
            counts = con.sql(counts_sql).fetchall()
            new_table = con.sql(update_sql).to_arrow_table()
        except duckdb.Error as exc:
            raise engine_failure("declassification query failed", exc) from exc
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
        raw: dict[str, Any] = {}
        data = b""
        spec_now: TableSpec | None = None
        labels_current = current = False
        if rows:
            # the other columns' masks (and the normalised flag) stay current only if they
            # were current before this write: then the new file's identity is recorded
            raw = self._read_sidecar(table) if self._sidecar(table).is_file() else {}
            current = self._masks_current(table, raw)
            # a derived table's labels likewise: only if its file was provguard's (and, with a
            # ledger, attested by the audit log: a declassification never blesses an edit)
            _ = self.schema
            labels_current = (
                raw.get("token") is not None
                and self._same_file(table, raw.get(LABELS_FILE_KEY))
                and table not in self.unreadable
            )
            if "spec" in raw:
                spec_now = SchemaRegistry.parse(
                    {"tables": {table: raw["spec"]}}, str(self._sidecar(table))
                ).tables[table]
                if stale:
                    spec_now = _without_masks(spec_now, sharing)
            try:
                old = self.data.read_table(table).schema
                kept = pa.schema([f for f in old if f.name not in stale], metadata=old.metadata)
                data = _parquet_bytes(new_table.drop_columns(stale).cast(kept))
            except pa.ArrowInvalid as exc:
                raise StoreError(f"declassification not written: {exc}") from exc
            if labels_current and spec_now is not None:
                # the entry records the file and labels about to be written (written after it)
                digests = DerivedDigests(
                    hashlib.sha256(data).hexdigest(),
                    spec_digest(spec_now.model_dump(mode="json")),
                    str(self.data.root.resolve()),
                )
                payload[DERIVED_LABELS_KEY] = {table: digests.as_payload()}
        entry = audit.append("declassify", payload, at)
        if rows:
            try:
                if stale:
                    self._forget_masks(table, sharing)  # queries use the CASE from now on
                target = self.data.path(table)
                tmp = target.with_suffix(".parquet.tmp")
                try:
                    tmp.write_bytes(data)
                    os.replace(tmp, target)
                except OSError as exc:
                    raise StoreError(f"cannot write table {table}: {exc}") from exc
                if (current or labels_current) and spec_now is not None:
                    self._write_sidecar(
                        table,
                        spec_now,
                        token=raw.get("token"),
                        masks_token=raw.get("masks_token") if current else None,
                        written=self._stat(table),
                        record_labels=labels_current,
                    )
                if DERIVED_LABELS_KEY in payload:
                    self.written[table] = digests
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


def _managed_overlay(base: TableSpec, sidecar: TableSpec) -> TableSpec:
    """``base`` (a table of the store's schema) with only the fields provguard writes to its
    sidecar taken from ``sidecar``: per column ``hash_column`` (only the name
    :meth:`LabelledStore.store_hashes` gives, ``<column>__hmac``) and ``stored_masks``; per
    table ``hash_key_id``, ``labels_normalised`` and ``labels_packed`` (the packed fields'
    layout follows ``base``'s columns). Categories, labels, row rules and the controller
    column always come from ``base``. Raises ``ValueError`` (pydantic) only for a
    combination the spec's own validation refuses."""
    from provguard.dataplane.hashes import HASH_SUFFIX

    columns = {}
    for name, cs in base.columns.items():
        side = sidecar.columns.get(name)
        if side is None:
            columns[name] = cs
            continue
        hashed = side.hash_column if side.hash_column == name + HASH_SUFFIX else None
        columns[name] = cs.model_copy(
            update={"hash_column": hashed, "stored_masks": dict(side.stored_masks)}
        )
    hash_key_id = sidecar.hash_key_id if any(c.hash_column for c in columns.values()) else None
    merged = base.model_copy(
        update={
            "columns": columns,
            "hash_key_id": hash_key_id,
            "labels_normalised": sidecar.labels_normalised,
            # the fields' layout is the base spec's (packable_columns), only the flag is read
            "labels_packed": sidecar.labels_packed and sidecar.labels_normalised,
        }
    )
    return TableSpec.model_validate(merged.model_dump())


def _parquet_bytes(table: pa.Table) -> bytes:
    """``table`` as the bytes of a Parquet file (pyarrow's defaults, as
    :meth:`ParquetDataStore.write_table` writes it)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())


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
        if not normalised:
            changes["labels_packed"] = False  # packed labels are normalised ones
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
    """The tables ``sql`` reads (a ``CREATE TABLE`` target excluded), lower-cased as DuckDB
    resolves them (``FROM H`` reads ``h``). CTE names are kept: a CTE named like a stored table
    reads that table in its own body (``WITH h AS (SELECT * FROM h) ...``), and a name too many
    only checks a stored table more (session 8: both read a forged derived table unchecked)."""
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except SqlglotError:
        return []
    query = tree.expression if isinstance(tree, exp.Create) else tree
    if query is None:
        return []
    return sorted({t.name.lower() for t in query.find_all(exp.Table) if t.name})


def _u(value: int) -> exp.Expr:
    return exp.cast(exp.Literal.number(value), exp.DataType.build("ubigint", dialect="duckdb"))


# ------------------------------------------------------------------ engine errors


def reads_categorised(sql: str, rw: Rewritten, schema: SchemaRegistry) -> bool:
    """Whether the statement ``sql`` (rewritten as ``rw`` under ``schema``) may read a value of
    a column with data categories, anywhere: an output or control position with categories in
    its lineage, rows filtered at the scan or by a control filter, or -- by syntax, so a value
    read in a position the lineage drops (a projection an outer query ignores) still counts --
    a column reference named like a categorised column of a table it reads, a whole-row
    reference (a table or alias name, which DuckDB reads as the row's struct), a star other
    than ``COUNT(*)``'s or ``COLUMNS(...)``. A statement that cannot be parsed counts as
    reading one."""
    if rw.filtered or rw.control_filters:
        return True
    if any(c.categories or c.control_categories for c in rw.columns):
        return True
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except SqlglotError:
        return True
    scans = [t for t in tree.find_all(exp.Table) if t.name]
    names = {t.name.lower() for t in scans}
    categorised = {
        column.lower()
        for name in names
        if name in schema.tables
        for column, spec in schema.tables[name].columns.items()
        if spec.categories
    }
    rows = names | {t.alias.lower() for t in scans if t.alias}
    for node in tree.walk():
        # COUNT(*) reads no value; any other star (SELECT *, t.*, * EXCLUDE, struct_pack(*))
        # reads every column
        if isinstance(node, exp.Star) and not isinstance(node.parent, exp.Count):
            return True
        if isinstance(node, exp.Column) and node.name.lower() in categorised | rows:
            return True
        if isinstance(node, exp.Func) and node.sql_name().upper() == "COLUMNS":
            return True
        if isinstance(node, exp.Anonymous) and str(node.this).upper() == "COLUMNS":
            return True
    return False


def _engine_error(
    failed: EngineError,
    sql: str,
    rw: Rewritten,
    schema: SchemaRegistry,
    policy: QueryPolicy | None,
) -> EngineError:
    """The error a policy-aware query's engine failure is reported as: without the engine's
    message (:meth:`~provguard.errors.EngineError.withhold`, the engine's error class only)
    when ``policy`` is set and the statement reads a categorised column
    (:func:`reads_categorised`), since an engine's message can echo any value it read,
    unquoted (fresh user 12, H2); else ``failed`` as scrubbed
    (:func:`~provguard.errors.engine_failure`). A withheld error is raised ``from None``: the
    engine's exception (its message) is not chained to it."""
    if policy is not None and reads_categorised(sql, rw, schema):
        return failed.withhold()
    return failed

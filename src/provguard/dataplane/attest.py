"""Base tables and ``--schema`` tables attested by the audit log (session 8, issue 4).

Derived tables (``CREATE TABLE AS``) are read only while their Parquet file and labels spec
match the newest chained audit entry that wrote them (:class:`~provguard.dataplane.store.
AuditLabelsLedger`, PG210). This module does the same for the two other kinds of table a
policy-aware query reads:

* **base tables** -- the tables the main job (``provguard run``) and ``provguard data load``
  write (``profiles``, ``edges``, ``profile_display``, ``recommendations``, and the job's
  unlabelled tables). Every writer records, in the chained entry it already writes
  (``job.data`` at the end of a run, ``data.load``, the last ``data.normalise_labels`` /
  ``data.store_masks`` step of a load, and the ``provguard data`` commands), the payload field
  :data:`BASE_TABLES_KEY`: ``{table: {"file_sha256", "spec_sha256", "data_root"}}``
  (:func:`base_tables_payload`). ``file_sha256`` is the SHA-256 (FIPS 180-4) of the Parquet
  file's bytes, read back right after the write; ``spec_sha256`` the SHA-256 of the canonical
  JSON (:func:`provguard.audit.chain.canonical_json`) of the table's labels sidecar ``spec``
  (``_labels/<t>.json``: stored hashes and masks, normalised labels), or :data:`NO_SIDECAR`
  when it has none. :class:`BaseTablesLedger` reads them back.
* **declared tables** (``provguard query --schema FILE``): read only when a ``data.register``
  entry (:data:`REGISTER_KIND`, written by ``provguard data register``, with who and why)
  records the table under :data:`REGISTERED_KEY` with the file's SHA-256 and the
  declaration's digest (:func:`declaration_digest`), and both still match
  (:class:`RegistrationsLedger`).

:class:`StoreAttestation` is the check ``provguard query`` and ``provguard data`` run on the
tables a statement names, before anything is read: it raises
:class:`~provguard.errors.UnattestedLabelsError` (PG210) naming the table, the entry and what
differs, and :class:`~provguard.sqlgen.QueryError` (PG160) for a table file that is a symbolic
link, a hard link, or resolves outside the data folder (:func:`check_table_file`).

Folders written before this change (a job or load whose entries carry no
:data:`BASE_TABLES_KEY`): a base table no entry records is refused when the control store shows
that provguard's writers wrote the folder (a ``job.policy``, ``job.data`` or ``data.load``
entry: :func:`provguard_wrote`), with a message to run ``provguard run`` / ``provguard data
load --replace`` again. A folder no provguard writer recorded (tables written with the Python
API, ``ParquetDataStore.write_table``) keeps being read; its tables are reported as
``unrecorded`` in the query's audit entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from provguard.dataplane.store import (
    LABELS_DIR,
    AuditLabelsLedger,
    DerivedDigests,
    LabelsRecord,
    file_sha256,
    spec_digest,
)
from provguard.errors import StoreError, UnattestedLabelsError
from provguard.sqlgen import QueryError, TableSpec

#: payload key of an entry that wrote base tables: table -> :class:`DerivedDigests` payload
BASE_TABLES_KEY = "base_tables"
#: payload key of a ``data.register`` entry: table -> ``{"file_sha256", "spec_sha256"
#: (the declaration's digest), "data_root"}``
REGISTERED_KEY = "registered_tables"
#: the entry a run appends after writing its data tables (the last of the run's data entries)
JOB_DATA_KIND = "job.data"
#: the entry of ``provguard data load``
LOAD_KIND = "data.load"
#: the entry of ``provguard data register``
REGISTER_KIND = "data.register"
#: entry kinds that may carry :data:`BASE_TABLES_KEY`
BASE_ENTRY_KINDS = (
    JOB_DATA_KIND,
    LOAD_KIND,
    "data.normalise_labels",
    "data.store_masks",
    "data.drop_masks",
    "data.store_hashes",
)
#: entry kinds whose presence says provguard's writers wrote the folder's base tables: a base
#: table no entry records is then refused (written before session 8, or replaced by hand)
WRITER_KINDS = ("job.policy", JOB_DATA_KIND, LOAD_KIND)
#: ``spec_sha256`` of a base table without a labels sidecar
NO_SIDECAR = "none"


# ---------------------------------------------------------------------------- digests
def sidecar_spec_sha256(root: Path, table: str) -> str:
    """SHA-256 hex of the canonical JSON of ``root/_labels/<table>.json``'s ``spec``
    (:func:`~provguard.dataplane.store.spec_digest`), or :data:`NO_SIDECAR` when the table has
    no sidecar. Raises :class:`StoreError` for a sidecar that cannot be read or has no
    ``spec``."""
    path = root / LABELS_DIR / f"{table}.json"
    if not path.exists():
        return NO_SIDECAR
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read labels sidecar {path}: {exc}") from exc
    spec = raw.get("spec") if isinstance(raw, dict) else None
    if not isinstance(spec, dict):
        raise StoreError(f"labels sidecar {path} has no spec")
    return spec_digest(spec)


def base_digests(root: Path, table: str) -> DerivedDigests:
    """The digests of base table ``table`` in data folder ``root`` as it is now: SHA-256 of
    ``<table>.parquet`` (cached on path, device, inode, size, mtime_ns, ctime_ns),
    :func:`sidecar_spec_sha256`, and the folder's resolved path. Raises :class:`StoreError`."""
    path = root / f"{table}.parquet"
    return DerivedDigests(file_sha256(path), sidecar_spec_sha256(root, table), str(root.resolve()))


def base_tables_payload(root: Path, tables: Iterable[str]) -> dict[str, object]:
    """``{"base_tables": {table: digests}}`` for each of ``tables`` whose Parquet file exists in
    ``root`` (``{}`` when none does): what a writer adds to the entry recording its write.
    Raises :class:`StoreError` when a file cannot be hashed."""
    found = {
        t: base_digests(root, t).as_payload()
        for t in sorted(set(tables))
        if (root / f"{t}.parquet").is_file()
    }
    return {BASE_TABLES_KEY: found} if found else {}


def declaration_digest(spec: TableSpec) -> str:
    """SHA-256 hex of the canonical JSON of a ``--schema`` table declaration: the fields the
    file sets (``model_dump(mode="json", exclude_unset=True)``), so a default added to
    :class:`TableSpec` later does not change it. Two files declaring the same fields and values
    (any key order or YAML/JSON spelling) have the same digest."""
    return spec_digest(spec.model_dump(mode="json", exclude_unset=True))


# ---------------------------------------------------------------------------- files
def check_table_file(root: Path, table: str) -> Path | None:
    """The Parquet file of ``table`` in data folder ``root``, or None when there is none.

    Raises :class:`~provguard.sqlgen.QueryError` (PG160) when the file is a symbolic link, a
    hard link (another path can change its bytes) or resolves outside ``root``: a declared
    table must be a file of the data folder itself (fresh user 11: ``ln -s
    ../platform/provider_profiles.parquet data/pp.parquet`` served the provider's nicknames)."""
    path = root / f"{table}.parquet"
    if not os.path.lexists(path):
        return None
    if path.is_symlink():
        raise QueryError(
            f"table '{table}': {path} is a symbolic link (to {os.readlink(path)}); a table must"
            " be a file of the data folder itself, never a link to data elsewhere (the"
            " provider's export, another folder): copy it in and register it (provguard data"
            " register)"
        )
    try:
        st = os.stat(path)
        inside = path.resolve().parent == root.resolve()
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc
    if not inside:
        raise QueryError(
            f"table '{table}': {path} resolves to {path.resolve()}, outside the data folder"
            f" {root.resolve()}; a table must be a file of the data folder itself"
        )
    if st.st_nlink > 1:
        raise QueryError(
            f"table '{table}': {path} is a hard link ({st.st_nlink} names for one file), so"
            " its bytes can be changed through another path; a table must be a file of the"
            " data folder itself: copy it in (cp) and register it again"
        )
    return path


def statement_tables(sql: str) -> tuple[str, ...]:
    """Every table name ``sql`` mentions (DuckDB dialect), lower-cased (DuckDB resolves ``FROM
    PROFILES`` and ``FROM "Profiles"`` to ``profiles``), CTE names and a ``CREATE TABLE``
    target included: a CTE named like a stored table still reads that table in its own body
    (``WITH profiles AS (SELECT * FROM profiles) ...``), so checking a name too many only
    checks a stored file more. ``()`` for a statement sqlglot cannot parse (the rewrite refuses
    it)."""
    try:
        trees = sqlglot.parse(sql, read="duckdb")
    except SqlglotError:
        return ()
    names = {t.name for tree in trees if tree is not None for t in tree.find_all(exp.Table)}
    # DuckDB resolves unquoted and quoted names alike case-insensitively (FROM PROFILES)
    return tuple(sorted({n.lower() for n in names if n}))


# ---------------------------------------------------------------------------- ledgers
class BaseTablesLedger(AuditLabelsLedger):
    """:class:`AuditLabelsLedger` over the :data:`BASE_TABLES_KEY` records of
    :data:`BASE_ENTRY_KINDS` entries: :meth:`newest` is the newest verified entry (in the hash
    chain; under a checkpoint signed with ``audit.pub`` when that key is beside the control
    store) recording a base table, None when none does."""

    records_key = BASE_TABLES_KEY
    record_kinds = BASE_ENTRY_KINDS

    def remedy(self, table: str) -> str:
        return (
            f"write '{table}' again: provguard run into this folder, or provguard data load"
            " --replace for profiles"
        )


class RegistrationsLedger(AuditLabelsLedger):
    """:class:`AuditLabelsLedger` over the :data:`REGISTERED_KEY` records of ``data.register``
    entries: :meth:`newest` is the newest verified registration of a ``--schema`` table."""

    records_key = REGISTERED_KEY
    record_kinds = (REGISTER_KIND,)

    def remedy(self, table: str) -> str:
        return f"register it again: provguard data register --schema FILE --table {table}"


def provguard_wrote(control_store: Path) -> bool:
    """Whether the audit log of ``control_store`` has an entry of :data:`WRITER_KINDS`: the
    main job or ``provguard data load`` wrote this folder's base tables. False when the file or
    its log does not exist. Raises :class:`StoreError` when the log cannot be read."""
    import sqlite3

    if not control_store.is_file():
        return False
    kinds = ", ".join("?" for _ in WRITER_KINDS)
    try:
        con = sqlite3.connect(f"file:{control_store}?mode=ro", uri=True)
        try:
            has = con.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='audit_log'"
            ).fetchone()
            if has is None:
                return False
            row = con.execute(
                f"SELECT 1 FROM audit_log WHERE kind IN ({kinds}) LIMIT 1", WRITER_KINDS
            ).fetchone()
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the audit log of {control_store}: {exc}") from exc
    return row is not None


# ---------------------------------------------------------------------------- the check
@dataclass(frozen=True)
class TableAttestation:
    """How one table a statement names was vouched for: ``status`` is ``recorded`` (a base
    table matching entry ``seq`` of kind ``kind``), ``registered`` (a declared table matching
    its ``data.register`` entry ``seq``) or ``unrecorded`` (a base table of a folder no
    provguard writer recorded: read as before session 8)."""

    table: str
    status: str
    seq: int | None = None
    kind: str | None = None

    def as_payload(self) -> dict[str, object]:
        """``{"status": ..., "seq": ..., "kind": ...}`` for the query's audit entry."""
        return {"status": self.status, "seq": self.seq, "kind": self.kind}


class StoreAttestation:
    """Checks the base and declared tables of the data folder ``root`` against the audit log
    of ``control_store`` (module docstring).

    ``base_tables``: the names of the tables provguard's writers write (the job's schema,
    :func:`~provguard.sqlgen.schema.job_schema`, plus the unlabelled job tables);
    ``declared``: the ``--schema`` declarations (table -> :class:`TableSpec`), each read only
    under a matching registration. Tables of neither kind (derived tables, unknown names) are
    left to :class:`~provguard.dataplane.LabelledStore` and the rewrite."""

    def __init__(
        self,
        root: Path,
        control_store: Path,
        *,
        base_tables: Iterable[str],
        declared: Mapping[str, TableSpec] | None = None,
    ) -> None:
        self.root = Path(root)
        self.control_store = Path(control_store)
        self.base_tables = frozenset(base_tables)
        self.declared = dict(declared or {})
        self._base = BaseTablesLedger(self.control_store)
        self._registrations = RegistrationsLedger(self.control_store)
        self._wrote: bool | None = None

    def close(self) -> None:
        """Release the ledgers' pooled connections."""
        self._base.close()
        self._registrations.close()

    def check_files(self, tables: Iterable[str]) -> None:
        """:func:`check_table_file` on each of ``tables`` (PG160 for a link or a file outside
        the folder); call it before anything reads the files."""
        for table in sorted(set(tables)):
            check_table_file(self.root, table)

    def check(self, tables: Iterable[str]) -> dict[str, TableAttestation]:
        """Check each of ``tables`` that is a stored base or declared table; returns table ->
        :class:`TableAttestation` for those. Raises
        :class:`~provguard.errors.UnattestedLabelsError` (PG210) for the first (by name) that
        does not match its newest verified entry or that no entry records (a base table of a
        folder provguard wrote; any declared table), and :class:`QueryError` (PG160) as
        :meth:`check_files`."""
        out: dict[str, TableAttestation] = {}
        for table in sorted(set(tables)):
            path = check_table_file(self.root, table)
            if path is None:
                continue
            if table in self.declared:
                out[table] = self._check_declared(table, path, self.declared[table])
            elif table in self.base_tables:
                out[table] = self._check_base(table, path)
        return out

    # -------------------------------------------------------------- base tables
    def _check_base(self, table: str, path: Path) -> TableAttestation:
        record = self._base.newest(table)
        if record is None:
            if self._provguard_wrote():
                raise UnattestedLabelsError(
                    f"table '{table}' has no audit entry recording its writing, yet provguard's"
                    f" writers wrote this folder (the audit log of {self.control_store} has a"
                    " job or load entry): it was written before writers recorded their tables"
                    " (session 8), or put in place outside provguard, so its labels cannot be"
                    f" trusted; {self._base.remedy(table)}",
                    table=table,
                    differs=("entry",),
                )
            return TableAttestation(table, "unrecorded")
        now = base_digests(self.root, table)
        differs = tuple(
            k
            for k, a, b in (
                ("file_sha256", now.file_sha256, record.digests.file_sha256),
                ("spec_sha256", now.spec_sha256, record.digests.spec_sha256),
            )
            if a != b
        )
        if differs:
            what = {
                "file_sha256": f"its Parquet file's SHA-256 is {now.file_sha256[:16]}..., the"
                f" entry recorded {record.digests.file_sha256[:16]}...",
                "spec_sha256": f"its labels sidecar's spec digest is {now.spec_sha256[:16]}...,"
                f" the entry recorded {record.digests.spec_sha256[:16]}...",
            }
            raise UnattestedLabelsError(
                f"table '{table}' does not match audit entry #{record.seq} ({record.kind}), the"
                f" newest that wrote it: {'; '.join(what[k] for k in differs)}. The file or its"
                " labels were changed outside provguard, so its labels cannot be trusted;"
                f" {self._base.remedy(table)}",
                table=table,
                differs=differs,
            )
        return TableAttestation(table, "recorded", record.seq, record.kind)

    def _provguard_wrote(self) -> bool:
        if self._wrote is None:
            self._wrote = provguard_wrote(self.control_store)
        return self._wrote

    # -------------------------------------------------------------- declared tables
    def _check_declared(self, table: str, path: Path, spec: TableSpec) -> TableAttestation:
        record: LabelsRecord | None = self._registrations.newest(table)
        if record is None:
            raise UnattestedLabelsError(
                f"table '{table}' is declared by --schema but no audit entry registers it: a"
                " declared table is read only as registered (its file's SHA-256 and its"
                " declaration, with who registered it and why); register it with provguard data"
                f" register --store {self.root} --schema FILE --table {table}",
                table=table,
                differs=("entry",),
            )
        file_now = file_sha256(path)
        decl_now = declaration_digest(spec)
        differs = tuple(
            k
            for k, a, b in (
                ("file_sha256", file_now, record.digests.file_sha256),
                ("spec_sha256", decl_now, record.digests.spec_sha256),
            )
            if a != b
        )
        if differs:
            what = {
                "file_sha256": f"its Parquet file's SHA-256 is {file_now[:16]}..., the"
                f" registration recorded {record.digests.file_sha256[:16]}...",
                "spec_sha256": f"its declaration's digest is {decl_now[:16]}..., the"
                f" registration recorded {record.digests.spec_sha256[:16]}... (the --schema"
                " file declares it differently)",
            }
            raise UnattestedLabelsError(
                f"table '{table}' does not match audit entry #{record.seq} ({record.kind}), its"
                f" newest registration: {'; '.join(what[k] for k in differs)}. A declared table"
                f" is read only as registered; {self._registrations.remedy(table)}",
                table=table,
                differs=differs,
            )
        return TableAttestation(table, "registered", record.seq, record.kind)


def registration_payload(
    root: Path,
    table: str,
    spec: TableSpec,
    schema_file: Path,
    *,
    by: str,
    why: str | None,
) -> dict[str, Any]:
    """The ``data.register`` entry of declared table ``table`` of data folder ``root``:
    ``table``, ``schema`` (the file's path and SHA-256), ``declaration`` (the fields it sets),
    ``by``, ``why`` and :data:`REGISTERED_KEY` ``{table: {"file_sha256", "spec_sha256" (the
    :func:`declaration_digest`), "data_root"}}``. Raises :class:`QueryError` (PG160) as
    :func:`check_table_file`, :class:`StoreError` on I/O."""
    path = check_table_file(root, table)
    if path is None:
        raise QueryError(f"table '{table}': no file {root / f'{table}.parquet'} to register")
    digests = DerivedDigests(file_sha256(path), declaration_digest(spec), str(root.resolve()))
    try:
        schema_sha = hashlib.sha256(schema_file.read_bytes()).hexdigest()
    except OSError as exc:
        raise StoreError(f"cannot read {schema_file}: {exc}") from exc
    return {
        "table": table,
        "schema": {"path": str(schema_file.resolve()), "sha256": schema_sha},
        "declaration": spec.model_dump(mode="json", exclude_unset=True),
        "by": by,
        "why": why,
        REGISTERED_KEY: {table: digests.as_payload()},
    }

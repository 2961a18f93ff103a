"""Write and read a sandbox :class:`~provguard.sandbox.platform.Platform` as Parquet files.

Layout: one file per table, ``<dir>/<table>.parquet`` for each name in
:data:`provguard.sandbox.schema.TABLE_NAMES` (``subjects``, ``provider_profiles``, ``apps``,
``grants``, ``app_profiles``, ``transfers``, ``edges``, ``pictures``).

Each file is written atomically: to a temporary file in the same directory, flushed and fsynced,
then renamed over the target with ``os.replace``; a crash leaves either the old file or the new
one, never a torn one (the set of files is not replaced as one unit).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from provguard.errors import InputError
from provguard.sandbox import schema
from provguard.sandbox.platform import Platform

__all__ = ["read_platform", "write_platform"]


def write_platform(platform: Platform, directory: str | Path) -> list[Path]:
    """Write every table of ``platform`` to ``directory`` (created if missing).

    Returns:
        The paths written, in table order.

    Raises:
        OSError: the directory or a file cannot be written.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in platform.tables().items():
        target = out / f"{name}.parquet"
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".parquet.tmp", dir=out)
        try:
            with os.fdopen(fd, "wb") as fh:
                pq.write_table(table, fh, compression="zstd")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(target)
    return written


def read_platform(directory: str | Path) -> Platform:
    """Read a platform written by :func:`write_platform`.

    Raises:
        InputError: a table file is missing, unreadable, or has the wrong schema.
    """
    src = Path(directory)
    tables: dict[str, pa.Table] = {}
    for name, want in schema.SCHEMAS.items():
        path = src / f"{name}.parquet"
        if not path.is_file():
            raise InputError(f"{path}: missing platform table {name!r}")
        try:
            have = pq.read_schema(path)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{path}: cannot read platform table {name!r}: {exc}") from exc
        # read_table(schema=...) would fill a missing column with nulls and cast another type:
        # a dropped `provider` or `first_used_at` must be an error, not a different world
        missing = [f.name for f in want if f.name not in have.names]
        mistyped = [
            f"{f.name} ({have.field(f.name).type}, expected {f.type})"
            for f in want
            if f.name in have.names and not have.field(f.name).type.equals(f.type)
        ]
        if missing or mistyped:
            problems = ([f"missing column(s) {', '.join(missing)}"] if missing else []) + (
                [f"mistyped column(s) {', '.join(mistyped)}"] if mistyped else []
            )
            raise InputError(f"{path}: platform table {name!r} has {'; '.join(problems)}")
        try:
            table = pq.read_table(path, schema=want)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{path}: cannot read platform table {name!r}: {exc}") from exc
        tables[name] = table.replace_schema_metadata(None)
    try:
        return Platform(**tables)
    except ValueError as exc:
        raise InputError(f"{src}: {exc}") from exc

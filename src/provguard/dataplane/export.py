"""Loading an app's profile export into a labelled table: every value labelled from the grant
it arrived through.

An app that signs people in through a provider keeps, per account, the handle and picture it
shows and where each came from. Its export is two files:

- **profiles** (one row per account): ``app_id``, ``subject_id`` (a 64-bit integer),
  ``account_id``, ``handle``, ``handle_source``, ``avatar_key``, ``avatar_source``,
  ``grant_id`` (the login grant the provider values arrived through; empty for none) and
  ``created_at`` (ISO 8601 with a time zone, not in the future). A ``*_source`` is
  ``user_input`` (typed or uploaded by the user) or ``provider`` (copied from the provider's
  profile through ``grant_id``); empty means not recorded. Every one of these columns must be
  present (a value may be empty; a misspelt ``Handle`` column would silently drop every handle),
  no column may appear twice (a reader keeping the last ``handle_source`` would label a value
  ``user_input`` that another reader sees as ``provider``); other columns are ignored. This is
  the sandbox's ``app_profiles`` table (:data:`provguard.sandbox.schema.APP_PROFILES`), so
  ``provguard sandbox build`` writes a valid export.
- **grants** (one row per login grant): ``grant_id`` and ``provider`` (an origin of the
  :class:`~provguard.provenance.OriginRegistry`: ``wechat``, ``qq``, ...). Extra columns
  (openid, scopes, ...) are ignored. A grant id on a bad row, or on more than one row, names
  no provider: values that arrived through it are ``unknown`` (fail closed).

Each file is CSV (UTF-8, a byte order mark allowed, with a header line; fields up to 16 MiB),
JSON Lines (``.jsonl`` / ``.ndjson``, one object per line, every column a key, no key twice) or
Parquet. Labels follow :func:`provguard.job.ingest.label_profiles` (the main job's
loader, which this reuses): ``user_input`` → ``user_input``; ``provider`` with a known grant →
that grant's provider; ``provider`` whose grant is missing or unknown, or a source not recorded
→ ``unknown`` (the policy decides what ``unknown`` gets; the shipped injunction fails closed).

**Bad rows** are found before anything is written and reported with their file and line (CSV:
the line the record starts on, counting the header as line 1; JSON Lines: the line; Parquet:
``row N``, 1-based), the field and what is wrong: a missing or non-integer ``subject_id``, an
empty ``app_id``/``account_id``, a source other than the two above, a timestamp without a time
zone, a provider that is no origin, a duplicate ``(app_id, subject_id)`` or ``grant_id`` (the
first row wins; the later one is the problem). ``on_error="reject"`` (default) raises
:class:`ExportRowError` listing them and loads nothing; ``"skip"`` loads the good rows and
returns the problems with the raw rows, so nothing is lost. A bad *grants* row is skipped the
same way; values that named it are then labelled ``unknown``, which fails closed.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError, field_validator

from provguard.errors import InputError
from provguard.job.ingest import label_profiles
from provguard.provenance import UNKNOWN, OriginRegistry

OnError = Literal["reject", "skip"]
_APP_ID = re.compile(r"^[a-z][a-z0-9_]*$")
#: a CSV field may be this long (the csv module's default, 128 KiB, aborts a whole file)
_FIELD_LIMIT = 16 * 1024 * 1024
#: a ``created_at`` up to this far ahead of the clock is taken as clock skew
_SKEW = timedelta(minutes=5)
_INT64 = (-(2**63), 2**63 - 1)


class ExportRowError(InputError):
    """Rows of an export file are malformed (each named by file:line, field and reason); with
    ``on_error="reject"`` nothing was loaded."""

    code = "PG102"

    def __init__(self, message: str, problems: tuple[RowProblem, ...]) -> None:
        super().__init__(message)
        self.problems = problems


@dataclass(frozen=True)
class RowProblem:
    """One bad row: ``file``, ``line`` (see the module docstring for how it is counted),
    ``where`` (``line N`` or ``row N``), the ``field`` at fault (None for the whole row), the
    ``reason`` and the row as read (``raw``: field -> text, or the line's text when it does
    not parse)."""

    file: str
    line: int
    where: str
    field: str | None
    reason: str
    raw: dict[str, Any] | str

    def __str__(self) -> str:
        at = (
            f"{self.file}:{self.line}"
            if self.where.startswith("line")
            else f"{self.file}: {self.where}"
        )
        return f"{at}: {self.field + ': ' if self.field else ''}{self.reason}"

    def as_record(self) -> dict[str, Any]:
        """JSON-ready form (the ``--rejects`` file's lines)."""
        return {
            "file": self.file,
            "line": self.line,
            "where": self.where,
            "field": self.field,
            "reason": self.reason,
            "raw": self.raw,
        }


@dataclass(frozen=True)
class ExportLoad:
    """A loaded export: ``table`` (:data:`provguard.job.ingest.LABELLED_PROFILE_SCHEMA`, good
    rows in file order), ``rows_read`` / ``grants_read`` (data rows in each file),
    ``problems`` (profiles and grants rows left out), and ``origins``: per protected column,
    origin name -> rows labelled with it."""

    table: pa.Table
    rows_read: int
    grants_read: int
    problems: tuple[RowProblem, ...]
    origins: dict[str, dict[str, int]] = field(default_factory=dict)


class _Source(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if isinstance(v, str) and v.strip() == "" else v


class ProfileRow(_Source):
    """One row of a profiles export (validated; extra columns ignored)."""

    app_id: str
    subject_id: int
    account_id: str
    handle: str | None = None
    handle_source: Literal["user_input", "provider"] | None = None
    avatar_key: str | None = None
    avatar_source: Literal["user_input", "provider"] | None = None
    grant_id: str | None = None
    created_at: AwareDatetime

    @field_validator("app_id")
    @classmethod
    def _app(cls, v: str) -> str:
        if not _APP_ID.match(v):
            raise ValueError("an app id is lowercase letters, digits and _ (e.g. douyin)")
        return v

    @field_validator("subject_id", mode="before")
    @classmethod
    def _integer(cls, v: Any) -> Any:
        # pydantic's lax mode would take 7.0, "7.0" and true; an id is an integer as written
        if isinstance(v, bool | float) or (isinstance(v, str) and not re.fullmatch(r"[+-]?\d+", v)):
            raise ValueError(f"not an integer: {v!r}")
        if not _INT64[0] <= int(v) <= _INT64[1]:
            raise ValueError(f"not a 64-bit integer: {v!r}")
        return v

    @field_validator("created_at")
    @classmethod
    def _past(cls, v: datetime) -> datetime:
        if v > datetime.now(UTC) + _SKEW:
            raise ValueError(f"in the future: {v.isoformat()}")
        return v


class GrantRow(_Source):
    """One row of a grants export (validated; extra columns ignored)."""

    grant_id: str
    provider: str


def _rows(path: Path) -> Iterator[tuple[int, str, dict[str, Any] | list[str] | str]]:
    """``(line, where, row)`` of a CSV / JSON Lines / Parquet file; ``row`` is a dict, the
    line's text when the line is not a JSON object, or (``where == "header"``, first, CSV and
    Parquet only) the list of column names."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise InputError(f"cannot read {path}: {exc}") from exc
        yield 0, "header", list(table.column_names)
        for i, row in enumerate(table.to_pylist(), start=1):
            yield i, f"row {i}", row
        return
    try:
        fh = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    with fh:
        try:
            if suffix in (".jsonl", ".ndjson"):
                for n, text in enumerate(fh, start=1):
                    if not text.strip():
                        continue
                    try:
                        obj = json.loads(text, object_pairs_hook=_no_duplicate_keys)
                    except json.JSONDecodeError as exc:
                        yield n, f"line {n}", f"{text.rstrip()} (not JSON: {exc.msg})"
                        continue
                    except _DuplicateKeyError as exc:
                        yield n, f"line {n}", f"{text.rstrip()} ({exc})"
                        continue
                    yield n, f"line {n}", obj if isinstance(obj, dict) else text.rstrip()
                return
            if suffix != ".csv":
                raise InputError(
                    f"{path}: unknown export format '{suffix}' (.csv, .jsonl, .ndjson, .parquet)"
                )
            csv.field_size_limit(max(csv.field_size_limit(), _FIELD_LIMIT))
            reader = csv.DictReader(fh, restkey="\0extra")
            if not reader.fieldnames:
                raise InputError(f"{path}: empty file (a CSV export starts with a header line)")
            twice = sorted({c for c in reader.fieldnames if reader.fieldnames.count(c) > 1})
            if twice:
                raise InputError(
                    f"{path}:1: column {', '.join(twice)} appears more than once in the header"
                    " (which one would hold the value?)"
                )
            yield 1, "header", list(reader.fieldnames)
            start = reader.line_num + 1
            for row in reader:
                yield start, f"line {start}", row
                start = reader.line_num + 1
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        except csv.Error as exc:
            raise InputError(f"{path}:{start}: {exc}") from exc


class _DuplicateKeyError(ValueError):
    """A JSON object names a key twice."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKeyError(f"key '{key}' appears more than once")
        seen[key] = value
    return seen


_KIND = {"ProfileRow": "profiles", "GrantRow": "grants"}


def _missing(names: Iterable[str], model: type[_Source]) -> list[str]:
    have = set(names)
    return [n for n in model.model_fields if n not in have]


def _check_columns(path: Path, names: list[str], model: type[_Source]) -> None:
    twice = sorted({c for c in names if names.count(c) > 1})
    if twice:
        raise InputError(f"{path}: column {', '.join(twice)} appears more than once")
    missing = _missing(names, model)
    if missing:
        kind = _KIND.get(model.__name__, model.__name__)
        raise InputError(
            f"{path}: the export has no column {', '.join(missing)} (a {kind} export has"
            f" {', '.join(model.model_fields)}; a value may be empty, a column may not be absent)"
        )


def _validate(
    path: Path, model: type[_Source]
) -> tuple[list[tuple[int, str, Any]], list[RowProblem], int]:
    """Validated rows ``(line, where, model)`` in file order, the problems, rows read."""
    good: list[tuple[int, str, Any]] = []
    problems: list[RowProblem] = []
    read = 0
    for line, where, row in _rows(path):
        if where == "header":
            assert isinstance(row, list)
            _check_columns(path, row, model)
            continue
        read += 1
        if isinstance(row, list):  # pragma: no cover - only the header is a list
            continue
        if isinstance(row, str):
            problems.append(RowProblem(path.name, line, where, None, "not a JSON object", row))
            continue
        if "\0extra" in row:
            extra = row.pop("\0extra")
            problems.append(
                RowProblem(
                    path.name,
                    line,
                    where,
                    None,
                    f"{len(extra)} more field(s) than the header has columns",
                    row,
                )
            )
            continue
        missing = (
            _missing(row, model)
            if where.startswith("line") and path.suffix.lower() != ".csv"
            else []
        )
        if missing:
            problems.append(
                RowProblem(
                    path.name,
                    line,
                    where,
                    missing[0],
                    f"no key {', '.join(missing)} (write null for no value)",
                    _text(row),
                )
            )
            continue
        try:
            good.append((line, where, model.model_validate(row)))
        except ValidationError as exc:
            err = exc.errors()[0]
            name = str(err["loc"][0]) if err["loc"] else None
            reason = str(err["msg"]).removeprefix("Value error, ")
            if len(exc.errors()) > 1:
                reason += f" (and {len(exc.errors()) - 1} more problem(s) in this row)"
            problems.append(RowProblem(path.name, line, where, name, reason, _text(row)))
    return good, problems, read


def _text(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, str | int | float | bool) or v is None else str(v)
            for k, v in row.items()}  # fmt: skip


def load_export(
    profiles: str | Path,
    grants: str | Path,
    registry: OriginRegistry,
    *,
    on_error: OnError = "reject",
) -> ExportLoad:
    """Read, check and label an app's profile export (module docstring: formats, labels, bad
    rows).

    Args:
        profiles: the profiles file (CSV, JSON Lines or Parquet).
        grants: the login grants file (same formats).
        registry: the origins; every grant's ``provider`` must be one of them.
        on_error: ``reject`` (raise on any bad row, load nothing) or ``skip``.

    Returns:
        :class:`ExportLoad` with the labelled table (one row per good profile row).

    Raises:
        ExportRowError: (PG102) bad rows and ``on_error="reject"``; ``.problems`` lists them.
        InputError: (PG100) a file that cannot be read, has an unknown format, no header, or
            lacks a required column.
    """
    if on_error not in ("reject", "skip"):
        raise InputError(f"on_error must be 'reject' or 'skip', got {on_error!r}")
    g_path, p_path = Path(grants), Path(profiles)
    g_rows, problems, grants_read = _validate(g_path, GrantRow)
    known = set(registry.names)
    provider_of: dict[str, str] = {}
    # a grant id on a bad row, or on more than one row, names no provider: its values are
    # unknown (a later row must not supply the provider an earlier, rejected one did not)
    tainted = {
        str(q.raw["grant_id"]).strip()
        for q in problems
        if isinstance(q.raw, dict) and isinstance(q.raw.get("grant_id"), str | int)
    }
    seen_ids: set[str] = set()
    for line, where, g in g_rows:
        first = g.grant_id not in seen_ids
        seen_ids.add(g.grant_id)
        if g.provider not in known or g.provider in (UNKNOWN, "user_input"):
            tainted.add(g.grant_id)
            problems.append(
                RowProblem(
                    g_path.name,
                    line,
                    where,
                    "provider",
                    f"'{g.provider}' is not a provider origin (known: "
                    f"{', '.join(sorted(known - {UNKNOWN, 'user_input'}))})",
                    g.model_dump(mode="json"),
                )
            )
        elif not first:
            tainted.add(g.grant_id)
            problems.append(
                RowProblem(
                    g_path.name,
                    line,
                    where,
                    "grant_id",
                    f"grant '{g.grant_id}' is on more than one row: it names no provider (its"
                    " values are labelled unknown)",
                    g.model_dump(mode="json"),
                )
            )
        else:
            provider_of[g.grant_id] = g.provider
    for gid in tainted:
        provider_of.pop(gid, None)
    p_rows, p_problems, rows_read = _validate(p_path, ProfileRow)
    dup_problems: list[RowProblem] = []
    seen: set[tuple[str, int]] = set()
    rows: list[ProfileRow] = []
    for line, where, p in p_rows:
        ident = (p.app_id, p.subject_id)
        if ident in seen:
            dup_problems.append(
                RowProblem(
                    p_path.name,
                    line,
                    where,
                    "subject_id",
                    f"duplicate account ({p.app_id}, {p.subject_id}): an earlier row has it",
                    p.model_dump(mode="json"),
                )
            )
            continue
        seen.add(ident)
        rows.append(p)
    # in file order: the grants' problems, then the profiles' by line (duplicates were found in
    # a second pass)
    problems.extend(sorted(p_problems + dup_problems, key=lambda p: p.line))
    if problems and on_error == "reject":
        shown = "\n  ".join(str(p) for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ExportRowError(
            f"{len(problems)} bad row(s) in the export; nothing was loaded (on_error=skip"
            f" loads the others):\n  {shown}{more}",
            tuple(problems),
        )
    raw = pa.table(
        {
            "app_id": pa.array([r.app_id for r in rows], pa.string()),
            "subject_id": pa.array([r.subject_id for r in rows], pa.int64()),
            "account_id": pa.array([r.account_id for r in rows], pa.string()),
            "handle": pa.array([r.handle for r in rows], pa.string()),
            "handle_source": pa.array([r.handle_source for r in rows], pa.string()),
            "avatar_key": pa.array([r.avatar_key for r in rows], pa.string()),
            "avatar_source": pa.array([r.avatar_source for r in rows], pa.string()),
            "grant_id": pa.array([r.grant_id for r in rows], pa.string()),
            "created_at": pa.array([r.created_at for r in rows], pa.timestamp("us", tz="UTC")),
        }
    )
    grants_table = pa.table(
        {"grant_id": list(provider_of), "provider": list(provider_of.values())},
        schema=pa.schema([("grant_id", pa.string()), ("provider", pa.string())]),
    )
    table = label_profiles(raw, grants_table, registry)
    origins = {
        column: _origin_counts(table.column(f"{column}_origins").to_pylist(), registry)
        for column in ("handle", "avatar")
    }
    return ExportLoad(table, rows_read, grants_read, tuple(problems), origins)


def _origin_counts(masks: list[int], registry: OriginRegistry) -> dict[str, int]:
    counts: dict[str, int] = {}
    for mask in masks:
        for name in registry.names_of(mask):
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))

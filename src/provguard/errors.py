"""The provguard error tree.

Every error carries a stable ``code`` (``PG`` + 3 digits) that callers, logs and HTTP bodies can
match on; the message is for people and may change. Codes are never reused.

    ProvguardError                PG000
    ├── InputError                PG100  bad input from a user or a file
    │   ├── ExportRowError        PG102  bad rows of an export file, each named by file:line
    │   │                                (dataplane/export.py)
    │   ├── PolicyError           PG110  a policy bundle that does not load or validate
    │   ├── TaxonomyError         PG120  an unknown or malformed taxonomy key
    │   ├── GraphFormatError      PG130  a malformed graph / edge-list file
    │   ├── RequestError          PG140  a decision request that is incomplete or inconsistent
    │   ├── GrantInputError       PG150-159, PG141  OAuth sign-in, tokens, transfers (grants/)
    │   ├── QueryError            PG160-162  policy-aware SQL: bad query, no lineage, refused
    │   │                                    (sqlgen/errors.py)
    │   └── ControlStoreMismatchError PG101  a data folder bound to another control store
    │                                        (dataplane/store.py binding)
    ├── StoreError                PG200  the control-plane or data-plane store failed
    │   ├── EngineError           PG200  an engine failed a query (message scrubbed, or
    │   │                                withheld when the query reads protected values)
    │   └── UnattestedLabelsError PG210  a table's file or labels sidecar (derived, base or
    │                                    registered ``--schema`` table) does not match the
    │                                    newest chained audit entry that wrote it
    ├── AuditError                PG300  the audit log
    │   ├── AuditChainError       PG310  verification found a broken hash chain
    │   ├── AuditTimeOrderError   PG311  an entry stamped earlier than its predecessor beyond
    │   │                               the tolerance (``audit verify``)
    │   ├── CheckpointSignatureError PG320  a signed checkpoint does not verify (audit/signing.py)
    │   │   └── CheckpointKeyMismatchError PG321  signed by another key than the one given
    │   │                                   (audit/coverage.py)
    │   ├── UncoveredEntriesError PG330  entries no verified signature covers, under
    │   │                               ``audit verify --require-signed`` (audit/coverage.py)
    │   ├── ForeignEntriesError   PG331  a signer refused to sign over entries it did not
    │   │                               write that no signed checkpoint covers
    │   └── StoreChainMismatchError PG340  a control-store table (instrument events,
    │                                   transfers, campaigns) disagrees with the audit chain
    │                                   (audit/crosscheck.py)
    ├── DeliveryError             PG410  a campaign notice was not delivered (campaign/outbox.py)
    │   (ExportMismatchError      PG411  an InputError: a rescan's provider export is not the
    │                                    one recorded in the chain, campaign/chained.py)
    └── ServiceError              PG500-540  HTTP service: auth, forbidden, not found, not
                                             configured (service/errors.py)

    (also under InputError: KeyFileError PG550, service/errors.py; BodyTooLargeError PG560, a
    request body over the service's limit, HTTP 413, service/limits.py)

Subsystem errors live beside their subsystem and are listed here; tests/core/test_error_codes.py
checks that no two classes share a code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class ProvguardError(Exception):
    """Base of every error provguard raises on purpose."""

    code = "PG000"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


class InputError(ProvguardError):
    code = "PG100"


@dataclass(frozen=True)
class SourceLocation:
    """A position in a text file; ``line`` and ``column`` are 1-based."""

    path: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"


class LocatedError(InputError):
    """An input error that points at ``file:line:col``."""

    def __init__(self, message: str, location: SourceLocation | None = None) -> None:
        self.location = location
        super().__init__(f"{location}: {message}" if location else message)


class PolicyError(LocatedError):
    """A policy bundle failed to parse or validate.

    ``key`` is the dotted path of the offending key (``rules[1].data.origins``), ``rule`` the id of
    the rule it belongs to, when known.
    """

    code = "PG110"

    def __init__(
        self,
        message: str,
        location: SourceLocation | None = None,
        *,
        key: str | None = None,
        rule: str | None = None,
    ) -> None:
        self.key = key
        self.rule = rule
        where = []
        if rule:
            where.append(f"rule '{rule}'")
        if key:
            where.append(f"key '{key}'")
        detail = f"{message} ({', '.join(where)})" if where else message
        super().__init__(detail, location)


class PolicyErrors(PolicyError):
    """Several policy errors found in one pass; ``errors`` holds each one."""

    def __init__(self, errors: list[PolicyError]) -> None:
        self.errors = errors
        first = errors[0]
        super().__init__("\n".join(str(e) for e in errors), None, key=first.key, rule=first.rule)

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class TaxonomyError(InputError):
    code = "PG120"


class GraphFormatError(LocatedError):
    code = "PG130"


class RequestError(InputError):
    code = "PG140"


class StoreError(ProvguardError):
    code = "PG200"


#: a quoted literal in an engine's message: '...' (SQL, '' escapes) or "..." ("" escapes)
_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")


#: the sentence that replaces an engine's message when the query reads protected values
WITHHELD_SENTENCE = "message withheld: the query reads protected values"


class EngineError(StoreError):
    """PG200: an engine (DuckDB, Spark, PostgreSQL) failed a query
    (:func:`engine_failure`). ``what`` is the message's prefix (``query failed``),
    ``engine_class`` the engine's error class (``Conversion Error``, ``Invalid Input Error``,
    ``InvalidTextRepresentation (SQLSTATE 22P02)``, ``SparkRuntimeException
    (INVALID_PARAMETER_VALUE.PATTERN)``: names fixed by the engine, never data), ``withheld``
    whether the engine's message text was left out (:meth:`withhold`). The engine's exception
    itself is not kept."""

    def __init__(self, message: str, *, what: str, engine_class: str, withheld: bool) -> None:
        self.what, self.engine_class, self.withheld = what, engine_class, withheld
        super().__init__(message)

    def withhold(self) -> EngineError:
        """The same failure without the engine's message: ``<what>: <engine class>
        (message withheld: the query reads protected values)``."""
        return EngineError(
            f"{self.what}: {self.engine_class} ({WITHHELD_SENTENCE})",
            what=self.what,
            engine_class=self.engine_class,
            withheld=True,
        )


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NAME_ONLY = re.compile(r"[^A-Za-z0-9_.]")


def engine_error_class(exc: BaseException) -> str:
    """The engine's error class of ``exc``, built only from names the engine fixes, never from
    its message: DuckDB's exception class as DuckDB's message prefix says it
    (``ConversionException`` -> ``Conversion Error``), psycopg's class with the SQLSTATE
    (``InvalidTextRepresentation (SQLSTATE 22P02)``), PySpark's class with its error condition
    (``SparkRuntimeException (INVALID_PARAMETER_VALUE.PATTERN)``); any other exception: its
    class name."""
    name = _NAME_ONLY.sub("", type(exc).__name__) or "Error"
    module = type(exc).__module__ or ""
    if module.startswith("duckdb") or module.startswith("_duckdb"):
        base = name.removesuffix("Exception").removesuffix("Error") or name
        return f"{_CAMEL.sub(' ', base)} Error"
    detail: object = getattr(exc, "sqlstate", None)
    if isinstance(detail, str) and detail:
        return f"{name} (SQLSTATE {_NAME_ONLY.sub('', detail)})"
    # PySpark >= 4: getCondition (getErrorClass is its deprecated name, warning if called)
    getter = getattr(exc, "getCondition", None) or getattr(exc, "getErrorClass", None)
    if callable(getter):
        try:
            detail = getter()
        except Exception:  # a JVM call on a dead session: the class name is enough
            detail = None
        if isinstance(detail, str) and detail:
            return f"{name} ({_NAME_ONLY.sub('', detail)})"
    return name


def engine_failure(what: str, exc: BaseException, *, withhold: bool = False) -> EngineError:
    """The :class:`EngineError` (PG200) of a query an engine (DuckDB, Spark, PostgreSQL)
    failed. ``what`` is the message's prefix (``query failed``).

    ``withhold`` (a query that reads a column with data categories under a policy,
    :meth:`provguard.dataplane.LabelledStore.query`): the message is ``<what>: <engine class>
    (message withheld: the query reads protected values)``, the engine's text left out
    entirely -- DuckDB echoes its inputs quoted, unquoted and on continuation lines (strptime's
    ``Could not parse string ... according to format specifier`` puts the value on a line of
    its own), RE2 pattern errors echo the pattern, overflow errors the numbers, so a failing
    ``strptime(handle, '%Y')`` or ``CAST(unicode(handle) + 2147483647 AS INTEGER)`` printed a
    masked handle (fresh user 12, H2) and no scrubbing of the text can be complete.

    Otherwise the message is the engine's with every quoted literal replaced by ``?`` (an
    error quotes the value it failed on, ``Could not convert string '温柔月亮' to INT32``;
    fresh user 11, H4); unquoted text is kept, so callers withhold whenever a protected value
    could be read."""
    err = EngineError(
        f"{what}: {_QUOTED.sub('?', str(exc))}",
        what=what,
        engine_class=engine_error_class(exc),
        withheld=False,
    )
    return err.withhold() if withhold else err


class AuditError(ProvguardError):
    code = "PG300"


class AuditChainError(AuditError):
    """The audit chain does not verify; ``seq`` is the first bad entry (1-based)."""

    code = "PG310"

    def __init__(self, message: str, seq: int | None) -> None:
        self.seq = seq
        super().__init__(message)


class AuditTimeOrderError(AuditError):
    """An audit entry is stamped earlier than the entry before it by more than the tolerance
    (``provguard audit verify --time-tolerance``); ``seq`` is the first such entry."""

    code = "PG311"

    def __init__(self, message: str, seq: int | None) -> None:
        self.seq = seq
        super().__init__(message)


class ForeignEntriesError(AuditError):
    """A signer (the service's audit writer, ``POST /v1/audit/checkpoints``) refused to sign a
    checkpoint: entries #``first``–#``last`` before its own were written by someone else and
    no signed checkpoint covers them. Answered HTTP 409 by the service."""

    code = "PG331"
    http_status = 409

    def __init__(self, message: str, first: int, last: int) -> None:
        self.first, self.last = first, last
        super().__init__(message)


class ControlStoreMismatchError(InputError):
    """A data folder bound to one control store (the ``control_store_id`` the job or the first
    ``provguard query`` recorded in ``<data>/_control_store.json``) was given another control
    store, whose audit log would not see the query (findings I-4). ``bound`` and ``given`` are
    the two store ids (``given`` is None for a control store that has none)."""

    code = "PG101"

    def __init__(self, message: str, *, bound: str, given: str | None) -> None:
        self.bound, self.given = bound, given
        super().__init__(message)


class PolicyMismatchError(InputError):
    """A query or a decision service on a job store under another policy than the one the
    store's audit log records as enforced (the newest ``job.policy`` entry,
    :func:`provguard.audit.enforced.enforced_policy`): an edited bundle keeping the order's id
    and wording would answer what the enforced policy forbids (fresh user 11, H1).
    ``enforced`` and ``given`` are the two SHA-256 digests of the bundle files."""

    code = "PG103"

    def __init__(self, message: str, *, enforced: str, given: str) -> None:
        self.enforced, self.given = enforced, given
        super().__init__(message)


class UnattestedLabelsError(StoreError):
    """A table cannot be read under the audit log: a derived table (made by ``CREATE TABLE
    AS``), a base table written by ``provguard run`` / ``data load``, or a ``--schema`` table
    registered by ``provguard data register`` (dataplane/attest.py). Its
    Parquet file's SHA-256 or its labels sidecar's spec digest differs from the newest chained
    audit entry that wrote it, no such entry exists, or that entry is not in the chain (or not
    covered by a signed checkpoint when ``audit.pub`` is beside the log) (findings I-3).
    ``table`` names it; ``differs`` lists what differs (``file_sha256``, ``spec_sha256``,
    ``entry``)."""

    code = "PG210"

    def __init__(self, message: str, *, table: str, differs: tuple[str, ...]) -> None:
        self.table, self.differs = table, differs
        super().__init__(message)

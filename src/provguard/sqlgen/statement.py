"""What an audit entry may say about a SQL statement: its digest, its shape without literals,
its kind and the tables it reads and creates.

The literals of a query are often the very data it searches for (``WHERE handle = '温柔月亮'``),
so an audit trail of queries must not store them: :func:`describe_statement` keeps the
statement's SHA-256 (whoever holds the text can prove it is the one logged) and the statement
with every literal replaced by ``?`` (sqlglot's ``Placeholder``) and its comments removed,
which still shows what was asked (tables, columns, joins, predicates) but not for which
values. Identifiers (table, column and alias names) are kept as written.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError


class _CommandFallbackFilter(logging.Filter):
    """Drops sqlglot's warning that a statement it cannot parse (``EXPLAIN``, ``PREPARE``...)
    falls back to an opaque ``Command``: provguard refuses such a statement with its own error
    (PG160), and the warning repeated it once per parse (fresh user 10, L3)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Falling back to parsing as a 'Command'" not in record.getMessage()


logging.getLogger("sqlglot").addFilter(_CommandFallbackFilter())


def statement_kind(tree: exp.Expr) -> str:
    """The statement's kind as a user wrote it, upper case: ``SELECT``, ``INSERT``, and for a
    statement sqlglot keeps opaque the keyword it starts with (``EXPLAIN``, not ``COMMAND``)."""
    if isinstance(tree, exp.Command):
        return str(tree.this).upper()
    return tree.key.upper()


@dataclass(frozen=True)
class StatementSummary:
    """One statement as an audit entry records it.

    ``sha256``: hex SHA-256 of the UTF-8 text as given; ``shape``: the statement in ``read``
    dialect with every literal replaced by ``?`` (None when it does not parse); ``kind``:
    ``select``, ``create_table_as``, another statement key in lower case (``insert``,
    ``pragma``...) or ``unparsable``; ``tables_read`` / ``tables_created``: sorted table names
    (CTE names are not tables; a ``CREATE TABLE`` target is created, not read)."""

    sha256: str
    shape: str | None
    kind: str
    tables_read: tuple[str, ...]
    tables_created: tuple[str, ...]

    def as_payload(self) -> dict[str, object]:
        """The JSON-ready mapping of an audit payload."""
        return {
            "sql_sha256": self.sha256,
            "statement": self.shape,
            "statement_kind": self.kind,
            "tables_read": list(self.tables_read),
            "tables_created": list(self.tables_created),
        }


def sql_digest(sql: str) -> str:
    """Hex SHA-256 of ``sql`` encoded as UTF-8 (surrogates are escaped, never an error)."""
    return hashlib.sha256(sql.encode("utf-8", "surrogatepass")).hexdigest()


#: literal node classes: strings and numbers, and the raw/national/hex/byte/bit/unicode forms
_LITERALS: tuple[type[exp.Expr], ...] = tuple(
    cls
    for cls in (
        getattr(exp, name, None)
        for name in (
            "Literal",
            "RawString",
            "National",
            "HexString",
            "ByteString",
            "BitString",
            "UnicodeString",
        )
    )
    if isinstance(cls, type)
)


def without_literals(tree: exp.Expr) -> exp.Expr:
    """A copy of ``tree`` with every literal (string, number, ``$$raw$$``, ``N'...'``, hex,
    byte, bit and unicode strings) replaced by a ``?`` placeholder."""

    def strip(node: exp.Expr) -> exp.Expr:
        if isinstance(node, _LITERALS):
            return exp.Placeholder()
        return node

    return tree.copy().transform(strip, copy=False)


def describe_statement(sql: str, read: str = "duckdb") -> StatementSummary:
    """The audit summary of ``sql`` (one statement in dialect ``read``). Never raises for bad
    SQL: an unparsable statement is summarised as kind ``unparsable`` with its digest only."""
    digest = sql_digest(sql)
    try:
        trees = [t for t in sqlglot.parse(sql, read=read) if t is not None]
    except SqlglotError:
        trees = []
    if len(trees) != 1:
        return StatementSummary(digest, None, "unparsable", (), ())
    tree = trees[0]
    created: tuple[str, ...] = ()
    query: exp.Expr | None = tree
    if isinstance(tree, exp.Create):
        target = tree.this
        name = target.name if isinstance(target, exp.Table) else ""
        created = (name,) if name else ()
        query = tree.expression
        kind = "create_table_as" if isinstance(query, exp.Query) else "create"
    elif isinstance(tree, exp.Query):
        kind = "select"
    else:
        kind = tree.key.lower()
    read_tables: set[str] = set()
    if query is not None:
        ctes = {c.alias_or_name for c in query.find_all(exp.CTE)}
        read_tables = {
            t.name
            for t in query.find_all(exp.Table)
            if t.name and isinstance(t.this, exp.Identifier) and t.name not in ctes
        }
    try:
        # comments are dropped too: they can carry the same values as the literals
        shape: str | None = without_literals(tree).sql(dialect=read, comments=False)
    except SqlglotError:
        shape = None
    return StatementSummary(digest, shape, kind, tuple(sorted(read_tables)), created)

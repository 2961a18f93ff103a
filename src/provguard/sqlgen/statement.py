"""What an audit entry may say about a SQL statement: its digest, its shape without literals,
its kind and the tables it reads and creates.

The literals of a query are often the very data it searches for (``WHERE handle = '温柔月亮'``),
so an audit trail of queries must not store them: :func:`describe_statement` keeps the
statement's SHA-256 (whoever holds the text can prove it is the one logged) and the statement
with every literal replaced by ``?`` (sqlglot's ``Placeholder``) and its comments removed,
which still shows what was asked (tables, columns, joins, predicates) but not for which
values. Identifiers (table, column and alias names) are kept as written.

It also decides which statements a policy-aware query may be at all (:func:`refuse_statement`,
:func:`refuse_statement_tree`): a query (``SELECT``, ``WITH``, DuckDB's ``FROM``-first and
``TABLE t``) or ``CREATE TABLE ... AS``. Any other statement DuckDB accepts (``CREATE MACRO``,
``INSERT``, ``COPY``, ``ATTACH``, ``SET``, ``PRAGMA``, ``EXPORT DATABASE``, ``CHECKPOINT``...) is
refused by name with :class:`UnsupportedStatement` (a PG160
:class:`~provguard.sqlgen.errors.QueryError`) before its parts are looked at, and so is a
locking read (``FOR UPDATE`` / ``FOR SHARE``).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import SqlglotError
from sqlglot.tokenizer_core import Token, TokenType
from sqlglot.tokens import Tokenizer

from provguard.sqlgen.errors import QueryError

#: sqlglot warnings about statements provguard refuses with its own error (PG160)
_FILTERED_WARNINGS = (
    # a statement sqlglot cannot parse (EXPLAIN, PREPARE...) kept as an opaque Command
    "Falling back to parsing as a 'Command'",
    # a locking read (FOR UPDATE / FOR SHARE) generated in a dialect without them: the audit
    # summary's shape printed it once, each generated query once more (fresh user 11)
    "Locking reads using 'FOR UPDATE/SHARE' are not supported",
)


class _CommandFallbackFilter(logging.Filter):
    """Drops sqlglot's warnings about statements provguard refuses with its own error (PG160):
    a statement it cannot parse (``EXPLAIN``, ``PREPARE``...) falling back to an opaque
    ``Command`` (fresh user 10, L3), and a locking read (``FOR UPDATE``) it cannot generate in
    DuckDB (fresh user 11). Each was repeated once per parse or generation."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(w in message for w in _FILTERED_WARNINGS)


logging.getLogger("sqlglot").addFilter(_CommandFallbackFilter())


def statement_kind(tree: exp.Expr) -> str:
    """The statement's kind as a user wrote it, upper case: ``SELECT``, ``INSERT``, and for a
    statement sqlglot keeps opaque the keyword it starts with (``EXPLAIN``, not ``COMMAND``)."""
    if isinstance(tree, exp.Command):
        return str(tree.this).upper()
    return tree.key.upper()


class UnsupportedStatement(QueryError):
    """A statement a policy-aware query may not be (PG160, as :class:`QueryError`): refused by
    name (:data:`NOT_ALLOWED`), or a locking read. Its own class so that a caller rewording
    plain :class:`QueryError` (the labelled store names unschematised tables) keeps it: a
    ``CREATE MACRO m`` is not a query of a table ``m`` without a schema. It inherits
    :class:`QueryError`'s code."""


#: the message of every statement refused by name (``... not CREATE MACRO``)
NOT_ALLOWED = "only SELECT and CREATE TABLE AS are allowed under a policy, not {name}"

#: first words of a query: SELECT, a CTE, DuckDB's FROM-first form and ``TABLE t``
_QUERY_WORDS = frozenset({"SELECT", "WITH", "FROM", "TABLE"})
#: statements named by their first two words (``CREATE MACRO``, ``EXPORT DATABASE``)
_OBJECT_WORDS = frozenset({"CREATE", "DROP", "ALTER", "EXPORT", "IMPORT", "START"})
#: words between ``CREATE`` and the kind of object it creates (``CREATE OR REPLACE TEMP VIEW``)
_CREATE_MODIFIERS = frozenset(
    {
        "OR",
        "REPLACE",
        "TEMP",
        "TEMPORARY",
        "PERSISTENT",
        "UNIQUE",
        "GLOBAL",
        "LOCAL",
        "TRANSIENT",
        "UNLOGGED",
        "EXTERNAL",
        "MATERIALIZED",
    }
)
_WORD = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")
#: names of parsed statements whose sqlglot key differs from the SQL keyword
_TREE_NAMES = {"TRUNCATETABLE": "TRUNCATE", "TRANSACTION": "BEGIN"}


#: the leading words :func:`_name` may need (``CREATE OR REPLACE TEMP ... MACRO``) are far fewer
_MAX_WORDS = 16
#: characters tokenized first: the whole statement only when its leading words run past them
_PREFIX = 64


_LOCAL = threading.local()


def _tokenizer(read: str) -> Tokenizer:
    """This thread's tokenizer of dialect ``read`` (making one costs ten times a short
    statement's tokenization; one instance is not safe across threads)."""
    cache: dict[str, Tokenizer] | None = getattr(_LOCAL, "tokenizers", None)
    if cache is None:
        cache = _LOCAL.tokenizers = {}
    tok = cache.get(read)
    if tok is None:
        dialect = Dialect.get_or_raise(read)
        tok = cache[read] = dialect.tokenizer_class(dialect=dialect)
    return tok


def _words(sql: str, read: str) -> list[str] | None:
    """The leading words of ``sql`` (keywords and unquoted names, upper case; comments
    skipped; at most :data:`_MAX_WORDS`) up to the first token that is not one, or None when
    it does not tokenize. Only a prefix is tokenized when it holds them all (a cold rewrite
    pays for this once per statement: a whole 4 kB query tokenizes in milliseconds)."""
    tokenizer = _tokenizer(read)
    texts = (sql[:_PREFIX], sql) if len(sql) > _PREFIX else (sql,)
    for text in texts:
        try:
            tokens: list[Token] = tokenizer.tokenize(text)
        except (SqlglotError, ValueError):
            if text is sql:
                return None
            continue  # the cut fell inside a string or comment: tokenize the whole
        words, complete = _leading(tokens)
        if complete or text is sql:
            return words
    return None  # unreachable: the last text is ``sql`` itself


def _leading(tokens: list[Token]) -> tuple[list[str], bool]:
    """(the leading words of ``tokens``, whether a token that ends them, or the word limit,
    was reached: a prefix's words are then those of the whole text)."""
    words: list[str] = []
    for tok in tokens:
        if len(words) == _MAX_WORDS:
            return words, True
        if tok.token_type in (TokenType.IDENTIFIER, TokenType.STRING, TokenType.NUMBER):
            return words, True
        if not _WORD.fullmatch(tok.text):
            if not words and tok.token_type == TokenType.L_PAREN:
                words.append("(")
            return words, True
        words.append(tok.text.upper())
    return words, False


def _name(words: list[str]) -> str:
    """The statement's name from its leading ``words`` (non-empty): one word (``INSERT``,
    ``CHECKPOINT``), or two for the statements that name an object (``CREATE MACRO``,
    ``DROP TABLE``, ``EXPORT DATABASE``, ``START TRANSACTION``), ``FORCE`` kept as a prefix
    (``FORCE INSTALL``) and ``UPDATE EXTENSIONS`` as written."""
    first, rest = words[0], words[1:]
    if first == "FORCE" and rest:
        return f"FORCE {_name(rest)}"
    if first == "UPDATE" and rest[:1] == ["EXTENSIONS"]:
        return "UPDATE EXTENSIONS"
    if first in _OBJECT_WORDS:
        kinds = [w for w in rest if w not in _CREATE_MODIFIERS] if first == "CREATE" else rest
        if kinds:
            return f"{first} {kinds[0]}"
    return first


def statement_name(sql: str, read: str = "duckdb") -> str | None:
    """The name of the statement ``sql`` (dialect ``read``) as its first keywords give it, upper
    case: ``SELECT``, ``CREATE MACRO``, ``CREATE TABLE`` (modifiers such as ``OR REPLACE`` or
    ``TEMP`` left out), ``EXPORT DATABASE``, ``CHECKPOINT``; ``(`` for a parenthesised query.
    Read from sqlglot's tokens, not its parse tree: sqlglot parses ``CHECKPOINT`` as a column
    and cannot parse ``EXPORT DATABASE`` at all. None for text that does not start with a word
    or a parenthesis (empty, a literal, a quoted name) or does not tokenize. Never raises."""
    words = _words(sql, read)
    return _name(words) if words else None


#: the message of a text holding several statements (:func:`statement_count`)
ONE_STATEMENT = (
    "one statement per query: got {count} statements separated by ';' (nothing was run);"
    " send each statement as its own query"
)


def statement_count(sql: str, read: str = "duckdb") -> int | None:
    """How many statements the text ``sql`` (dialect ``read``) holds: the runs of tokens
    between top-level ``;`` tokens that are not empty (a trailing ``;`` adds none; a ``;``
    inside a string, quoted name or comment is not a separator). Text without a ``;`` is not
    tokenized (1 when it holds a token, else 0). None when it does not tokenize (the parser
    then reports it). Never raises."""
    if ";" not in sql:
        return 1 if sql.strip() else 0
    try:
        tokens: list[Token] = _tokenizer(read).tokenize(sql)
    except (SqlglotError, ValueError):
        return None
    count, pending = 0, False
    for tok in tokens:
        if tok.token_type == TokenType.SEMICOLON:
            count += int(pending)
            pending = False
        else:
            pending = True
    return count + int(pending)


def refuse_statement(sql: str, read: str = "duckdb") -> None:
    """Refuse, before it is parsed, a statement that is neither a query nor ``CREATE TABLE``,
    and a text holding more than one statement.

    First, a text of several statements (:func:`statement_count` > 1) raises
    :class:`UnsupportedStatement` (PG160) :data:`ONE_STATEMENT` before anything else is
    checked (``CREATE TABLE t AS ...; SELECT 1`` was refused as "table(s) t have no provenance
    schema", fresh user 12, L6).

    ``sql`` is one statement in dialect ``read`` (its first statement is the one checked).
    Passes text starting with ``SELECT``, ``WITH``, ``FROM``, ``TABLE``, ``(`` or ``CREATE
    [modifiers] TABLE`` (the rewrite then checks the ``AS`` query and the modifiers), and text
    that does not start with a word (the parser reports it). Raises
    :class:`UnsupportedStatement` (PG160) ``only SELECT and CREATE TABLE AS are
    allowed under a policy, not <name>`` (:func:`statement_name`) for anything else: every
    DDL, DML and utility statement of DuckDB (``CREATE MACRO``, ``INSERT``, ``COPY``,
    ``ATTACH``, ``SET``, ``PRAGMA``, ``INSTALL``, ``CALL``, ``EXPORT DATABASE``, ``VACUUM``,
    ``CHECKPOINT``, ``SUMMARIZE``, ``DESCRIBE``, ``SHOW``, ``USE``, ``BEGIN``...), so none is
    reported with an error about its parts (``CREATE MACRO m(x) AS x`` was a PG161 about
    ``x``)."""
    count = statement_count(sql, read)
    if count is not None and count > 1:
        raise UnsupportedStatement(ONE_STATEMENT.format(count=count))
    words = _words(sql, read)
    if not words or words[0] in _QUERY_WORDS or words[0] == "(":
        return
    name = _name(words)
    if name == "CREATE TABLE":
        return
    raise UnsupportedStatement(NOT_ALLOWED.format(name=name))


def refuse_statement_tree(tree: exp.Expr) -> None:
    """Refuse a parsed statement (``tree``) that is not a query or ``CREATE TABLE``, or that
    holds a locking read anywhere (``FOR UPDATE``, ``FOR SHARE``, ``FOR NO KEY UPDATE``...).

    Complements :func:`refuse_statement` for statements whose first word is a query's
    (``WITH x AS (...) INSERT INTO ...``). Raises
    :class:`UnsupportedStatement` (PG160): the statement by name, or ``locking
    reads (FOR UPDATE / FOR SHARE) are not supported under a policy``. A lock is a write
    intent, and DuckDB's SQL has none: sqlglot drops the clause with a warning and the query
    ran without it."""
    if isinstance(tree, exp.Create):
        kind = str(tree.args.get("kind") or "").upper()
        if kind != "TABLE":
            raise UnsupportedStatement(NOT_ALLOWED.format(name=f"CREATE {kind}".rstrip()))
    elif not isinstance(tree, exp.Query):
        kind = statement_kind(tree)
        raise UnsupportedStatement(NOT_ALLOWED.format(name=_TREE_NAMES.get(kind, kind)))
    if tree.find(exp.Lock) is not None:
        raise UnsupportedStatement(
            "locking reads (FOR UPDATE / FOR SHARE) are not supported under a policy:"
            " a policy-aware query only reads; remove the FOR clause"
        )


@dataclass(frozen=True)
class StatementSummary:
    """One statement as an audit entry records it.

    ``sha256``: hex SHA-256 of the UTF-8 text as given; ``shape``: the statement in ``read``
    dialect with every literal replaced by ``?`` (None when it does not parse); ``kind``:
    ``select``, ``create_table_as``, another statement's name in lower case with ``_``
    (``insert``, ``pragma``, ``create_macro``, ``checkpoint``: :func:`statement_name`) or
    ``unparsable``; ``tables_read`` / ``tables_created``: sorted table names
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


def _named_kind(sql: str, read: str, tree: exp.Expr) -> str:
    """The audit kind of a statement that is not a query: its name in lower case with ``_``
    (``create_macro``, ``checkpoint``, ``export_database``; :func:`statement_name`), or the
    parse tree's key when the text starts as a query (``WITH ... INSERT``: ``insert``)."""
    name = statement_name(sql, read)
    if name is None or name in _QUERY_WORDS or name == "(":
        return tree.key.lower()
    return name.lower().replace(" ", "_")


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
        is_table = str(tree.args.get("kind") or "").upper() == "TABLE"
        created = (name,) if name and is_table else ()  # a view or macro is no table
        query = tree.expression
        as_query = is_table and isinstance(query, exp.Query)
        kind = "create_table_as" if as_query else _named_kind(sql, read, tree)
    elif isinstance(tree, exp.Query):
        kind = "select"
    else:
        kind = _named_kind(sql, read, tree)
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

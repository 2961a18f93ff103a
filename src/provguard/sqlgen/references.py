"""Every name a policy-aware query reads must be a column the lineage can see.

The lineage (:mod:`provguard.sqlgen.rewrite`) labels ``exp.Column`` nodes that sqlglot's
qualifier bound to a table. DuckDB also resolves names that sqlglot does not parse as columns:

- method-call syntax, ``handle.lcase()`` or ``(handle).ucase()``, parses as
  ``Dot(Identifier(handle), Anonymous(lcase))``: the handle is a bare ``Identifier``, never
  qualified, never labelled, and DuckDB still reads the column;
- ``ORDER BY ALL`` sorts by every output column, parsed as the keyword ``Var(ALL)``: the sort
  (and so which rows a ``LIMIT`` keeps) depends on columns no ``Column`` node names.

So the check is structural: a bare ``Identifier`` may only sit where it *names* something (a
column, table, alias, CTE, function or type), never where it is a value, and member access
(``Dot``) is refused outright. A refused query is :class:`~provguard.sqlgen.errors.LineageError`
(``PG161``): refusing costs the user a rewrite of one expression (``lower(handle)``), missing a
case returns raw platform data unlabelled.
"""

from __future__ import annotations

from sqlglot import exp

from provguard.sqlgen.errors import LineageError

#: node types under which an ``Identifier`` names something rather than being read as a value
_NAMING_PARENTS: tuple[type[exp.Expr], ...] = (
    exp.Column,
    exp.Table,
    exp.TableAlias,
    exp.Alias,
    exp.CTE,
    exp.Schema,
    exp.ColumnDef,
    exp.Star,
    exp.Join,
    exp.Window,
    exp.WindowSpec,
    exp.DataType,
    exp.Anonymous,
    exp.Cast,
    exp.Kwarg,
    exp.Lambda,
    exp.Create,
    exp.Property,
    exp.PropertyEQ,
)


def check_references(statement: exp.Expr) -> None:
    """Refuse names DuckDB would read as columns but the lineage cannot see.

    ``statement`` is the parsed (or qualified) statement; it is only read. Raises
    :class:`~provguard.sqlgen.errors.LineageError` (``PG161``) naming the construct: member
    access or method-call syntax (``x.f()``), ``ORDER BY ALL`` / a keyword as a sort key, or a
    bare identifier in a value position.
    """
    for node in statement.walk():
        if isinstance(node, exp.Dot):
            raise LineageError(
                "member access or method-call syntax has no lineage support"
                f" ({_show(node)}): call the function on the column, e.g. lower(handle)"
            )
        if isinstance(node, exp.Ordered) and isinstance(node.this, exp.Var):
            raise LineageError(
                f"ORDER BY {node.this.name} has no lineage support: name the sort columns"
            )
        if isinstance(node, exp.Identifier):
            parent = node.parent
            if parent is None or isinstance(parent, _NAMING_PARENTS):
                continue
            raise LineageError(
                f"'{node.name}' is read as a value but is not a column reference the lineage"
                f" can see ({_show(parent)}): write it as a plain column"
            )


def _show(node: exp.Expr) -> str:
    return node.sql(dialect="duckdb")[:60]

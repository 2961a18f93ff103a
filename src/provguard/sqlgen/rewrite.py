"""Policy-aware SQL: lineage of every output column, companion label columns, masks, row filters.

The query is parsed and qualified with sqlglot (``sqlglot.optimizer.qualify``: stars expanded,
every column bound to its source), split into scopes (``sqlglot.optimizer.scope``) and labelled
bottom-up:

- a base column's label is its origins column (``COALESCE(t.handle_origins, 0)``) or the constant
  of its :class:`~provguard.sqlgen.schema.ColumnSpec`;
- an expression's label is the bitwise OR of its columns' labels (joins, ``CASE``, functions);
- in an aggregate scope each output's label is ``BIT_OR`` of its columns' labels over the group,
  and an aggregate additionally takes the group keys' labels;
- a window function's label is ``BIT_OR`` of its arguments', partition and order keys' labels over
  the whole partition (``OVER (PARTITION BY ...)``, no frame: conservative);
- a scalar or ``EXISTS``/``IN`` subquery contributes the ``BIT_OR`` of its outputs' labels;
- derived tables, CTEs and ``UNION ALL`` branches get companion columns ``<col>__origins`` that the
  enclosing scope reads; ``SELECT DISTINCT`` and ``UNION`` become ``GROUP BY`` with ``BIT_OR`` so
  rows equal in value but differently labelled merge with the union of their labels.

The root query's outputs are then masked per row::

    CASE WHEN (label & F_nullify) <> 0 THEN NULL
         WHEN (label & F_placeholder) <> 0 THEN '[withheld]'
         WHEN (label & F_redact) <> 0 THEN SUBSTRING(CAST(v AS TEXT), 1, 1) || '***'
         WHEN (label & F_hash) <> 0 THEN SHA256(CAST(v AS TEXT))
         ELSE v END

(a branch only where its mask ``F`` is non-zero; when ``unknown`` is in ``F``, ``label = 0`` also
hits), and each output ``c`` gets its label as ``c__origins``. Tables with a row label get their
denied rows filtered at the scan. ``CREATE TABLE t AS <query>`` rewrites the query and reports the
derived :class:`~provguard.sqlgen.schema.TableSpec`.

Refused with :class:`~provguard.sqlgen.errors.LineageError`: ``INTERSECT``/``EXCEPT``, recursive
CTEs, table functions, ``UNNEST``/``VALUES``/``LATERAL``/``PIVOT`` sources, set operations inside
subquery expressions, window functions in aggregate scopes, ``SELECT DISTINCT`` over aggregates,
direct reads of origins columns, statements other than ``SELECT``/``CREATE TABLE AS``.

Not labelled (implicit flows): columns used only in ``WHERE``/``JOIN ... ON``/``HAVING``/
``ORDER BY``/``QUALIFY`` influence which rows appear but not the labels of the values returned.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import OptimizeError, ParseError, SqlglotError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, ScopeType, traverse_scope

from provguard.errors import InputError
from provguard.provenance import UNKNOWN, OriginRegistry, default_registry
from provguard.sqlgen.errors import LineageError, QueryError, QueryRefused
from provguard.sqlgen.schema import ORIGINS_SUFFIX, SchemaRegistry, TableSpec
from provguard.sqlgen.verdict import STRATEGIES, ColumnVerdict, QueryPolicy

PLACEHOLDER = "[withheld]"
REDACT_TAIL = "***"
DIALECTS = ("duckdb", "spark")


def label_type(dialect: str) -> exp.DataType:
    """The SQL type of a label: ``UBIGINT`` in DuckDB, ``BIGINT`` (same 64 bits) elsewhere."""
    if dialect == "duckdb":
        return exp.DataType.build("ubigint", dialect="duckdb")
    return exp.DataType.build("bigint")


@dataclass(frozen=True)
class ColumnLineage:
    """The lineage of one output column: base ``sources`` as ``(table, column)`` pairs and the
    data ``categories`` they carry."""

    name: str
    sources: tuple[tuple[str, str], ...]
    categories: tuple[str, ...]


@dataclass(frozen=True)
class OutputColumn:
    """One output column of a rewritten query: its label column, lineage, and the masks applied
    (strategy -> forbidden origins bitmask)."""

    name: str
    origins_column: str
    sources: tuple[tuple[str, str], ...]
    categories: tuple[str, ...]
    masks: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Rewritten:
    """A rewritten statement: ``sql`` in ``dialect``, its ``expression``, the output columns and,
    for ``CREATE TABLE AS``, the ``create_table`` name and the derived spec ``created_spec``.
    ``filtered``: table -> forbidden row-origins mask filtered at the scan."""

    sql: str
    dialect: str
    expression: exp.Expr
    columns: tuple[OutputColumn, ...]
    create_table: str | None = None
    created_spec: TableSpec | None = None
    filtered: dict[str, int] = field(default_factory=dict)
    #: the SELECT alone (for ``CREATE TABLE AS``: the query that fills the table)
    query_sql: str = ""


@dataclass
class _Out:
    name: str
    origins: exp.Expr | None
    categories: frozenset[str]
    sources: frozenset[tuple[str, str]]


def _or(parts: Iterable[exp.Expr]) -> exp.Expr | None:
    out: exp.Expr | None = None
    for p in parts:
        out = p if out is None else exp.BitwiseOr(this=out, expression=p)
    return out


class _Labeller:
    """Adds companion label columns to every derived scope and returns the root's outputs."""

    def __init__(self, schema: SchemaRegistry, registry: OriginRegistry, dialect: str) -> None:
        self.schema = schema
        self.registry = registry
        self.dialect = dialect
        self.ltype = label_type(dialect)
        self.outs: dict[int, list[_Out]] = {}
        self.aggregate: dict[int, bool] = {}
        self.base_tables: list[tuple[exp.Table, str]] = []

    # ---------------------------------------------------------------- literals and leaves
    def lit(self, mask: int) -> exp.Expr:
        if self.dialect != "duckdb" and mask >= 1 << 63:
            mask -= 1 << 64
        return exp.Cast(this=exp.Literal.number(mask), to=self.ltype.copy())

    def zero(self) -> exp.Expr:
        return self.lit(0)

    def coalesce(self, e: exp.Expr) -> exp.Expr:
        return exp.Coalesce(this=e, expressions=[self.zero()])

    def constant_mask(self, names: Iterable[str]) -> int:
        try:
            return sum(1 << self.registry.bit(n) for n in set(names))
        except InputError as exc:
            raise QueryError(f"schema label: {exc.message}") from None

    # ---------------------------------------------------------------- driver
    def run(self, root: exp.Select) -> list[_Out]:
        try:
            scopes = traverse_scope(root)
        except (OptimizeError, SqlglotError) as exc:
            raise LineageError(f"cannot compute the scopes of this query: {exc}") from None
        companion: set[int] = set()
        for scope in scopes:
            if scope.scope_type in (ScopeType.DERIVED_TABLE, ScopeType.CTE):
                self._mark(scope, companion)
        for scope in scopes:
            self._check(scope)
            e = scope.expression
            if isinstance(e, exp.SetOperation):
                if scope.scope_type == ScopeType.SUBQUERY:
                    raise LineageError(
                        "a set operation inside a subquery expression has no lineage support;"
                        " move it into a CTE or derived table"
                    )
                left = self.outs[id(scope.set_operation_scopes[0].expression)]
                right = self.outs[id(scope.set_operation_scopes[1].expression)]
                if len(left) != len(right):
                    raise QueryError("UNION branches have different numbers of columns")
                self.outs[id(e)] = [
                    _Out(a.name, None, a.categories | b.categories, a.sources | b.sources)
                    for a, b in zip(left, right, strict=True)
                ]
                continue
            assert isinstance(e, exp.Select)
            outs = self._select(scope)
            self.outs[id(e)] = outs
            if id(e) in companion:
                for o in outs:
                    assert o.origins is not None
                    e.select(exp.alias_(o.origins.copy(), o.name + ORIGINS_SUFFIX), copy=False)
        return self.outs[id(root)]

    def _mark(self, scope: Scope, into: set[int]) -> None:
        into.add(id(scope.expression))
        for child in scope.set_operation_scopes:
            self._mark(child, into)

    def _check(self, scope: Scope) -> None:
        if scope.scope_type == ScopeType.UDTF:
            raise LineageError("UNNEST / VALUES / table-function sources have no lineage support")
        e = scope.expression
        if isinstance(e, (exp.Intersect, exp.Except)):
            raise LineageError(f"{e.key.upper()} has no lineage support (use joins or EXISTS)")
        if isinstance(e, exp.Union) and e.args.get("distinct"):
            raise LineageError("internal: UNION DISTINCT was not normalised")
        if isinstance(e, exp.Select):
            if e.args.get("laterals"):
                raise LineageError("LATERAL has no lineage support")
            if e.args.get("distinct"):
                raise LineageError("SELECT DISTINCT over an aggregate: wrap it in a subquery")
            for join in e.args.get("joins") or []:
                if (join.method or "").upper() == "NATURAL":
                    raise LineageError("NATURAL JOIN: name the join columns with USING or ON")
        for name, src in scope.sources.items():
            if isinstance(src, exp.Table):
                if not isinstance(src.this, exp.Identifier):
                    raise LineageError(f"table function '{src.sql()}' has no lineage support")
                if src.args.get("pivots"):
                    raise LineageError("PIVOT / UNPIVOT has no lineage support")
                try:
                    self.schema.table(src.name)
                except InputError as exc:
                    raise QueryError(exc.message) from None
                if not any(t is src for t, _ in self.base_tables):
                    self.base_tables.append((src, name))

    # ---------------------------------------------------------------- one SELECT
    def is_aggregate(self, sel: exp.Select) -> bool:
        key = id(sel)
        cached = self.aggregate.get(key)
        if cached is None:
            cached = bool(sel.args.get("group")) or any(_has_agg(p) for p in sel.expressions)
            self.aggregate[key] = cached
        return cached

    def _select(self, scope: Scope) -> list[_Out]:
        sel = scope.expression
        assert isinstance(sel, exp.Select)
        agg = self.is_aggregate(sel)
        group_parts: list[exp.Expr] = []
        group_cats: set[str] = set()
        group_srcs: set[tuple[str, str]] = set()
        if agg and sel.args.get("group"):
            group = sel.args["group"]
            keys: list[exp.Expr] = list(group.expressions)
            if group.args.get("all"):
                keys = [p for p in sel.expressions if not _has_agg(p)]
            for g in keys:
                if isinstance(g, exp.Literal) and g.is_int:
                    idx = int(g.name) - 1
                    if not 0 <= idx < len(sel.expressions):
                        raise QueryError(f"GROUP BY position {g.name} is out of range")
                    g = sel.expressions[idx]
                o, c, s = self._expr(g, scope, in_agg=True)
                group_parts.append(o)
                group_cats |= c
                group_srcs |= s
        outs: list[_Out] = []
        seen: set[str] = set()
        for proj in sel.expressions:
            name = proj.alias_or_name
            if name.endswith(ORIGINS_SUFFIX):
                raise QueryError(f"output name '{name}' is reserved for provenance labels")
            if name in seen:
                raise QueryError(f"duplicate output column '{name}'; give each a distinct alias")
            seen.add(name)
            inner = proj.this if isinstance(proj, exp.Alias) else proj
            o, cats, srcs = self._expr(inner, scope, in_agg=agg)
            if agg:
                if _has_agg(inner):
                    extra = _or(p.copy() for p in group_parts)
                    if extra is not None:
                        o = exp.BitwiseOr(this=o, expression=extra)
                        cats |= group_cats
                        srcs |= group_srcs
                o = self.coalesce(_bit_or(o))
            outs.append(_Out(name, o, frozenset(cats), frozenset(srcs)))
        return outs

    def _expr(
        self, node: exp.Expr, scope: Scope, *, in_agg: bool
    ) -> tuple[exp.Expr, set[str], set[tuple[str, str]]]:
        parts, const, cats, srcs = self._parts(node, scope, in_agg=in_agg)
        return self.combine(parts, const), cats, srcs

    def combine(self, parts: list[exp.Expr], const: int) -> exp.Expr:
        """OR of dynamic ``parts`` and the constant mask ``const`` (folded into one literal)."""
        if const:
            parts = [*parts, self.lit(const)]
        return _or(parts) or self.zero()

    def _parts(
        self, node: exp.Expr, scope: Scope, *, in_agg: bool
    ) -> tuple[list[exp.Expr], int, set[str], set[tuple[str, str]]]:
        parts: list[exp.Expr] = []
        const = 0
        cats: set[str] = set()
        srcs: set[tuple[str, str]] = set()
        stack = [node]
        while stack:
            n = stack.pop()
            if isinstance(n, exp.Column):
                if isinstance(n.this, exp.Star):
                    continue
                o, m, c, s = self._column(n, scope)
                const |= m
                if o is not None:
                    parts.append(o)
                cats |= c
                srcs |= s
            elif isinstance(n, exp.Window):
                if in_agg:
                    raise LineageError(
                        "window function in an aggregate query: compute the aggregate in a"
                        " subquery and apply the window outside it"
                    )
                wo, wm, c, s = self._window(n, scope)
                const |= wm
                if wo is not None:
                    parts.append(wo)
                cats |= c
                srcs |= s
            elif isinstance(n, (exp.Select, exp.SetOperation)):
                o, c, s = self._subquery(n)
                parts.append(o)
                cats |= c
                srcs |= s
            else:
                stack.extend(reversed(list(n.iter_expressions())))
        unique: dict[str, exp.Expr] = {}
        for p in parts:
            unique.setdefault(p.sql(), p)
        return list(unique.values()), const, cats, srcs

    def _column(
        self, col: exp.Column, scope: Scope
    ) -> tuple[exp.Expr | None, int, set[str], set[tuple[str, str]]]:
        table = col.table
        if not table:
            raise LineageError(f"column '{col.sql()}' could not be bound to a source")
        s: Scope | None = scope
        while s is not None and table not in s.sources:
            s = s.parent
        if s is None:
            raise LineageError(f"column '{col.sql()}' refers to an unknown source '{table}'")
        src = s.sources[table]
        if isinstance(src, exp.Table):
            spec = self.schema.table(src.name)
            cs = spec.columns.get(col.name)
            if cs is None:
                raise QueryError(
                    f"column '{col.name}' of table '{src.name}' is not a labelled data column"
                )
            cats = set(cs.categories)
            srcs = {(src.name, col.name)}
            if cs.origins_column is not None:
                ref = exp.column(cs.origins_column, table=table, quoted=col.this.quoted)
                return self.coalesce(ref), 0, cats, srcs
            names = cs.origins if cs.origins is not None else (UNKNOWN,)
            return None, self.constant_mask(names), cats, srcs
        assert isinstance(src, Scope)
        for out in self.outs.get(id(src.expression), []):
            if out.name == col.name:
                ref = exp.column(col.name + ORIGINS_SUFFIX, table=table, quoted=col.this.quoted)
                return self.coalesce(ref), 0, set(out.categories), set(out.sources)
        raise LineageError(f"column '{col.sql()}' has no computed lineage in its source")

    def _window(
        self, w: exp.Window, scope: Scope
    ) -> tuple[exp.Expr | None, int, set[str], set[tuple[str, str]]]:
        pieces: list[exp.Expr] = [w.this]
        pieces.extend(w.args.get("partition_by") or [])
        if w.args.get("order") is not None:
            pieces.append(w.args["order"])
        parts: list[exp.Expr] = []
        const = 0
        cats: set[str] = set()
        srcs: set[tuple[str, str]] = set()
        for p in pieces:
            ps, m, c, s = self._parts(p, scope, in_agg=False)
            parts.extend(ps)
            const |= m
            cats |= c
            srcs |= s
        if not parts:  # constant labels only: the same on every row
            return None, const, cats, srcs
        window = exp.Window(
            this=_bit_or(self.combine(parts, const)),
            partition_by=[p.copy() for p in w.args.get("partition_by") or []],
        )
        return self.coalesce(window), 0, cats, srcs

    def _subquery(
        self, node: exp.Select | exp.SetOperation
    ) -> tuple[exp.Expr, set[str], set[tuple[str, str]]]:
        if not isinstance(node, exp.Select):
            raise LineageError("a set operation inside a subquery expression has no lineage")
        outs = self.outs.get(id(node))
        if outs is None:
            raise LineageError(f"subquery without computed lineage: {node.sql()[:80]}")
        label = _or(o.origins.copy() for o in outs if o.origins is not None) or self.zero()
        cats = set().union(*(o.categories for o in outs))
        srcs = set().union(*(o.sources for o in outs))
        copy = node.copy()
        single_row = self.is_aggregate(node) and not node.args.get("group")
        plain = not any(node.args.get(k) for k in ("limit", "offset", "order", "group"))
        if single_row and plain:
            copy.set("expressions", [exp.alias_(label, "_pg_o")])
            return exp.Subquery(this=copy), cats, srcs
        if plain and not self.is_aggregate(node):
            copy.set("expressions", [exp.alias_(self.coalesce(_bit_or(label)), "o")])
            return exp.Subquery(this=copy), cats, srcs
        copy.set("expressions", [exp.alias_(label, "o")])
        outer = exp.select(
            exp.alias_(self.coalesce(_bit_or(exp.column("o", table="_pg_s"))), "o")
        ).from_(exp.Subquery(this=copy, alias=exp.TableAlias(this=exp.to_identifier("_pg_s"))))
        return exp.Subquery(this=outer), cats, srcs


_TEXT = exp.DataType.build("text")


def _bit_or(this: exp.Expr) -> exp.Expr:
    return exp.Anonymous(this="BIT_OR", expressions=[this])


def _has_agg(node: exp.Expr) -> bool:
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, exp.AggFunc):
            return True
        if isinstance(n, (exp.Window, exp.Select, exp.SetOperation)):
            continue
        stack.extend(n.iter_expressions())
    return False


# ------------------------------------------------------------------ normalisation


def _normalise(query: exp.Query) -> exp.Select:
    """Root as a SELECT; SELECT DISTINCT and UNION (distinct) as GROUP BY (labels merge)."""
    counter = [0]

    def fresh(prefix: str) -> str:
        counter[0] += 1
        return f"_pg_{prefix}{counter[0]}"

    def wrap_union(u: exp.Union, group: bool) -> exp.Select:
        alias = fresh("u")
        names = u.named_selects
        tail = {k: u.args.get(k) for k in ("order", "limit", "offset")}
        for k in tail:
            u.set(k, None)
        with_ = u.args.get("with_") or u.args.get("with")
        if with_ is not None:
            u.set("with_" if "with_" in u.args else "with", None)
        if group:
            u.set("distinct", False)
        sel = exp.select(*[exp.alias_(exp.column(n, table=alias), n) for n in names]).from_(
            exp.Subquery(this=u, alias=exp.TableAlias(this=exp.to_identifier(alias)))
        )
        if group:
            sel = sel.group_by(*[exp.column(n, table=alias) for n in names])
        for k, v in tail.items():
            if v is not None:
                sel.set(k, v)
        if with_ is not None:
            sel.set("with_" if "with_" in sel.arg_types else "with", with_)
        return sel

    def visit(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Select) and node.args.get("group") is not None:
            group = node.args["group"]
            if group.args.get("all"):
                keys = [
                    (p.this if isinstance(p, exp.Alias) else p).copy()
                    for p in node.expressions
                    if not _has_agg(p)
                ]
                node.set("group", exp.Group(expressions=keys) if keys else None)
        if isinstance(node, exp.Union) and node.args.get("distinct"):
            return wrap_union(node, True)
        if isinstance(node, exp.Select) and node.args.get("distinct"):
            d = node.args["distinct"]
            if d.args.get("on") is not None:
                raise LineageError("DISTINCT ON has no lineage support")
            if node.args.get("group") or any(_has_agg(p) for p in node.expressions):
                raise LineageError("SELECT DISTINCT over an aggregate: wrap it in a subquery")
            if any(p.find(exp.Window) for p in node.expressions):
                raise LineageError("SELECT DISTINCT with window functions: use a subquery")
            node.set("distinct", None)
            keys = [(p.this if isinstance(p, exp.Alias) else p).copy() for p in node.expressions]
            node = node.group_by(*keys, copy=False)
        return node

    top = query.transform(visit, copy=False)
    if isinstance(top, exp.Union):
        top = wrap_union(top, False)
    if not isinstance(top, exp.Select):
        raise LineageError(f"{top.key.upper()} at the top level has no lineage support")
    return top


# ------------------------------------------------------------------ masks


def _hit(label: exp.Expr, mask: int, lab: _Labeller) -> exp.Expr:
    cond: exp.Expr = exp.NEQ(
        this=exp.Paren(
            this=exp.BitwiseAnd(this=exp.Paren(this=label.copy()), expression=lab.lit(mask))
        ),
        expression=lab.zero(),
    )
    if mask & 1:  # unknown: a label with no recorded origin counts as unknown
        cond = exp.or_(cond, exp.EQ(this=exp.Paren(this=label.copy()), expression=lab.zero()))
    return cond


def _masked(value: exp.Expr, label: exp.Expr, v: ColumnVerdict, lab: _Labeller) -> exp.Expr:
    if not v.masks:
        return value
    text = _TEXT
    as_text = any(s in v.masks for s in ("placeholder", "redact", "hash"))
    case = exp.Case()
    for strategy in STRATEGIES:
        mask = v.masks.get(strategy, 0)
        if not mask:
            continue
        then: exp.Expr
        if strategy == "nullify":
            then = exp.Null()
        elif strategy == "placeholder":
            then = exp.Literal.string(PLACEHOLDER)
        elif strategy == "redact":
            then = exp.DPipe(
                this=exp.Substring(
                    this=exp.Cast(this=value.copy(), to=text.copy()),
                    start=exp.Literal.number(1),
                    length=exp.Literal.number(1),
                ),
                expression=exp.Literal.string(REDACT_TAIL),
                safe=True,
            )
        else:
            then = exp.SHA2(
                this=exp.Cast(this=value.copy(), to=text.copy()), length=exp.Literal.number(256)
            )
        case = case.when(_hit(label, mask, lab), then, copy=False)
    return case.else_(
        exp.Cast(this=value.copy(), to=text.copy()) if as_text else value.copy(), copy=False
    )


# ------------------------------------------------------------------ entry points


def _parse(sql: str, read: str) -> exp.Expr:
    try:
        statements = [s for s in sqlglot.parse(sql, read=read) if s is not None]
    except (ParseError, SqlglotError) as exc:
        raise QueryError(f"cannot parse SQL: {exc}") from None
    if len(statements) != 1:
        raise QueryError(f"expected one statement, got {len(statements)}")
    return statements[0]


def _qualify(query: exp.Expr, schema: SchemaRegistry, dialect: str) -> exp.Expr:
    mapping: dict[str, object] = {
        name: {col: "TEXT" for col in spec.columns} for name, spec in schema.tables.items()
    }
    try:
        return qualify(
            query,
            schema=mapping,
            dialect=dialect,
            identify=False,
            validate_qualify_columns=True,
        )
    except (OptimizeError, SqlglotError) as exc:
        raise QueryError(
            f"cannot bind the query's columns: {exc} (origins columns cannot be read directly;"
            " every table must be in the provenance schema)"
        ) from None


def rewrite(
    sql: str,
    schema: SchemaRegistry,
    policy: QueryPolicy | None = None,
    *,
    dialect: str = "duckdb",
    read: str = "duckdb",
    registry: OriginRegistry | None = None,
) -> Rewritten:
    """Rewrite ``sql`` (one ``SELECT`` or ``CREATE TABLE ... AS SELECT`` in dialect ``read``) for
    execution in ``dialect`` (``duckdb`` or ``spark``) under ``policy`` (None: labels only).

    Returns a :class:`Rewritten` whose query outputs each column ``c`` (masked per row as the
    policy says) followed by ``c__origins`` labels (origins bitmasks of ``registry``, default the
    built-in one). Raises :class:`QueryError` (PG160) for bad SQL or unknown tables/columns,
    :class:`LineageError` (PG161) for constructs without lineage, :class:`QueryRefused` (PG162)
    when a deny without a mask obligation applies to an output column for some origin.
    """
    if dialect not in DIALECTS:
        raise QueryError(f"unsupported dialect '{dialect}' (one of {', '.join(DIALECTS)})")
    reg = registry or (policy.registry if policy is not None else default_registry())
    statement = _parse(sql, read)
    create_name: str | None = None
    if isinstance(statement, exp.Create):
        if (statement.args.get("kind") or "").upper() != "TABLE" or not isinstance(
            statement.expression, exp.Query
        ):
            raise QueryError("only CREATE TABLE ... AS SELECT is supported")
        target = statement.this
        if not isinstance(target, exp.Table):
            raise QueryError("CREATE TABLE AS with a column list is not supported")
        create_name = target.name
        query_node: exp.Expr = statement.expression
    elif isinstance(statement, exp.Query):
        query_node = statement
    else:
        raise QueryError(
            "only SELECT and CREATE TABLE AS are allowed under a policy,"
            f" not {statement.key.upper()}"
        )
    with_ = query_node.args.get("with_") or query_node.args.get("with")
    if with_ is not None and with_.args.get("recursive"):
        raise LineageError("recursive CTEs have no lineage support")
    qualified = _qualify(query_node.copy(), schema, read)
    assert isinstance(qualified, exp.Query)
    root = _normalise(qualified)
    lab = _Labeller(schema, reg, dialect)
    outs = lab.run(root)

    columns: list[OutputColumn] = []
    masked: list[exp.Expr] = []
    labels: list[exp.Expr] = []
    for out in outs:
        assert out.origins is not None
        root.select(exp.alias_(out.origins.copy(), out.name + ORIGINS_SUFFIX), copy=False)
        verdict = ColumnVerdict()
        if policy is not None and out.categories:
            verdict = policy.verdict(out.categories)
            refused = {r: m for r, m in verdict.refused.items() if m}
            if refused:
                rules = tuple(sorted(refused))
                origins = sorted(reg.names_of(_union(refused.values())))
                raise QueryRefused(
                    f"output column '{out.name}' depends on {', '.join(sorted(out.categories))}"
                    f" and rule(s) {', '.join(rules)} deny it for origin(s)"
                    f" {', '.join(origins)} with no mask obligation: query refused",
                    column=out.name,
                    rules=rules,
                )
        value = _ref(out.name)
        label = _ref(out.name + ORIGINS_SUFFIX)
        masked.append(
            exp.alias_(_masked(value, label, verdict, lab), out.name, quoted=_quote(out.name))
        )
        labels.append(exp.alias_(label.copy(), out.name + ORIGINS_SUFFIX, quoted=_quote(out.name)))
        columns.append(
            OutputColumn(
                out.name,
                out.name + ORIGINS_SUFFIX,
                tuple(sorted(out.sources)),
                tuple(sorted(out.categories)),
                tuple((s, m) for s, m in verdict.masks.items()),
            )
        )
    # masks apply on the final rows only (after ORDER BY / LIMIT of the query)
    with_key = "with_" if "with_" in root.args else "with"
    with_ = root.args.get(with_key)
    if with_ is not None:
        root.set(with_key, None)
    outer = exp.select(*masked, *labels, copy=False).from_(
        exp.Subquery(this=root, alias=exp.TableAlias(this=exp.to_identifier(_OUTER))), copy=False
    )
    if with_ is not None:
        outer.set(with_key, with_)

    filtered: dict[str, int] = {}
    if policy is not None:
        for table, alias in lab.base_tables:
            spec = schema.table(table.name)
            if spec.rows is None:
                continue
            denied = policy.verdict([spec.rows.category]).denied
            if not denied:
                continue
            filtered[table.name] = denied
            row_label = lab.coalesce(exp.column(spec.rows.origins_column, table=table.name))
            scan = (
                exp.select("*")
                .from_(exp.Table(this=exp.to_identifier(table.name)))
                .where(exp.not_(exp.Paren(this=_hit(row_label, denied, lab))))
            )
            table.replace(
                exp.Subquery(this=scan, alias=exp.TableAlias(this=exp.to_identifier(alias)))
            )

    final: exp.Expr = outer
    created: TableSpec | None = None
    if create_name is not None:
        final = statement.copy()
        final.set("expression", outer)
        created = TableSpec.derived((c.name, c.categories) for c in columns)
    generator = Dialect.get_or_raise(dialect)
    try:
        query_text = generator.generate(outer, copy=True) if created is not None else None
        text = generator.generate(final, copy=False)
    except SqlglotError as exc:
        raise LineageError(f"cannot emit the rewritten query in {dialect}: {exc}") from None
    return Rewritten(
        text, dialect, final, tuple(columns), create_name, created, filtered, query_text or text
    )


_OUTER = "_pg_q"
_PLAIN = re.compile(r"^[a-z_][a-z0-9_]*$")


def _quote(name: str) -> bool:
    return _PLAIN.match(name) is None


def _ref(name: str) -> exp.Column:
    return exp.column(name, table=_OUTER, quoted=_quote(name))


def _union(masks: Iterable[int]) -> int:
    out = 0
    for m in masks:
        out |= m
    return out


def lineage(sql: str, schema: SchemaRegistry, *, read: str = "duckdb") -> tuple[ColumnLineage, ...]:
    """The lineage of each output column of ``sql``: base (table, column) sources and data
    categories. Errors as for :func:`rewrite`."""
    r = rewrite(sql, schema, None, dialect="duckdb", read=read)
    return tuple(ColumnLineage(c.name, c.sources, c.categories) for c in r.columns)

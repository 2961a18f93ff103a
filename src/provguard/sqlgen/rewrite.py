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
         WHEN (label & F_hash) <> 0 THEN HMAC_SHA256(key, CAST(v AS TEXT))
         ELSE v END

(a branch only where its mask ``F`` is non-zero; when ``unknown`` is in ``F``, ``label = 0`` also
hits), and each output ``c`` gets its label as ``c__origins`` (an outer projection that is only
a rename is folded into the query, :func:`_assemble`). For a DuckDB ``SELECT`` the result also
carries an execution plan (:mod:`provguard.sqlgen.plan`): the same query with the constant label
bits, label normalisation and masks applied after fetch, in pyarrow. Tables with a row label get
their denied rows filtered at the scan. ``CREATE TABLE t AS <query>`` rewrites the query and
reports the derived :class:`~provguard.sqlgen.schema.TableSpec`.

Controller isolation (PIPL Art. 23): under a policy, every scan of a table with a
``controller_column`` becomes ``(SELECT * FROM t WHERE t.<controller_column> = '<app>') AS
<alias>`` (the policy's app; every scope, every dialect), and a table owned by another app
(``TableSpec.controller``, set to the creating app by ``CREATE TABLE AS``) is refused (PG162).

Refused with :class:`~provguard.sqlgen.errors.LineageError`: ``INTERSECT``/``EXCEPT``, recursive
CTEs, table functions, ``UNNEST``/``VALUES``/``LATERAL``/``PIVOT`` sources, set operations inside
subquery expressions, window functions in aggregate scopes, ``SELECT DISTINCT`` over aggregates,
direct reads of origins columns, ``SEMI``/``ANTI JOIN``, named ``WINDOW`` clauses, constructs
the qualifier never binds (``COLUMNS(...)``, a table used as a value, ``#n``, parameters), any
column in a clause the labeller does not read, statements other than ``SELECT``/``CREATE TABLE
AS``. A
``LIMIT``/``OFFSET`` computed from data on a set operation is first lifted onto a ``SELECT *``
over it (:func:`_lift_set_limits`), where it is an ordinary scalar control position.

Implicit flows (Denning 1976): the columns in control position of a scope (``WHERE``, ``JOIN
... ON``, ``GROUP BY``, ``HAVING``, ``ORDER BY``, ``QUALIFY`` and their ``IN``/``EXISTS``
subqueries) are OR-ed into the label of every output of the scope (per row; ``BIT_OR`` over the
group in aggregate scopes). Under a policy, a control position whose categories a deny without a
mask obligation hits refuses the query (:class:`QueryRefused` with ``clause``); one with a mask
obligation drops the rows whose control label meets the forbidden origins before the clause
decides (:class:`ControlFilter`). Each scope also has a *row label* (its control positions
and its sources' row labels): ``CREATE TABLE AS`` stores the root's per row as
``__row__origins`` (:class:`~provguard.sqlgen.schema.RowLabelSpec`), and a query reading such a
table folds it into every output and checks it as the control position ``FROM <table>``
(refused, or the hit rows dropped at the scan). Every scan filter (controller, row rule, row
label: :meth:`_Labeller.scan_filters`) is placed on the scans of the query and on those of the
copy that computes a subquery expression's label alike (:func:`_filter_scan`), so a row the
policy drops reaches neither a value nor a label. Stored labels of 0 or NULL are read as
``unknown`` (row labels excepted: 0 there means no data decided the row). The
``hash`` mask is HMAC-SHA256 under the deployment key (:mod:`provguard.sqlgen.keyed`), the same
in every dialect (``duckdb``, ``spark``, ``postgres``).
"""

from __future__ import annotations

import functools
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import OptimizeError, ParseError, SqlglotError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, ScopeType, traverse_scope
from sqlglot.schema import MappingSchema

from provguard.errors import InputError
from provguard.provenance import UNKNOWN, OriginRegistry, default_registry
from provguard.sqlgen.errors import LineageError, QueryError, QueryRefused
from provguard.sqlgen.functions import check_functions
from provguard.sqlgen.keyed import HASH_KEY_ENV, MIN_KEY_BYTES, key_id, pads
from provguard.sqlgen.plan import ExecutionPlan, PostStep
from provguard.sqlgen.references import check_references
from provguard.sqlgen.schema import (
    ANY_CONTROLLER,
    ORIGINS_SUFFIX,
    PACKED_LABELS,
    PACKED_WIDTH,
    ROW_LABEL,
    RowLabelSpec,
    SchemaRegistry,
    TableSpec,
    reserved_name,
)
from provguard.sqlgen.statement import refuse_statement, refuse_statement_tree, statement_kind
from provguard.sqlgen.stored import base_outputs, pads_nulls, stored_mask_for
from provguard.sqlgen.verdict import STORE_ACTION, STRATEGIES, ColumnVerdict, QueryPolicy

PLACEHOLDER = "[withheld]"
#: the reserved output name whose label column is the row label (``__row__origins``)
ROW_NAME = ROW_LABEL[: -len(ORIGINS_SUFFIX)]
REDACT_TAIL = "***"
DIALECTS = ("duckdb", "spark", "postgres")


def label_type(dialect: str) -> exp.DataType:
    """The SQL type of a label: ``UBIGINT`` in DuckDB, ``BIGINT`` (same 64 bits, two's
    complement) in Spark and PostgreSQL."""
    if dialect == "duckdb":
        return _dtype(_UBIGINT)
    return _dtype(_BIGINT)


@dataclass(frozen=True)
class ColumnLineage:
    """The lineage of one output column: base ``sources`` as ``(table, column)`` pairs and the
    data ``categories`` they carry (explicit flows), and the ``control_sources`` /
    ``control_categories`` that decided which rows exist and in which order (implicit flows)."""

    name: str
    sources: tuple[tuple[str, str], ...]
    categories: tuple[str, ...]
    control_sources: tuple[tuple[str, str], ...] = ()
    control_categories: tuple[str, ...] = ()


@dataclass(frozen=True)
class OutputColumn:
    """One output column of a rewritten query: its label column, lineage (explicit ``sources`` /
    ``categories``; implicit ``control_sources`` / ``control_categories``), and the masks applied
    (strategy -> forbidden origins bitmask). ``derived``: the value is computed, not a bare
    column, so every mask on it is ``nullify``."""

    name: str
    origins_column: str
    sources: tuple[tuple[str, str], ...]
    categories: tuple[str, ...]
    masks: tuple[tuple[str, int], ...] = ()
    control_sources: tuple[tuple[str, str], ...] = ()
    control_categories: tuple[str, ...] = ()
    #: not a bare protected column passed through (an expression, aggregate, window, literal):
    #: its masks are all ``nullify`` (:meth:`~provguard.sqlgen.verdict.ColumnVerdict.nullified`)
    derived: bool = False
    #: the strategies the rules named (``hash``, ``redact``, ``placeholder``) that became
    #: ``nullify`` because the output is derived; empty when none did
    nullified_from: tuple[str, ...] = ()

    def mask_note(self) -> str | None:
        """Why a derived output is nullified instead of masked as its rules say (None when no
        strategy was replaced), e.g. ``handle_lower: nullified, not hashed (derived from a
        masked column: ...)``."""
        if not self.nullified_from:
            return None
        verbs = {"hash": "hashed", "redact": "redacted", "placeholder": "withheld"}
        named = "/".join(verbs[s] for s in self.nullified_from)
        return (
            f"{self.name}: nullified, not {named} (derived from a masked column: hash, redact and"
            " placeholder apply only to a bare column; on a computed value, even CAST, TRIM or"
            " LOWER, they would leak or match it)"
        )


@dataclass(frozen=True)
class ControlFilter:
    """A row filter added because a masked (origin, category) was used in control position:
    rows (or groups) whose control label meets ``mask`` are dropped before ``clause`` decides."""

    clause: str
    categories: tuple[str, ...]
    mask: int


@dataclass(frozen=True)
class Rewritten:
    """A rewritten statement: ``sql`` in ``dialect``, its ``expression``, the output columns and,
    for ``CREATE TABLE AS``, the ``create_table`` name and the derived spec ``created_spec``.
    ``filtered``: table -> forbidden row-origins mask filtered at the scan; ``control_filters``:
    the filters added for masked values in control position (implicit flows)."""

    sql: str
    dialect: str
    expression: exp.Expr
    columns: tuple[OutputColumn, ...]
    create_table: str | None = None
    created_spec: TableSpec | None = None
    filtered: dict[str, int] = field(default_factory=dict)
    #: the SELECT alone (for ``CREATE TABLE AS``: the query that fills the table)
    query_sql: str = ""
    control_filters: tuple[ControlFilter, ...] = ()
    #: ``CREATE OR REPLACE TABLE`` / ``CREATE TABLE IF NOT EXISTS`` (the store decides whether it
    #: can honour them: :meth:`provguard.dataplane.LabelledStore.query`)
    replace: bool = False
    if_not_exists: bool = False
    #: the actions the policy checked every value under (``use``, the declared one, and
    #: ``store`` for ``CREATE TABLE AS``; :attr:`QueryPolicy.actions`); empty without a policy
    actions: tuple[str, ...] = ()
    #: how the DuckDB engine runs a ``SELECT`` whose rows are returned: SQL without the
    #: per-row constant label bits, label normalisation and masks, plus a post-fetch step per
    #: output (:mod:`provguard.sqlgen.plan`); None for ``CREATE TABLE AS``, other dialects, and
    #: when it would be :attr:`sql` itself
    plan: ExecutionPlan | None = None
    #: controller isolation: table -> the app whose rows only were read (the row filter
    #: ``<controller_column> = '<app>'`` injected at each scan of a table with a
    #: ``controller_column``); empty without a policy
    controller_filters: dict[str, str] = field(default_factory=dict)

    @property
    def label_columns(self) -> tuple[str, ...]:
        """Every label column of the result: each output's ``c__origins`` and, for ``CREATE
        TABLE AS``, the row label ``__row__origins`` (uint64 bitmasks)."""
        names = tuple(c.origins_column for c in self.columns)
        return (*names, ROW_LABEL) if self.created_spec is not None else names


@dataclass
class _Out:
    name: str
    origins: exp.Expr | None
    categories: frozenset[str]
    sources: frozenset[tuple[str, str]]
    ctrl_categories: frozenset[str] = frozenset()
    ctrl_sources: frozenset[tuple[str, str]] = frozenset()
    #: the label without outer (correlated) references, and those references by key
    local: exp.Expr | None = None
    outer: dict[str, exp.Expr] = field(default_factory=dict)
    #: the label when it is the same known constant on every row (no per-row part)
    constant: int | None = None
    #: the value is a bare data column of a base table, passed through unchanged (aliases,
    #: CTEs, derived tables, UNION branches that are all bare)
    bare: bool = False


@dataclass
class _Acc:
    """Label pieces of an expression: dynamic ``parts`` (keyed, deduplicated), a constant mask,
    explicit categories/sources and inherited control categories/sources."""

    parts: dict[str, exp.Expr] = field(default_factory=dict)
    const: int = 0
    cats: set[str] = field(default_factory=set)
    srcs: set[tuple[str, str]] = field(default_factory=set)
    ccats: set[str] = field(default_factory=set)
    csrcs: set[tuple[str, str]] = field(default_factory=set)

    def add(self, other: _Acc, *, as_control: bool = False) -> None:
        for k, p in other.parts.items():
            self.parts.setdefault(k, p)
        self.const |= other.const
        if as_control:
            self.ccats |= other.cats
            self.csrcs |= other.srcs
        else:
            self.cats |= other.cats
            self.srcs |= other.srcs
        self.ccats |= other.ccats
        self.csrcs |= other.csrcs


def _or(parts: Iterable[exp.Expr]) -> exp.Expr | None:
    out: exp.Expr | None = None
    for p in parts:
        out = p if out is None else exp.BitwiseOr(this=out, expression=p)
    return out


class _Labeller:
    """Adds companion label columns to every derived scope, enforces the policy on control
    positions (implicit flows) and returns the root's outputs."""

    def __init__(
        self,
        schema: SchemaRegistry,
        registry: OriginRegistry,
        dialect: str,
        policy: QueryPolicy | None = None,
    ) -> None:
        self.schema = schema
        self.registry = registry
        self.dialect = dialect
        self.policy = policy
        self.ltype = label_type(dialect)
        self.outs: dict[int, list[_Out]] = {}
        self.aggregate: dict[int, bool] = {}
        self.base_tables: list[tuple[exp.Table, str]] = []
        self.filters: list[ControlFilter] = []
        self.unknown = 1 << registry.bit(UNKNOWN)
        self._keys = 0
        #: the row label of each SELECT / set operation: what decided which rows it returns
        #: (its control positions and its sources' row labels); a set operation's is per branch
        self.rows: dict[int, _Out] = {}
        #: base tables with a row label (``RowLabelSpec``) hit by a masked deny: id of the table
        #: node -> forbidden origins, filtered at the scan
        self.scan_masks: dict[int, int] = {}
        self._row_emitted: set[int] = set()
        #: the Column nodes whose lineage was computed: every column of a scope must be one
        self.visited: set[int] = set()
        #: while the outputs of a scope are labelled: its per-row control label parts, which a
        #: window function ORs over its partition (the rows it aggregates exist because of them)
        self._window_ctrl: dict[str, exp.Expr] = {}

    # ---------------------------------------------------------------- literals and leaves
    def lit(self, mask: int) -> exp.Expr:
        if self.dialect != "duckdb" and mask >= 1 << 63:
            mask -= 1 << 64
        return exp.Cast(this=exp.Literal.number(mask), to=_dtype(self.ltype))

    def zero(self) -> exp.Expr:
        return self.lit(0)

    def num(self, mask: int) -> exp.Expr:
        """``mask`` as an untyped literal where every back-end widens it to the label type (an
        int32 next to a label), else as a typed one (:meth:`lit`): fewer nodes to emit."""
        if 0 <= mask < 1 << 31:
            return exp.Literal.number(mask)
        return self.lit(mask)

    def coalesce(self, e: exp.Expr) -> exp.Expr:
        return exp.Coalesce(this=e, expressions=[self.num(0)])

    def leaf(self, ref: exp.Expr) -> exp.Expr:
        """A stored label as read: NULL or 0 (no recorded origin) become ``unknown``, so that
        OR-ing it with other labels cannot hide that a value's origin is unknown."""
        return exp.Coalesce(
            this=exp.Nullif(this=ref, expression=self.num(0)), expressions=[self.num(self.unknown)]
        )

    def constant_mask(self, names: Iterable[str]) -> int:
        try:
            return sum(1 << self.registry.bit(n) for n in set(names))
        except InputError as exc:
            raise QueryError(f"schema label: {exc.message}") from None

    def fresh_key(self, kind: str) -> str:
        self._keys += 1
        return f"#{kind}{self._keys}"

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
                    _Out(
                        a.name,
                        None,
                        a.categories | b.categories,
                        a.sources | b.sources,
                        a.ctrl_categories | b.ctrl_categories,
                        a.ctrl_sources | b.ctrl_sources,
                        bare=a.bare and b.bare,
                    )
                    for a, b in zip(left, right, strict=True)
                ]
                lr = self.rows[id(scope.set_operation_scopes[0].expression)]
                rr = self.rows[id(scope.set_operation_scopes[1].expression)]
                same = lr.constant is not None and lr.constant == rr.constant
                self.rows[id(e)] = _Out(
                    ROW_NAME,
                    None,
                    lr.categories | rr.categories,
                    lr.sources | rr.sources,
                    lr.ctrl_categories | rr.ctrl_categories,
                    lr.ctrl_sources | rr.ctrl_sources,
                    constant=lr.constant if same else None,
                )
                continue
            assert isinstance(e, exp.Select)
            outs, row = self._select(scope)
            self.outs[id(e)] = outs
            self.rows[id(e)] = row
            if id(e) in companion:
                for o in outs:
                    assert o.origins is not None
                    e.select(_alias(o.origins.copy(), o.name + ORIGINS_SUFFIX), copy=False)
        return self.outs[id(root)]

    def _emit_row(self, scope: Scope) -> None:
        """Add the row-label companion ``__row__origins`` to a derived table / CTE scope (to
        every branch of a set operation, in the same position), once."""
        e = scope.expression
        if id(e) in self._row_emitted:
            return
        self._row_emitted.add(id(e))
        if isinstance(e, exp.SetOperation):
            for child in scope.set_operation_scopes:
                self._emit_row(child)
            return
        assert isinstance(e, exp.Select)
        row = self.rows[id(e)]
        assert row.origins is not None
        e.select(_alias(row.origins.copy(), ROW_LABEL), copy=False)

    def _source_rows(self, scope: Scope, sel: exp.Select) -> _Acc:
        """The row labels of the sources this SELECT reads (``FROM`` and every ``JOIN``): a
        table with a :class:`RowLabelSpec` (made by ``CREATE TABLE AS``) is checked like a
        control position (refused, or its forbidden rows dropped at the scan) and its per-row
        label read; a derived table / CTE passes its own row label on (checked inside it)."""
        acc = _Acc()
        from_ = sel.args.get("from") or sel.args.get("from_")
        nodes = [from_.this] if from_ is not None else []
        nodes += [j.this for j in sel.args.get("joins") or []]
        for node in nodes:
            name = node.alias_or_name
            src = scope.sources.get(name)
            if isinstance(src, exp.Table):
                spec = self.schema.table(src.name)
                rl = spec.row_label
                if rl is None:
                    continue
                one = _Acc()
                key = f"{name}.{rl.origins_column}"
                one.parts[key] = self.coalesce(exp.column(rl.origins_column, table=name))
                one.cats = set(rl.categories)
                one.srcs = set(rl.source_pairs())
                self._enforce_rows(src, rl, one)
                acc.add(one)
            elif isinstance(src, Scope):
                row = self.rows.get(id(src.expression))
                if row is None:
                    continue
                acc.cats |= row.categories | row.ctrl_categories
                acc.srcs |= row.sources | row.ctrl_sources
                if row.constant is not None:
                    acc.const |= row.constant
                    continue
                self._emit_row(src)
                acc.parts.setdefault(
                    f"{name}.{ROW_LABEL}", self.coalesce(exp.column(ROW_LABEL, table=name))
                )
        return acc

    def _enforce_rows(self, table: exp.Table, rl: RowLabelSpec, acc: _Acc) -> None:
        """The policy on a table's row label: the rows exist because of ``rl.categories``
        (implicit flow recorded when the table was made). A deny without a mask refuses the
        query (PG162, clause ``FROM <table>``); one with a mask drops the rows whose row label
        it hits, at the scan (before anything else reads them)."""
        if self.policy is None or not acc.cats:
            return
        verdict = self.policy.verdict(acc.cats)
        clause = f"FROM {table.name}"
        refused = {r: m for r, m in verdict.refused.items() if m}
        if refused:
            raise self._refusal(
                f"{clause} (its row label)",
                acc,
                refused,
                f" with no mask obligation: the rows of '{table.name}' exist because of these"
                " values (a WHERE / JOIN / GROUP BY of the query that created it), so even"
                " counting them is an implicit flow; query refused",
                clause_name=clause,
            )
        forbidden = _union(verdict.masks.values())
        if forbidden:
            self.scan_masks[id(table)] = self.scan_masks.get(id(table), 0) | forbidden
            self.filters.append(ControlFilter(clause, tuple(sorted(acc.cats)), forbidden))

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
            if e.args.get("windows"):
                raise LineageError(
                    "named windows (WINDOW w AS (...)) have no lineage support: write the"
                    " window inline, OVER (PARTITION BY ... ORDER BY ...)"
                )
            if e.args.get("distinct"):
                raise LineageError("SELECT DISTINCT over an aggregate: wrap it in a subquery")
            for join in e.args.get("joins") or []:
                if (join.method or "").upper() == "NATURAL":
                    raise LineageError("NATURAL JOIN: name the join columns with USING or ON")
                if (join.args.get("kind") or "").upper() in ("SEMI", "ANTI"):
                    raise LineageError(
                        f"{join.args['kind'].upper()} JOIN has no lineage support (the right"
                        " side's labels cannot be returned with the row): write WHERE EXISTS /"
                        " NOT EXISTS (SELECT ...)"
                    )
                if join.args.get("using"):
                    raise LineageError("internal: JOIN USING was not qualified into ON")
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

    def _select(self, scope: Scope) -> tuple[list[_Out], _Out]:
        """The outputs of one SELECT scope and its row label (a virtual output that reads no
        column: everything that decided which rows exist)."""
        sel = scope.expression
        assert isinstance(sel, exp.Select)
        own = _own_columns(sel)
        agg = self.is_aggregate(sel)
        grouped = agg and _grouped(sel)
        projections: list[tuple[str, exp.Expr]] = []
        seen: set[str] = set()
        for proj in sel.expressions:
            name = proj.alias_or_name
            if name.endswith(ORIGINS_SUFFIX) or name == ROW_NAME:
                raise QueryError(f"output name '{name}' is reserved for provenance labels")
            if name.lower().startswith("_pg_"):
                # the rewrite's own hidden columns (_pg_q, _pg_mask<i>, _pg_hash<i>,
                # _pg_packed<k>) would collide with it (fresh user 13, M1)
                raise QueryError(f"output name '{name}': the prefix '_pg_' is reserved")
            if name in seen:
                raise QueryError(f"duplicate output column '{name}'; give each a distinct alias")
            seen.add(name)
            projections.append((name, proj.this if isinstance(proj, exp.Alias) else proj))
        by_alias = dict(projections)

        # filters are attached after every clause is labelled (they read origins columns)
        guards: list[tuple[str, exp.Join | None, exp.Expr]] = []
        # GROUP BY keys shape the output rows: their labels enter every output of the group
        keys_acc = _Acc()
        if agg and sel.args.get("group"):
            group = sel.args["group"]
            keys: list[exp.Expr] = list(group.expressions)
            if group.args.get("all"):
                keys = [p for p in sel.expressions if not _has_agg(p)]
            projected = [inner for _, inner in projections]
            for g in keys:
                if isinstance(g, exp.Literal) and g.is_int:
                    idx = int(g.name) - 1
                    if not 0 <= idx < len(sel.expressions):
                        raise QueryError(f"GROUP BY position {g.name} is out of range")
                    g = sel.expressions[idx]
                    g = g.this if isinstance(g, exp.Alias) else g
                acc = self._parts(g, scope, in_agg=True)
                # a key returned as an output is masked there; a key that is not returned is pure
                # control and is enforced like WHERE
                returned = any(g == inner for inner in projected)
                acc = self._enforce(
                    "GROUP BY",
                    g,
                    acc,
                    scope,
                    sel,
                    level="row",
                    agg=True,
                    guards=guards,
                    refuse_only=returned,
                )
                keys_acc.add(acc)

        # control sites: they decide which rows exist and in which order; the sources' row
        # labels first (a table made by CREATE TABLE AS, a derived table with a WHERE...)
        ctrl = self._source_rows(scope, sel)
        where = sel.args.get("where")
        if where is not None:
            acc = self._parts(where.this, scope, in_agg=agg)
            ctrl.add(
                self._enforce(
                    "WHERE", where.this, acc, scope, sel, level="row", agg=agg, guards=guards
                )
            )
        for join in sel.args.get("joins") or []:
            on = join.args.get("on")
            if on is None:
                continue
            acc = self._parts(on, scope, in_agg=agg)
            ctrl.add(
                self._enforce(
                    "JOIN ... ON",
                    on,
                    acc,
                    scope,
                    sel,
                    level="row",
                    agg=agg,
                    guards=guards,
                    join=join,
                )
            )
        # a window aggregates the rows of its partition that FROM / WHERE / ON let through: their
        # control labels enter its value (QUALIFY and ORDER BY windows, outputs)
        self._window_ctrl = {k: p for k, p in ctrl.parts.items() if not k.startswith("^")}
        having = sel.args.get("having")
        if having is not None:
            acc = self._parts(having.this, scope, in_agg=True)
            ctrl.add(
                self._enforce(
                    "HAVING", having.this, acc, scope, sel, level="group", agg=agg, guards=guards
                )
            )
        qual = sel.args.get("qualify")
        if qual is not None:
            if agg:
                raise LineageError("QUALIFY in an aggregate query: use a subquery")
            acc = self._parts(qual.this, scope, in_agg=False)
            ctrl.add(
                self._enforce(
                    "QUALIFY", qual.this, acc, scope, sel, level="qualify", agg=agg, guards=guards
                )
            )
        order = sel.args.get("order")
        for ordered in order.expressions if order is not None else []:
            e = ordered.this
            if isinstance(e, exp.Column) and not e.table and e.name in by_alias:
                self.visited.add(id(e))
                e = by_alias[e.name]
            acc = self._parts(e, scope, in_agg=agg)
            level = "group" if agg else ("qualify" if e.find(exp.Window) else "row")
            ctrl.add(
                self._enforce("ORDER BY", e, acc, scope, sel, level=level, agg=agg, guards=guards)
            )

        # LIMIT / OFFSET computed from data decide how many rows come back: one value for the
        # whole query, so a forbidden origin there can be neither masked nor filtered per row
        for key in ("limit", "offset"):
            node = sel.args.get(key)
            expr = node.args.get("expression") if node is not None else None
            if expr is None or not (expr.find(exp.Column) or expr.find(exp.Select)):
                continue
            acc = self._parts(expr, scope, in_agg=False)
            self._refuse_scalar(key.upper(), acc)
            ctrl.add(acc)

        for level, join, guard in guards:
            if join is not None:
                join.set("on", exp.and_(join.args["on"], guard, copy=False))
            elif level == "row":
                sel.where(guard, copy=False)
            elif level == "group":
                sel.having(guard, copy=False)
            else:
                sel.qualify(guard, copy=False)

        outs: list[_Out] = []
        # the row label: a virtual non-aggregate output reading no column
        for name, inner in [*projections, (ROW_NAME, exp.Null())]:
            acc = self._parts(inner, scope, in_agg=agg)
            if agg and _has_agg(inner):
                acc.add(keys_acc)
            else:
                acc.add(keys_acc, as_control=True)
            acc.add(ctrl, as_control=True)
            # outer references (correlated subqueries) are constant per evaluation: kept out
            # of BIT_OR, and lifted out of the subquery by _subquery (Spark needs both)
            local = [p for k, p in acc.parts.items() if not k.startswith("^")]
            outer = {k[1:]: p for k, p in acc.parts.items() if k.startswith("^")}
            if agg:
                o = self.group_label(local, acc.const, grouped)
            else:
                o = self.combine(local, acc.const)
            full = o
            if outer:
                full = exp.BitwiseOr(this=o, expression=self.combine(list(outer.values()), 0))
            constant = None
            if not local and not outer and (not agg or grouped):
                constant = acc.const
            outs.append(
                _Out(
                    name,
                    full,
                    frozenset(acc.cats),
                    frozenset(acc.srcs),
                    frozenset(acc.ccats),
                    frozenset(acc.csrcs),
                    o,
                    outer,
                    constant,
                    self._bare(inner, scope),
                )
            )
        self._window_ctrl = {}
        row = outs.pop()
        # defence in depth: a column in a clause the labeller does not read would be unlabelled
        for col in own:
            if id(col) not in self.visited:
                raise LineageError(
                    f"column '{col.sql()}' is in a clause without lineage support;"
                    " move it into WHERE / ON / GROUP BY / HAVING / QUALIFY / ORDER BY"
                )
        return outs, row

    def _bare(self, node: exp.Expr, scope: Scope) -> bool:
        """True when ``node`` is a bare column of this scope's sources that is itself a base
        table's data column or a bare output of a derived scope (the value passes unchanged)."""
        if not isinstance(node, exp.Column) or isinstance(node.this, exp.Star):
            return False
        src = scope.sources.get(node.table) if node.table else None
        if isinstance(src, exp.Table):
            cs = self.schema.table(src.name).columns.get(node.name)
            return cs is not None and not cs.derived
        if isinstance(src, Scope):
            for out in self.outs.get(id(src.expression), []):
                if out.name == node.name:
                    return out.bare
        return False  # an outer (correlated) reference or an unbound name: not a pass-through

    def _enforce(
        self,
        clause: str,
        node: exp.Expr,
        acc: _Acc,
        scope: Scope,
        sel: exp.Select,
        *,
        level: str,
        agg: bool,
        guards: list[tuple[str, exp.Join | None, exp.Expr]],
        join: exp.Join | None = None,
        refuse_only: bool = False,
    ) -> _Acc:
        """The policy on one control position (implicit flow). A deny without a mask obligation
        refuses the query; a deny with one drops the rows (``level`` row/qualify) or groups
        (``group``) whose control label meets the forbidden mask, before ``clause`` decides."""
        if self.policy is None or not acc.cats:
            return acc
        verdict = self.policy.verdict(acc.cats)
        refused = {r: m for r, m in verdict.refused.items() if m}
        if refused:
            raise self._refusal(
                clause,
                acc,
                refused,
                " with no mask obligation: a column that decides which rows are returned cannot"
                " be masked (implicit flow); query refused",
            )
        forbidden = _union(verdict.masks.values())
        if refuse_only or not forbidden:
            return acc
        subs = _direct_subqueries(node)
        if subs:
            for sub in subs:
                self._guard_subquery(sub, forbidden, clause)
            acc = self._parts(node, scope, in_agg=agg and level != "row")
        # a guarded subquery's rows all pass (label & forbidden) = 0, and so does their BIT_OR
        checked = [p for k, p in acc.parts.items() if not k.startswith("#s")]
        if not checked and not acc.const & forbidden:
            return acc
        if level == "group":
            label = self.group_label(checked, acc.const, _grouped(sel))
        else:
            label = self.combine(checked, acc.const)
        # leaves are normalised (0 -> unknown), so the label is never 0 here
        guard = exp.not_(exp.Paren(this=_hit(label, forbidden, self, zero_unknown=False)))
        guards.append((level, join, guard))
        self.filters.append(ControlFilter(clause, tuple(sorted(acc.cats)), forbidden))
        return acc

    def _refuse_scalar(self, clause: str, acc: _Acc) -> None:
        """A clause whose value is one scalar for the whole query (LIMIT, OFFSET): any deny on
        its inputs, masked or not, refuses the query (PG162)."""
        if self.policy is None or not acc.cats:
            return
        verdict = self.policy.verdict(acc.cats)
        denied = {r: m for r, m in (*verdict.refused.items(), *verdict.mask_rules.items()) if m}
        if denied:
            raise self._refusal(
                clause,
                acc,
                denied,
                ": a row count computed from data is an implicit flow that can be neither masked"
                " nor filtered row by row; query refused",
            )

    def _refusal(
        self,
        clause: str,
        acc: _Acc,
        denied: dict[str, int],
        why: str,
        *,
        clause_name: str | None = None,
    ) -> QueryRefused:
        """PG162 naming the clause, its columns and categories, the rules and origins."""
        origins = sorted(self.registry.names_of(_union(denied.values())))
        cols = ", ".join(sorted(f"{t}.{c}" for t, c in acc.srcs))
        return QueryRefused(
            f"{clause} uses {cols} ({', '.join(sorted(acc.cats))}) and rule(s)"
            f" {', '.join(sorted(denied))} deny it for origin(s) {', '.join(origins)}{why}",
            column=cols,
            rules=tuple(sorted(denied)),
            clause=clause_name or clause,
        )

    def _guard_subquery(self, sub: exp.Select, forbidden: int, clause: str) -> None:
        outs = self.outs.get(id(sub))
        if outs is None:
            raise LineageError(f"subquery without computed lineage: {sub.sql()[:80]}")
        label = _or(o.origins.copy() for o in outs if o.origins is not None)
        if label is None:
            return
        guard = exp.not_(exp.Paren(this=_hit(label, forbidden, self, zero_unknown=False)))
        if self.is_aggregate(sub):
            sub.having(guard, copy=False)
        elif label.find(exp.Window) is not None:
            raise LineageError(
                f"a subquery in {clause} returns a window function over masked data:"
                " compute it in a CTE"
            )
        else:
            sub.where(guard, copy=False)

    def scan_filters(self, table: exp.Table) -> tuple[list[exp.Expr], int]:
        """The row filters of one scan of a base table (``table``, a node of
        :attr:`base_tables`) under the policy, as conditions on the bare table name: controller
        isolation (``<controller_column> = '<app>'``, PIPL Art. 23), the row rule (a
        :class:`~provguard.sqlgen.schema.RowSpec`: rows whose row origins a deny on its
        category hits; a 0/NULL row origin is ``unknown``) and the row-label filter (a
        :class:`~provguard.sqlgen.schema.RowLabelSpec`: rows whose row label meets the
        :attr:`scan_masks` of this scan; 0 means no data decided the row, never ``unknown``).
        Returns (conditions, the origins mask the last two filter on, 0 when neither applies);
        ``([], 0)`` without a policy. Placed by :func:`_filter_scan`, on the query's scans and
        on the scans of each label subquery (:meth:`_subquery`)."""
        if self.policy is None:
            return [], 0
        spec = self.schema.table(table.name)
        conds: list[exp.Expr] = []
        dropped = 0
        if spec.controller_column is not None:
            # controller isolation: app X reads only the rows X collected (a constant label, so
            # the filter adds no label and no per-row cost beyond itself)
            conds.append(
                exp.EQ(
                    this=exp.column(spec.controller_column, table=table.name),
                    expression=exp.Literal.string(self.policy.app),
                )
            )
        if spec.rows is not None:
            denied = self.policy.verdict([spec.rows.category]).denied
            if denied:
                dropped |= denied
                row_origins = self.coalesce(exp.column(spec.rows.origins_column, table=table.name))
                conds.append(exp.not_(exp.Paren(this=_hit(row_origins, denied, self))))
        scan_mask = self.scan_masks.get(id(table), 0)
        if scan_mask and spec.row_label is not None:
            dropped |= scan_mask
            made_by = self.coalesce(exp.column(spec.row_label.origins_column, table=table.name))
            hit = _hit(made_by, scan_mask, self, zero_unknown=False)
            conds.append(exp.not_(exp.Paren(this=hit)))
        return conds, dropped

    def combine(self, parts: list[exp.Expr], const: int) -> exp.Expr:
        """OR of dynamic ``parts`` and the constant mask ``const`` (folded into one literal)."""
        if not parts:
            return self.lit(const)  # a constant label keeps the label type
        out = _or(p.copy() for p in parts)
        assert out is not None
        return exp.BitwiseOr(this=out, expression=self.num(const)) if const else out

    def group_label(self, parts: list[exp.Expr], const: int, grouped: bool) -> exp.Expr:
        """The label of an aggregate: ``BIT_OR`` over the group of the row labels (``parts`` OR
        ``const``), 0 for an empty input. With ``grouped`` (plain ``GROUP BY`` keys: every group
        has a row) the constant is OR-ed outside the aggregate and a constant-only label is the
        literal itself, instead of a ``BIT_OR`` of a constant over every row (same values: row
        labels are never NULL, so ``BIT_OR(x | c) = BIT_OR(x) | c`` on a non-empty group)."""
        if not grouped:
            return self.coalesce(_bit_or(self.combine(parts, const)))
        if not parts:
            return self.lit(const)
        dynamic = self.coalesce(_bit_or(self.combine(parts, 0)))
        return exp.BitwiseOr(this=dynamic, expression=self.num(const)) if const else dynamic

    def _parts(self, node: exp.Expr, scope: Scope, *, in_agg: bool) -> _Acc:
        acc = _Acc()
        stack = [node]
        while stack:
            n = stack.pop()
            if isinstance(n, exp.Column):
                if isinstance(n.this, exp.Star):
                    continue
                self._column(n, scope, acc)
            elif isinstance(n, exp.Window):
                if in_agg:
                    raise LineageError(
                        "window function in an aggregate query: compute the aggregate in a"
                        " subquery and apply the window outside it"
                    )
                self._window(n, scope, acc)
            elif isinstance(n, (exp.Select, exp.SetOperation)):
                self._subquery(n, scope, acc)
            else:
                stack.extend(reversed(list(n.iter_expressions())))
        return acc

    def _column(self, col: exp.Column, scope: Scope, acc: _Acc) -> None:
        table = col.table
        if not table:
            raise LineageError(f"column '{col.sql()}' could not be bound to a source")
        s: Scope | None = scope
        while s is not None and table not in s.sources:
            s = s.parent
        if s is None:
            raise LineageError(f"column '{col.sql()}' refers to an unknown source '{table}'")
        src = s.sources[table]
        self.visited.add(id(col))
        if isinstance(src, exp.Table):
            spec = self.schema.table(src.name)
            cs = spec.columns.get(col.name)
            if cs is None:
                raise QueryError(
                    f"column '{col.name}' of table '{src.name}' is not a labelled data column"
                )
            acc.cats.update(cs.categories)
            acc.srcs.add((src.name, col.name))
            if cs.origins_column is not None:
                key = ("" if s is scope else "^") + f"{table}.{cs.origins_column}"
                if key not in acc.parts:
                    ref = exp.column(cs.origins_column, table=table, quoted=col.this.quoted)
                    # labels normalised at load hold no 0/NULL: read as they are, unless an
                    # outer join of the scope reading them pads rows with NULL
                    plain = spec.labels_normalised and not pads_nulls(s.expression)
                    acc.parts[key] = ref if plain else self.leaf(ref)
                return
            names = cs.origins if cs.origins is not None else (UNKNOWN,)
            acc.const |= self.constant_mask(names)
            return
        assert isinstance(src, Scope)
        for out in self.outs.get(id(src.expression), []):
            if out.name == col.name:
                key = ("" if s is scope else "^") + f"{table}.{col.name}"
                if key not in acc.parts:
                    ref = exp.column(col.name + ORIGINS_SUFFIX, table=table, quoted=col.this.quoted)
                    acc.parts[key] = self.leaf(ref)
                acc.cats |= out.categories
                acc.srcs |= out.sources
                acc.ccats |= out.ctrl_categories
                acc.csrcs |= out.ctrl_sources
                return
        raise LineageError(f"column '{col.sql()}' has no computed lineage in its source")

    def _window(self, w: exp.Window, scope: Scope, acc: _Acc) -> None:
        pieces: list[exp.Expr] = [w.this]
        pieces.extend(w.args.get("partition_by") or [])
        if w.args.get("order") is not None:
            pieces.append(w.args["order"])
        inner = _Acc()
        for p in pieces:
            inner.add(self._parts(p, scope, in_agg=False))
        for key, part in self._window_ctrl.items():  # why the partition's rows exist
            inner.parts.setdefault(key, part)
        acc.cats |= inner.cats
        acc.srcs |= inner.srcs
        acc.ccats |= inner.ccats
        acc.csrcs |= inner.csrcs
        if not inner.parts:  # constant labels only: the same on every row
            acc.const |= inner.const
            return
        window = exp.Window(
            this=_bit_or(self.combine(list(inner.parts.values()), inner.const)),
            partition_by=[p.copy() for p in w.args.get("partition_by") or []],
        )
        acc.parts[self.fresh_key("w")] = self.coalesce(window)

    def _subquery(self, node: exp.Select | exp.SetOperation, scope: Scope, acc: _Acc) -> None:
        if not isinstance(node, exp.Select):
            raise LineageError("a set operation inside a subquery expression has no lineage")
        outs = self.outs.get(id(node))
        if outs is None:
            raise LineageError(f"subquery without computed lineage: {node.sql()[:80]}")
        label = (
            _or(
                (o.local if o.local is not None else o.origins).copy()
                for o in outs
                if o.origins is not None
            )
            or self.zero()
        )
        for o in outs:
            for key, part in o.outer.items():
                table = key.split(".", 1)[0]
                mark = "" if table in scope.sources else "^"
                acc.parts.setdefault(mark + key, part.copy())
            acc.cats |= o.categories
            acc.srcs |= o.sources
            acc.ccats |= o.ctrl_categories
            acc.csrcs |= o.ctrl_sources
        copy = node.copy()
        if self.policy is not None:
            # the label subquery reads the rows the subquery itself reads: the same scan filters
            # (controller, row rule, row label; :meth:`scan_filters`) at each scan, placed as in
            # the query. The scans of ``node`` get theirs when the query is assembled; this copy
            # is not among them. Without them, whether ANOTHER app had a matching row, or a row
            # the policy drops for this purpose, showed in a label bit (EXISTS guard: 192 vs 0).
            # The mask guards of the subquery's own control positions are already in ``node``
            # (:meth:`_select` adds them before the enclosing scope is labelled), so in the copy.
            scans = {id(t): alias for t, alias in self.base_tables}
            pairs = list(zip(node.find_all(exp.Table), copy.find_all(exp.Table), strict=True))
            for orig, dup in pairs:
                alias = scans.get(id(orig))
                if alias is not None:
                    _filter_scan(dup, alias, self.scan_filters(orig)[0], self.dialect)
        single_row = self.is_aggregate(node) and not node.args.get("group")
        plain = not any(node.args.get(k) for k in ("limit", "offset", "order", "group"))
        if single_row and plain:
            copy.set("expressions", [_alias(label, "_pg_o")])
            acc.parts[self.fresh_key("s")] = exp.Subquery(this=copy)
            return
        if plain and not self.is_aggregate(node):
            copy.set("expressions", [_alias(self.coalesce(_bit_or(label)), "o")])
            acc.parts[self.fresh_key("s")] = exp.Subquery(this=copy)
            return
        copy.set("expressions", [_alias(label, "o")])
        outer = exp.select(
            _alias(self.coalesce(_bit_or(exp.column("o", table="_pg_s"))), "o")
        ).from_(exp.Subquery(this=copy, alias=exp.TableAlias(this=exp.to_identifier("_pg_s"))))
        acc.parts[self.fresh_key("s")] = exp.Subquery(this=outer)


_TEXT = exp.DataType.build("text")
_UBIGINT = exp.DataType.build("ubigint", dialect="duckdb")
_BIGINT = exp.DataType.build("bigint")
_BLOB = exp.DataType.build("blob", dialect="duckdb")


def _dtype(t: exp.DataType) -> exp.DataType:
    """A new node of the simple (non-nested, unparameterised) type ``t``: cheaper than a deep
    copy."""
    return exp.DataType(this=t.this, nested=False)


def _alias(e: exp.Expr, name: str, quoted: bool | None = None) -> exp.Alias:
    """``e AS name`` built directly (``exp.alias_`` deep-copies and re-parses its argument)."""
    return exp.Alias(this=e, alias=exp.to_identifier(name, quoted=quoted))


def _bit_or(this: exp.Expr) -> exp.Expr:
    return exp.Anonymous(this="BIT_OR", expressions=[this])


def _direct_subqueries(node: exp.Expr) -> list[exp.Select]:
    """The subquery SELECTs directly inside ``node`` (not those nested in them)."""
    found: list[exp.Select] = []
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, exp.Select):
            found.append(n)
            continue
        stack.extend(n.iter_expressions())
    return found


def _own_columns(sel: exp.Select) -> list[exp.Column]:
    """The Column nodes of ``sel``'s own clauses (not those of nested queries)."""
    found: list[exp.Column] = []
    stack = list(sel.iter_expressions())
    while stack:
        n = stack.pop()
        if isinstance(n, (exp.Select, exp.SetOperation)):
            continue
        if isinstance(n, exp.Column):
            found.append(n)
            continue
        stack.extend(n.iter_expressions())
    return found


#: constructs that read columns or values the lineage cannot see (PG161)
_OPAQUE: tuple[tuple[type[exp.Expr], str], ...] = (
    (exp.TableColumn, "a table used as a value (its whole row as a struct)"),
    (exp.Columns, "COLUMNS(...), which selects columns by name pattern"),
    (exp.PositionalColumn, "a positional column reference (#n)"),
    (exp.Placeholder, "a query parameter"),
    (exp.Parameter, "a query parameter"),
    (exp.SessionParameter, "a session parameter"),
)


def _refuse_opaque(query: exp.Expr) -> None:
    """Refuse a query holding a construct from :data:`_OPAQUE`: ``SELECT p FROM profiles p``
    returns every column of the row, ``COLUMNS('hand.*')`` and ``#4`` name columns the
    qualifier never binds (raw handles, hidden origins columns), unlabelled."""
    node = query.find(*(cls for cls, _ in _OPAQUE))
    if node is not None:
        what = next(w for cls, w in _OPAQUE if isinstance(node, cls))
    else:
        node, what = _opaque_star_or_set(query)
        if node is None:
            return
    raise LineageError(
        f"{what} has no lineage support ({node.sql(dialect='duckdb')[:60]}): name the columns"
    )


def _opaque_star_or_set(query: exp.Expr) -> tuple[exp.Expr | None, str]:
    """The first star or set operation whose columns the lineage would misread, with what it
    is. The qualifier expands a bare ``*``/``t.*`` projection; a star left after it is a
    DuckDB star expression (``* LIKE 'handle'``, ``* SIMILAR TO``, ``struct_pack(*)``) that
    picks columns by pattern at run time, so it would be read as a constant (fresh user 10,
    H2); only ``count(*)`` and a star projection (of a table outside the schema, refused
    later) are left. A ``BY NAME`` set operation pairs its branches' columns by
    name where the lineage pairs them by position (H1)."""
    for node in query.find_all(exp.Star, exp.SetOperation):
        if isinstance(node, exp.SetOperation):
            if node.args.get("by_name"):
                return node, f"{node.key.upper()} BY NAME, which pairs columns by name"
            continue
        star = node.parent if isinstance(node.parent, exp.Column) else node
        # a star left as a projection names a table outside the schema: refused later (PG160)
        if isinstance(node.parent, exp.Count) or isinstance(star.parent, exp.Select):
            continue
        return star.parent or star, "a star expression, which selects columns by pattern"
    return None, ""


def _grouped(sel: exp.Select) -> bool:
    """True when ``sel`` groups by plain keys only: every group it returns has at least one row
    (no ``GROUP BY ALL``, ``()``, ``ROLLUP``, ``CUBE`` or ``GROUPING SETS``, whose grand-total
    group may be empty)."""
    group = sel.args.get("group")
    if group is None or not group.expressions:
        return False
    if any(group.args.get(k) for k in ("all", "rollup", "cube", "grouping_sets", "totals")):
        return False
    return not any(
        isinstance(g, (exp.Tuple, exp.Rollup, exp.Cube, exp.GroupingSets))
        for g in group.expressions
    )


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
        sel = exp.select(*[_alias(exp.column(n, table=alias), n) for n in names]).from_(
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


def _hit(
    label: exp.Expr, mask: int, lab: _Labeller, *, zero_unknown: bool = True, fresh: bool = False
) -> exp.Expr:
    """``(label & mask) <> 0`` (or ``label = 0`` when ``unknown`` is in ``mask`` and
    ``zero_unknown``). ``fresh``: ``label`` is a new node owned by the result (not copied)."""

    def use() -> exp.Expr:
        nonlocal fresh
        if fresh:
            fresh = False
            return label
        return label.copy()

    cond: exp.Expr = exp.NEQ(
        this=exp.Paren(this=exp.BitwiseAnd(this=exp.Paren(this=use()), expression=lab.num(mask))),
        expression=lab.num(0),
    )
    if zero_unknown and mask & lab.unknown:  # a label with no recorded origin is unknown
        cond = exp.Or(
            this=cond, expression=exp.EQ(this=exp.Paren(this=use()), expression=lab.num(0))
        )
    return cond


@functools.lru_cache(maxsize=16)
def _pad_literals(key: bytes, dialect: str) -> tuple[str, str]:
    """The HMAC's padded keys as literal text: hex, or for DuckDB BLOB escapes (``\\xNN``)."""
    ipad, opad = pads(key)
    if dialect != "duckdb":
        return ipad, opad

    def escape(hexed: str) -> str:
        return "".join(f"\\x{hexed[i : i + 2]}" for i in range(0, len(hexed), 2))

    return escape(ipad), escape(opad)


def _hmac(value: exp.Expr, key: bytes | None, dialect: str) -> exp.Expr:
    """HMAC-SHA256 of ``CAST(value AS TEXT)`` as lowercase hex, in ``dialect``
    (:mod:`provguard.sqlgen.keyed`)."""
    if key is None:
        raise QueryError(
            "the policy masks with the keyed 'hash' strategy but no key is configured: set"
            f" ${HASH_KEY_ENV} (at least {MIN_KEY_BYTES} bytes) or pass"
            " QueryPolicy(hash_key=...)"
        )
    ipad, opad = _pad_literals(key, dialect)
    text = exp.Cast(this=value.copy(), to=_dtype(_TEXT))

    def f(name: str, *args: exp.Expr) -> exp.Expr:
        return exp.Anonymous(this=name, expressions=list(args))

    s = exp.Literal.string
    if dialect == "duckdb":
        # the padded keys as BLOB literals ('\\xNN' escapes): no per-row UNHEX of constants
        def blob(escaped: str) -> exp.Expr:
            return exp.Cast(this=s(escaped), to=_dtype(_BLOB))

        inner = f("SHA256", exp.DPipe(this=blob(ipad), expression=f("ENCODE", text)))
        return f("SHA256", exp.DPipe(this=blob(opad), expression=f("UNHEX", inner)))
    if dialect == "spark":
        n256 = exp.Literal.number(256)
        inner = f("SHA2", f("CONCAT", f("UNHEX", s(ipad)), f("ENCODE", text, s("UTF-8"))), n256)
        return f("SHA2", f("CONCAT", f("UNHEX", s(opad)), f("UNHEX", inner)), n256)
    inner = f(
        "SHA256",
        exp.DPipe(this=f("DECODE", s(ipad), s("hex")), expression=f("CONVERT_TO", text, s("UTF8"))),
    )
    outer = f("SHA256", exp.DPipe(this=f("DECODE", s(opad), s("hex")), expression=inner))
    return f("ENCODE", outer, s("hex"))


def _branches(
    v: ColumnVerdict, lab: _Labeller, constant: int | None
) -> tuple[dict[str, int], bool]:
    """The mask branches an output's ``CASE`` emits (strategy -> forbidden bits, strongest
    first; empty: the value as it is) and whether the value is returned as text. A label that
    is a known ``constant`` keeps only the strongest strategy it meets, or none."""
    # the output type does not depend on the rows: text whenever a text strategy may apply
    as_text = any(s in v.masks for s in ("placeholder", "redact", "hash"))
    masks = {s: v.masks[s] for s in STRATEGIES if v.masks.get(s, 0)}
    if constant is not None:
        hit = [
            s for s in masks if constant & masks[s] or (constant == 0 and masks[s] & lab.unknown)
        ]
        masks = {hit[0]: masks[hit[0]]} if hit else {}
    return masks, as_text


def _masked(
    name: str,
    v: ColumnVerdict,
    lab: _Labeller,
    policy: QueryPolicy | None,
    constant: int | None = None,
    stored_hash: str | None = None,
) -> exp.Expr:
    """The masked value of output ``name`` of the outer query: a ``CASE`` over its label with
    one branch per strategy of ``v`` (strongest first). A label that is a known ``constant``
    selects its strategy here, with no per-row test. The hash key is read from ``policy`` only
    when a ``hash`` mask is emitted; ``stored_hash`` names an inner column holding the value's
    HMAC under that key (computed at load time), read instead of computing it."""
    value = _ref(name)
    if not v.masks:
        return value
    text = _TEXT
    masks, as_text = _branches(v, lab, constant)
    if not masks:
        return exp.Cast(this=value, to=_dtype(text)) if as_text else value
    label_name = name + ORIGINS_SUFFIX
    case = exp.Case()
    for strategy in STRATEGIES:
        mask = masks.get(strategy, 0)
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
                    this=exp.Cast(this=value.copy(), to=_dtype(text)),
                    start=exp.Literal.number(1),
                    length=exp.Literal.number(1),
                ),
                expression=exp.Literal.string(REDACT_TAIL),
                safe=True,
            )
        elif stored_hash is not None:
            then = _ref(stored_hash)
        else:
            then = _hmac(value, policy.hash_key if policy is not None else None, lab.dialect)
        case = case.when(_hit(_ref(label_name), mask, lab, fresh=True), then, copy=False)
    return case.else_(
        exp.Cast(this=value.copy(), to=_dtype(text)) if as_text else value.copy(), copy=False
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


_MAPPINGS: dict[tuple[int, str], tuple[SchemaRegistry, MappingSchema]] = {}
_PREPARED: OrderedDict[tuple[str, str, int], tuple[SchemaRegistry, exp.Expr, exp.Query]] = (
    OrderedDict()
)
_PREPARED_MAX = 512
_CACHE_LOCK = threading.Lock()


def _mapping(schema: SchemaRegistry, dialect: str) -> MappingSchema:
    """The sqlglot schema of ``schema``'s tables, built once per (registry object, dialect)."""
    key = (id(schema), dialect)
    hit = _MAPPINGS.get(key)
    if hit is not None and hit[0] is schema:
        return hit[1]
    mapping = MappingSchema(
        {name: {col: "TEXT" for col in spec.columns} for name, spec in schema.tables.items()},
        dialect=dialect,
    )
    with _CACHE_LOCK:
        if len(_MAPPINGS) > 64:
            _MAPPINGS.clear()
        _MAPPINGS[key] = (schema, mapping)
    return mapping


def _qualify(query: exp.Expr, schema: SchemaRegistry, dialect: str) -> exp.Expr:
    try:
        return qualify(
            query,
            schema=_mapping(schema, dialect),
            dialect=dialect,
            identify=False,
            validate_qualify_columns=True,
        )
    except (OptimizeError, SqlglotError) as exc:
        raise QueryError(
            f"cannot bind the query's columns: {exc} (origins columns cannot be read directly;"
            " every table must be in the provenance schema)"
        ) from None


def clear_cache(*, schemas: bool = False) -> None:
    """Forget the memoised parsed/qualified queries (benchmarks measure the cold path of a new
    query text with it); with ``schemas`` also the sqlglot schemas built per registry."""
    with _CACHE_LOCK:
        _PREPARED.clear()
        if schemas:
            _MAPPINGS.clear()


def _check_create(statement: exp.Create) -> None:
    """Refuse ``CREATE TABLE AS`` forms the labelled store cannot honour (PG160): the derived
    table is written to the store as ``<name>`` with its label sidecar, so a ``TEMP`` table
    would silently persist (and outlive the session with its data), and a qualified name
    (``main.t``, ``db.s.t``) would be written as plain ``t`` in the store, not where it says;
    other table properties (``UNLOGGED``, storage options...) would be dropped the same way."""
    props = statement.args.get("properties")
    found = list(props.expressions) if props is not None else []
    if any(isinstance(p, exp.TemporaryProperty) for p in found):
        raise QueryError(
            "CREATE TEMP/TEMPORARY TABLE is not supported under a policy: the derived table and"
            " its provenance labels are written to the labelled store, which is persistent, so"
            " a temporary table would outlive the session; use CREATE TABLE and remove it"
            " from the store when done"
        )
    if found:
        raise QueryError(
            "CREATE TABLE properties are not supported under a policy"
            f" ({', '.join(p.sql() for p in found)}): the table is written to the labelled store"
            " as plain data with its labels"
        )
    table = statement.this
    assert isinstance(table, exp.Table)
    qualifier = ".".join(
        part.name for part in (table.args.get("catalog"), table.args.get("db")) if part
    )
    if qualifier:
        raise QueryError(
            f"CREATE TABLE {table.sql()}: a qualified table name ('{qualifier}') is not"
            " supported under a policy; derived tables are written to the labelled store's own"
            f" namespace: write CREATE TABLE {table.name} AS ..."
        )
    # a name of a companion's form would be read as one (and a bad file name blocks the store)
    why = reserved_name(table.name)
    if why is not None:
        raise QueryError(f"CREATE TABLE {table.name}: bad table name ({why})")
    query = statement.expression
    if isinstance(query, exp.Query):
        for out in query.named_selects:
            why = reserved_name(out.lower())
            if why is not None and out != "*":
                raise QueryError(f"CREATE TABLE {table.name}: bad column name '{out}' ({why})")


def _prepare(sql: str, read: str, schema: SchemaRegistry) -> tuple[exp.Expr, exp.Query]:
    """The parsed statement and its qualified query, memoised per (sql, dialect, registry) in a
    small LRU: callers must not mutate them (copy first). Errors as :func:`rewrite`."""
    key = (sql, read, id(schema))
    with _CACHE_LOCK:
        hit = _PREPARED.get(key)
        if hit is not None and hit[0] is schema:
            _PREPARED.move_to_end(key)
            return hit[1], hit[2]
    refuse_statement(sql, read)  # by name (PG160), before any part of it is checked
    statement = _parse(sql, read)
    refuse_statement_tree(statement)
    check_functions(statement)
    check_references(statement)
    if isinstance(statement, exp.Create):
        if (statement.args.get("kind") or "").upper() != "TABLE" or not isinstance(
            statement.expression, exp.Query
        ):
            raise QueryError("only CREATE TABLE ... AS SELECT is supported")
        if not isinstance(statement.this, exp.Table):
            raise QueryError("CREATE TABLE AS with a column list is not supported")
        _check_create(statement)
        query_node: exp.Expr = statement.expression
    elif isinstance(statement, exp.Query):
        query_node = statement
    else:
        raise QueryError(
            "only SELECT and CREATE TABLE AS are allowed under a policy,"
            f" not {statement_kind(statement)}"
        )
    with_ = query_node.args.get("with_") or query_node.args.get("with")
    if with_ is not None and with_.args.get("recursive"):
        raise LineageError("recursive CTEs have no lineage support")
    # a parsed SELECT is qualified in place (nothing else holds it); a CREATE keeps its own
    qualified = _qualify(
        _lift_set_limits(query_node.copy() if query_node is not statement else query_node),
        schema,
        read,
    )
    assert isinstance(qualified, exp.Query)
    _refuse_opaque(qualified)
    with _CACHE_LOCK:
        _PREPARED[key] = (schema, statement, qualified)
        if len(_PREPARED) > _PREPARED_MAX:
            _PREPARED.popitem(last=False)
    return statement, qualified


def _stored_hashes(
    root: exp.Select, projections: list[exp.Expr], schema: SchemaRegistry, lab: _Labeller
) -> dict[int, tuple[str, exp.Expr]]:
    """Outputs of the root scope that are a bare column of a base table with a stored hash
    companion: output index -> (the table's ``hash_key_id``, a reference to the companion).
    Only non-aggregate roots without outer joins (:func:`~provguard.sqlgen.stored.base_outputs`:
    an aggregate or window changes the value; a derived table would have to carry the companion
    through)."""
    found: dict[int, tuple[str, exp.Expr]] = {}
    for i, (alias, table, column) in base_outputs(
        root, projections, lab.is_aggregate(root)
    ).items():
        spec = schema.tables.get(table)
        cs = spec.columns.get(column) if spec is not None else None
        if spec is None or cs is None or cs.hash_column is None or spec.hash_key_id is None:
            continue
        found[i] = (spec.hash_key_id, exp.column(cs.hash_column, table=alias))
    return found


def _stored_mask(
    source: tuple[str, str, str] | None,
    out: _Out,
    verdict: ColumnVerdict,
    schema: SchemaRegistry,
    lab: _Labeller,
    policy: QueryPolicy | None,
) -> exp.Column | None:
    """The stored mask standing for the masked value of output ``out`` (a bare base-table
    column ``source``) under ``verdict``, or None: only on an exact fingerprint match
    (:func:`provguard.sqlgen.stored.stored_mask_for`)."""
    if source is None or policy is None or not verdict.masks or out.constant is not None:
        return None
    if out.origins is None or out.outer:
        return None
    kid: str | None = None
    if "hash" in verdict.masks:
        key = policy.hash_key
        if key is None:
            return None  # the CASE raises the missing-key error
        kid = key_id(key)
    return stored_mask_for(
        schema, source, verdict.masks, lab.unknown, out.origins, kid, PLACEHOLDER, REDACT_TAIL
    )


def _data_dependent(node: exp.Expr | None) -> bool:
    return node is not None and node.find(exp.Column, exp.Select) is not None


def _lift_set_limits(query: exp.Expr) -> exp.Expr:
    """``<set operation> [ORDER BY ...] LIMIT/OFFSET <computed from data>`` as ``SELECT * FROM
    (<set operation>) AS _pg_lN ORDER BY ... LIMIT ...``: sqlglot binds no scope to a set
    operation's LIMIT, so its subquery could not be qualified (PG161); on a SELECT it is an
    ordinary scalar control position (labelled, checked by the policy)."""
    found = [
        node
        for node in query.find_all(exp.SetOperation)
        if any(
            _data_dependent((node.args.get(k) or exp.Null()).args.get("expression"))
            for k in ("limit", "offset")
        )
    ]
    for i, node in enumerate(found):
        alias = f"_pg_l{i + 1}"
        tail = {k: node.args.get(k) for k in ("order", "limit", "offset")}
        for k in tail:
            node.set(k, None)
        with_key = "with_" if "with_" in node.args else "with"
        with_ = node.args.get(with_key)
        if with_ is not None:
            node.set(with_key, None)
        parent = node.parent
        arg_key = node.arg_key
        index = node.index
        sel = exp.Select(expressions=[exp.Star()]).from_(
            exp.Subquery(this=node, alias=exp.TableAlias(this=exp.to_identifier(alias))),
            copy=False,
        )
        order = tail["order"]
        if order is not None:
            for ordered in order.expressions:
                for col in ordered.find_all(exp.Column):
                    col.set("table", exp.to_identifier(alias))
        for k, v in tail.items():
            if v is not None:
                sel.set(k, v)
        if with_ is not None:
            sel.set(with_key, with_)
        if parent is None:
            query = sel
        else:
            assert arg_key is not None
            parent.set(arg_key, sel, index)
    return query


def rewrite(
    sql: str,
    schema: SchemaRegistry,
    policy: QueryPolicy | None = None,
    *,
    dialect: str = "duckdb",
    read: str = "duckdb",
    registry: OriginRegistry | None = None,
    plan_masks: bool = True,
) -> Rewritten:
    """Rewrite ``sql`` (one ``SELECT`` or ``CREATE TABLE ... AS SELECT`` in dialect ``read``) for
    execution in ``dialect`` (``duckdb``, ``spark`` or ``postgres``) under ``policy`` (None:
    labels only). Implicit flows are labelled and enforced (module docstring); the parsed and
    qualified query is memoised per (``sql``, ``read``, ``schema`` object).

    Returns a :class:`Rewritten` whose query outputs each column ``c`` (masked per row as the
    policy says) followed by ``c__origins`` labels (origins bitmasks of ``registry``, default the
    built-in one). Raises :class:`QueryError` (PG160) for bad SQL or unknown tables/columns,
    :class:`LineageError` (PG161) for constructs without lineage, :class:`QueryRefused` (PG162)
    when a deny without a mask obligation applies to an output column or a control position for
    some origin; :class:`QueryError` when a ``hash`` mask is needed and no key is configured.

    For a DuckDB ``SELECT`` the result also carries :attr:`Rewritten.plan`, the execution
    plan the DuckDB engine runs (:mod:`provguard.sqlgen.plan`: constant label bits, label
    normalisation and, with ``plan_masks`` (default), the masks applied to the Arrow result;
    ``plan_masks=False`` keeps every mask in the plan's SQL, for measurement).

    Every value is checked under each action of :attr:`QueryPolicy.actions` (a query is always
    a ``use``, plus the declared action; a ``CREATE TABLE AS`` is also a ``store``): the
    stricter answer wins. Only allowlisted pure functions may be called
    (:mod:`provguard.sqlgen.functions`; others raise :class:`QueryError`).
    """
    if dialect not in DIALECTS:
        raise QueryError(f"unsupported dialect '{dialect}' (one of {', '.join(DIALECTS)})")
    reg = registry or (policy.registry if policy is not None else default_registry())
    statement, prepared = _prepare(sql, read, schema)
    create_name: str | None = None
    if isinstance(statement, exp.Create):
        create_name = statement.this.name
        if policy is not None:  # a CREATE TABLE AS keeps what it reads: a ``store`` as well
            policy = policy.with_actions(STORE_ACTION)
    qualified = prepared.copy()
    root = _normalise(qualified)
    lab = _Labeller(schema, reg, dialect, policy)
    projections = list(root.expressions)
    outs = lab.run(root)
    stored = _stored_hashes(root, projections, schema, lab)
    bare_sources = base_outputs(root, projections, lab.is_aggregate(root))

    columns: list[OutputColumn] = []
    masked: list[exp.Expr] = []
    labels: list[exp.Expr] = []
    hidden: list[exp.Expr] = []
    #: per output, what the execution plan needs: (effective masks, as text, stored hash name)
    # or None when its value is not a CASE over its label (stored mask, no mask)
    arrow: list[tuple[dict[str, int], bool, str | None] | None] = []
    for i, out in enumerate(outs):
        assert out.origins is not None
        root.select(_alias(out.origins.copy(), out.name + ORIGINS_SUFFIX), copy=False)
        verdict = ColumnVerdict()
        downgraded: tuple[str, ...] = ()
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
            if not out.bare:
                # hash / redact / placeholder are defined on a stored value: on an expression
                # they leak it (first character of substr(handle, k); HMAC of 'guess' ||
                # substr(handle, 1, 0) as an equality oracle), so a derived output is nullified
                downgraded = tuple(s for s in STRATEGIES if s != "nullify" and s in verdict.masks)
                verdict = verdict.nullified()
        # a mask stored at load time under this very verdict and label (sqlgen/stored.py)
        stored_mask = _stored_mask(bare_sources.get(i), out, verdict, schema, lab, policy)
        stored_hash: str | None = None
        if stored_mask is not None:
            hidden.append(_alias(stored_mask, f"_pg_mask{i}"))
        elif "hash" in verdict.masks and i in stored and policy is not None:
            table_key, column = stored[i]
            if policy.hash_key is not None and table_key == key_id(policy.hash_key):
                # hashed once at load time under this very key: read it instead of computing
                stored_hash = f"_pg_hash{i}"
                hidden.append(_alias(column, stored_hash))
        value = (
            _ref(f"_pg_mask{i}")
            if stored_mask is not None
            else _masked(out.name, verdict, lab, policy, out.constant, stored_hash)
        )
        masked.append(_alias(value, out.name, quoted=_quote(out.name)))
        labels.append(
            _alias(
                _ref(out.name + ORIGINS_SUFFIX),
                out.name + ORIGINS_SUFFIX,
                quoted=_quote(out.name),
            )
        )
        if stored_mask is not None or not verdict.masks or not plan_masks:
            arrow.append(None)
        else:
            branches, as_text = _branches(verdict, lab, out.constant)
            if "hash" in branches and stored_hash is None:
                arrow.append(None)  # an HMAC computed per row: only in SQL, never in Python
            else:
                arrow.append((branches, as_text, stored_hash))
        columns.append(
            OutputColumn(
                out.name,
                out.name + ORIGINS_SUFFIX,
                tuple(sorted(out.sources)),
                tuple(sorted(out.categories)),
                tuple((s, m) for s, m in verdict.masks.items()),
                tuple(sorted(out.ctrl_sources)),
                tuple(sorted(out.ctrl_categories)),
                not out.bare,
                downgraded,
            )
        )
    for h in hidden:
        root.select(h, copy=False)
    row = lab.rows[id(root)]
    if create_name is not None:
        # the derived table records why each of its rows exists (issue 4, L5)
        assert row.origins is not None
        root.select(_alias(row.origins.copy(), ROW_LABEL), copy=False)
        labels.append(_alias(_ref(ROW_LABEL), ROW_LABEL))
    # masks apply on the final rows only (after ORDER BY / LIMIT of the query)
    with_key = "with_" if "with_" in root.args else "with"
    with_ = root.args.get(with_key)
    if with_ is not None:
        root.set(with_key, None)

    filtered: dict[str, int] = {}
    isolated, mixed = _controller_checks(lab, schema, policy)
    if policy is not None:
        for table, alias in lab.base_tables:
            conds, dropped = lab.scan_filters(table)
            if dropped:
                filtered[table.name] = filtered.get(table.name, 0) | dropped
            _filter_scan(table, alias, conds, dialect)

    generator = Dialect.get_or_raise(dialect)
    plan: ExecutionPlan | None = None
    if dialect == "duckdb" and create_name is None:
        # built from a copy of the finished inner query (row filters included)
        row_level = not (
            lab.is_aggregate(root) or root.args.get("distinct") or root.args.get("group")
        )
        plan_sql, steps = _plan(
            root.copy(), outs, masked, arrow, with_key, with_ and with_.copy(), lab, row_level
        )
        if plan_sql is not None:
            plan = ExecutionPlan(plan_sql, steps, lab.unknown, PLACEHOLDER, REDACT_TAIL)
    outer = _assemble(root, [*masked, *labels], with_key, with_)

    final: exp.Expr = outer
    created: TableSpec | None = None
    if create_name is not None:
        final = statement.copy()
        final.set("expression", outer)
        # a derived column is labelled with everything it depends on, implicit flows included;
        # the row label with what decided which rows exist
        created = TableSpec.derived(
            ((c.name, (*c.categories, *c.control_categories)) for c in columns),
            RowLabelSpec(
                categories=tuple(sorted(row.categories | row.ctrl_categories)),
                sources=tuple(sorted(f"{t}.{c}" for t, c in row.sources | row.ctrl_sources)),
            ),
            computed=[c.name for c in columns if c.derived],
            controller=policy.app if policy is not None else (ANY_CONTROLLER if mixed else None),
        )
    try:
        query_text = generator.generate(outer, copy=True) if created is not None else None
        # sqlglot's Spark/PostgreSQL generators rewrite some nodes in place (QUALIFY becomes a
        # subquery): generate from a copy there so Rewritten.expression stays the query itself
        text = generator.generate(final, copy=dialect != "duckdb")
    except SqlglotError as exc:
        raise LineageError(f"cannot emit the rewritten query in {dialect}: {exc}") from None
    return Rewritten(
        text,
        dialect,
        final,
        tuple(columns),
        create_name,
        created,
        filtered,
        query_text or text,
        tuple(lab.filters),
        bool(isinstance(statement, exp.Create) and statement.args.get("replace")),
        bool(isinstance(statement, exp.Create) and statement.args.get("exists")),
        policy.actions if policy is not None else (),
        plan,
        isolated,
    )


def _filter_scan(
    table: exp.Table, alias: str, conds: list[exp.Expr], dialect: str = "duckdb"
) -> None:
    """Apply a scan's row filters ``conds`` (:meth:`_Labeller.scan_filters`, written against
    the bare table name) to ``table``, read as ``alias``: in its scope where that means the same
    (:func:`_filter_in_scope`: the scope's ``WHERE`` or a ``LEFT JOIN``'s ``ON``), else by
    replacing the table with ``(SELECT * FROM <table> WHERE <conds>) AS <alias>``. No-op for no
    conditions.

    A sample is drawn from the filtered rows (:func:`_sampled_scan`): ``FROM t TABLESAMPLE 5
    ROWS`` gives 5 of the app's rows, not 5 rows of every app of which the filter then drops
    some (fresh user 11: Douyin got 4 of 5). Raises :class:`QueryError` (PG160) where
    ``dialect`` cannot express that."""
    if not conds:
        return
    sel = _scope_of(table)
    scope_sample = sel.args.get("sample") if sel is not None else None
    if table.args.get("sample") is not None or scope_sample is not None:
        _sampled_scan(table, alias, conds, dialect)
        return
    if _filter_in_scope(table, alias, conds):
        return
    table.replace(_filtered(table, alias, conds))


def _filtered(table: exp.Table, alias: str, conds: list[exp.Expr]) -> exp.Subquery:
    """``(SELECT * FROM <table> WHERE <conds>) AS <alias>``."""
    scan = (
        exp.select("*")
        .from_(exp.Table(this=exp.to_identifier(table.name)))
        .where(exp.and_(*conds, copy=False))
    )
    return exp.Subquery(this=scan, alias=exp.TableAlias(this=exp.to_identifier(alias)))


def _scope_of(table: exp.Table) -> exp.Select | None:
    """The ``SELECT`` whose ``FROM`` or ``JOIN`` reads ``table`` (None elsewhere)."""
    holder = table.parent
    sel = holder.parent if isinstance(holder, (exp.From, exp.Join)) else None
    return sel if isinstance(sel, exp.Select) else None


def _sampled_scan(table: exp.Table, alias: str, conds: list[exp.Expr], dialect: str) -> None:
    """Filter a scan that a sample reads, so that the sample is drawn after the row filters.

    Two forms: ``t TABLESAMPLE ...`` samples the table (the sample moves onto the filtered
    derived table: ``(SELECT * FROM t WHERE <conds>) AS t TABLESAMPLE ...``); DuckDB's
    ``USING SAMPLE ...`` of a ``SELECT`` samples its ``FROM`` and joins before ``WHERE``
    (every scan of that scope is wrapped, so the sample reads filtered rows). Per dialect:

    - DuckDB: both forms, any sample method, ``REPEATABLE (seed)`` kept;
    - Spark SQL samples one relation (``(query) TABLESAMPLE (...) AS t``; ``n ROWS`` is a
      limit there, not a random draw): a ``USING SAMPLE`` of a single source moves onto it; of
      a join it is refused, and so is a seed (sqlglot writes ``SEED (n)``, which Spark's
      parser rejects; Spark's own form is ``REPEATABLE (n)``);
    - PostgreSQL samples base tables only (``TABLESAMPLE`` on a derived table is a syntax
      error): refused.

    Raises :class:`QueryError` (PG160) naming the table and the dialect for a refused form."""
    own = table.args.get("sample")
    sel = _scope_of(table)
    scope_sample = sel.args.get("sample") if sel is not None else None
    sample = own if own is not None else scope_sample
    assert sample is not None
    where = f"a sample of {table.name} cannot be drawn after its row filters"
    if dialect == "postgres":
        raise QueryError(
            f"{where} (controller isolation, row rules) in PostgreSQL, which samples base"
            " tables only: query with the DuckDB or Spark engine, or without the sample"
        )
    if dialect == "spark":
        if own is None and sel is not None and sel.args.get("joins"):
            raise QueryError(
                f"{where} in Spark SQL: USING SAMPLE over a join has no Spark form (Spark"
                " samples one relation); write TABLESAMPLE after the table to sample"
            )
        if sample.args.get("seed") is not None:
            raise QueryError(
                f"{where} in Spark SQL with a seed: sqlglot writes SEED (n), which Spark"
                " rejects; leave out REPEATABLE (...) for Spark"
            )
    wrapper = _filtered(table, alias, conds)
    if own is not None:
        table.set("sample", None)
        wrapper.set("sample", own)
    elif dialect == "spark" and sel is not None:
        sel.set("sample", None)  # a single source: its sample is the scope's
        wrapper.set("sample", scope_sample)
    table.replace(wrapper)


def _filter_in_scope(table: exp.Table, alias: str, conds: list[exp.Expr]) -> bool:
    """Apply a scan's row filters (``conds``, written against the bare table name) in the
    scope that reads ``table`` instead of wrapping it in a derived table: DuckDB does not push
    an expression filter of the scope (``WHERE subject_id % 100 = 7``) through a derived
    table into the scan, so the wrapper made every scan read every row's columns (filter+project
    3-4x slower in the bench). Only where it means the same: the table in ``FROM`` or an inner /
    cross join (the filter joins the scope's ``WHERE``, which is applied before grouping,
    windows and ``DISTINCT``, as the wrapper was) or the right side of a ``LEFT JOIN ... ON``
    (the filter joins its ``ON``); never with a ``RIGHT`` / ``FULL`` join in the scope, a
    ``NATURAL`` or ``USING`` join holding the table, or another join kind. Returns ``False``
    when it did nothing (the caller then wraps)."""
    holder = table.parent
    sel = holder.parent if holder is not None else None
    if not isinstance(sel, exp.Select) or not isinstance(holder, (exp.From, exp.Join)):
        return False
    joins = sel.args.get("joins") or []
    if any((j.side or "").upper() in ("RIGHT", "FULL") for j in joins):
        return False
    cond = exp.and_(*(c.copy() for c in conds), copy=False)
    if alias != table.name:
        for col in cond.find_all(exp.Column):
            if col.table == table.name:
                col.set("table", exp.to_identifier(alias))
    if isinstance(holder, exp.From):
        sel.where(cond, append=True, copy=False)
        return True
    if holder.args.get("method") or holder.args.get("using"):
        return False
    side = (holder.side or "").upper()
    kind = (holder.kind or "").upper()
    if side == "LEFT" and not kind:
        on = holder.args.get("on")
        if on is None:
            return False
        holder.set("on", exp.and_(on, cond, copy=False))
        return True
    if not side and kind in ("", "INNER", "CROSS"):
        sel.where(cond, append=True, copy=False)
        return True
    return False


def _controller_checks(
    lab: _Labeller, schema: SchemaRegistry, policy: QueryPolicy | None
) -> tuple[dict[str, str], bool]:
    """Controller isolation (PIPL Art. 23: reading another handler's rows is a provision of
    personal information to it). Returns (table -> the app whose rows only the query reads, for
    every base table with a ``controller_column``: :attr:`Rewritten.controller_filters`, the
    filter itself is added at the scan; whether the query reads a table holding several
    controllers' rows, which only a query without a policy can). Raises :class:`QueryRefused`
    (PG162, clause ``FROM <t>``, no rule ids) for a table owned by another app
    (``TableSpec.controller``: made by that app's ``CREATE TABLE AS``, or
    :data:`~provguard.sqlgen.schema.ANY_CONTROLLER` when made without a policy)."""
    out: dict[str, str] = {}
    mixed = False
    for table, _alias in lab.base_tables:
        spec = schema.table(table.name)
        if policy is None:
            mixed = mixed or spec.controller_column is not None or spec.controller is not None
            continue
        if spec.controller is not None and spec.controller != policy.app:
            owner = (
                "rows of several apps (it was made without a policy)"
                if spec.controller == ANY_CONTROLLER
                else f"app '{spec.controller}' (made by its CREATE TABLE AS)"
            )
            raise QueryRefused(
                f"FROM {table.name}: table '{table.name}' holds {owner}; app '{policy.app}' may"
                " not read another controller's rows (PIPL Art. 23: that would be a provision of"
                " personal information to another handler): query refused",
                column=table.name,
                rules=(),
                clause=f"FROM {table.name}",
            )
        if spec.controller_column is not None:
            out[table.name] = policy.app
    return out, mixed


def _assemble(
    root: exp.Select, items: list[exp.Expr], with_key: str, with_: exp.Expr | None
) -> exp.Select:
    """The final query: ``SELECT <items> FROM (<root>) AS _pg_q`` (the masks apply on the
    root's final rows), or, when every item is a plain ``_pg_q.x AS y`` (a pure rename /
    reorder), the root itself with its projections renamed and reordered (one projection less
    per returned row). The rename is done only where it cannot change what a clause of the
    root reads: the projections are unchanged (names, order), or the root has no clause that
    may name a projection (``ORDER BY``, ``GROUP BY``, ``HAVING``, ``QUALIFY``, ``DISTINCT``)."""
    renames: list[tuple[str, str, exp.Alias]] = []
    for item in items:
        ref = item.this if isinstance(item, exp.Alias) else item
        if not (isinstance(ref, exp.Column) and ref.table == _OUTER):
            break
        assert isinstance(item, exp.Alias)
        renames.append((ref.name, item.alias, item))
    else:
        current = [p.alias_or_name for p in root.expressions]
        identity = [(x, y) for x, y, _ in renames] == [(n, n) for n in current]
        by_name = {p.alias_or_name: p for p in root.expressions}
        clauses = any(root.args.get(k) for k in ("order", "group", "having", "qualify", "distinct"))
        if (
            len(by_name) == len(current)
            and all(x in by_name for x, _, _ in renames)
            and (identity or not clauses)
        ):
            if not identity:
                projections: list[exp.Expr] = []
                for x, _, item in renames:
                    inner = by_name[x]
                    inner = inner.this if isinstance(inner, exp.Alias) else inner
                    projections.append(exp.Alias(this=inner, alias=item.args["alias"]))
                root.set("expressions", projections)
            if with_ is not None:
                root.set(with_key, with_)
            return root
    outer = exp.select(*items, copy=False).from_(
        exp.Subquery(this=root, alias=exp.TableAlias(this=exp.to_identifier(_OUTER))), copy=False
    )
    if with_ is not None:
        outer.set(with_key, with_)
    return outer


def _leaf_column(node: exp.Expr, lab: _Labeller) -> exp.Column | None:
    """The column ``x`` when ``node`` is a stored label read as ``COALESCE(NULLIF(x, 0),
    unknown)`` (:meth:`_Labeller.leaf`), else None."""
    if not isinstance(node, exp.Coalesce) or len(node.expressions) != 1:
        return None
    nullif = node.this
    if not isinstance(nullif, exp.Nullif) or not isinstance(nullif.this, exp.Column):
        return None
    zero, unknown = _literal(nullif.expression), _literal(node.expressions[0])
    if zero != 0 or unknown != lab.unknown:
        return None
    return nullif.this


def _literal(node: exp.Expr) -> int | None:
    """The value of an untyped non-negative integer literal, else None."""
    if isinstance(node, exp.Literal) and node.is_int:
        return int(node.name)
    return None


def _plan(
    inner: exp.Select,
    outs: list[_Out],
    masked: list[exp.Expr],
    arrow: list[tuple[dict[str, int], bool, str | None] | None],
    with_key: str,
    with_: exp.Expr | None,
    lab: _Labeller,
    row_level: bool = False,
) -> tuple[str | None, tuple[PostStep, ...]]:
    """The execution plan of a DuckDB ``SELECT`` (:mod:`provguard.sqlgen.plan`): SQL over
    ``inner`` (a copy of the finished root: outputs, full labels, hidden companions) and one
    :class:`PostStep` per output. A label ``P | c`` is fetched as ``P`` (``c`` OR-ed after
    fetch), ``COALESCE(NULLIF(x, 0), u) [| c]`` as ``x``, a constant one not at all; with
    ``row_level`` (no aggregate, ``GROUP BY`` or ``DISTINCT`` in ``inner``: each of its rows is
    one row of each scanned table) two or more normalised stored labels ``x`` of one table scan
    whose table packs them are fetched as its one packed column (:func:`_pack_labels`); an output
    masked by a ``CASE`` over its label is fetched raw (with its stored hash) and masked after
    fetch on the full label, except when its ``hash`` branch computes the HMAC (then value and
    label stay in SQL as they are). (None, ()) when the plan would be the self-contained query
    itself."""
    n = len(outs)
    projections = list(inner.expressions)
    items: list[exp.Expr] = []
    fetch_labels: list[exp.Expr] = []
    hidden_fetch: list[exp.Expr] = []
    steps: list[PostStep] = []
    whole: set[int] = set()  # labels the SQL itself reads by name (a CASE computing an HMAC)
    changed = False
    for i, out in enumerate(outs):
        name = out.name
        label_name = name + ORIGINS_SUFFIX
        info = arrow[i]
        if info is None and _references(masked[i], label_name):
            # a CASE in SQL (an HMAC computed per row) reads the full label: keep both as they are
            items.append(masked[i].copy())
            fetch_labels.append(_alias(_ref(label_name), label_name, quoted=_quote(name)))
            steps.append(PostStep(name, label_name, label_name))
            whole.add(i)
            continue
        if info is None:
            items.append(masked[i].copy())
        else:
            items.append(_alias(_ref(name), name, quoted=_quote(name)))
            if info[2] is not None:
                hidden_fetch.append(_alias(_ref(info[2]), info[2]))
        label_proj = projections[n + i]
        assert isinstance(label_proj, exp.Alias) and label_proj.alias == label_name
        full = label_proj.this
        if out.constant is not None:
            fetch: exp.Expr | None = None
            normalise, const = False, out.constant
        else:
            dynamic, const = _split_label(full)
            leaf = _leaf_column(dynamic, lab)
            normalise = leaf is not None
            fetch = leaf if leaf is not None else dynamic
        if fetch is None:
            fetched_name: str | None = None
            changed = True
        else:
            fetched_name = label_name
            if fetch is not full:
                changed = True
                label_proj.set("this", fetch)
            fetch_labels.append(_alias(_ref(label_name), label_name, quoted=_quote(name)))
        masks, as_text, hash_column = info if info is not None else ({}, False, None)
        if info is not None:
            changed = True
        steps.append(
            PostStep(
                name,
                label_name,
                fetched_name,
                normalise,
                const,
                tuple(masks.items()),
                as_text,
                hash_column,
            )
        )
    if row_level:
        packed = _pack_labels(inner, n, steps, lab.schema, whole)
        if packed:
            changed = True
            gone = {s.label for s in steps if s.width}
            fetch_labels = [f for f in fetch_labels if f.alias_or_name not in gone]
            hidden_fetch.extend(_alias(_ref(name), name) for name in packed)
    if not changed:
        return None, ()
    plan = _assemble(inner, [*items, *fetch_labels, *hidden_fetch], with_key, with_)
    try:
        return Dialect.get_or_raise("duckdb").generate(plan, copy=False), tuple(steps)
    except SqlglotError as exc:
        raise LineageError(f"cannot emit the execution plan: {exc}") from None


def _pack_labels(
    inner: exp.Select, n: int, steps: list[PostStep], schema: SchemaRegistry, whole: set[int]
) -> list[str]:
    """Fetch the labels of ``steps`` that are a bare normalised stored label of a base table
    scanned in ``inner``'s ``FROM``/``JOIN`` whose table packs its labels
    (``TableSpec.labels_packed``), when two or more come from the same scan, as one projection
    ``<alias>.__packed__origins AS _pg_packed<k>`` instead of one per output: their label
    projections are removed from ``inner`` and their steps (in place) read the field. Returns
    the new projections' names. ``inner``'s projections are the ``n`` outputs, then their
    labels in output order; the outputs in ``whole`` keep their label projection."""
    scans: dict[str, dict[str, int]] = {}
    from_ = inner.args.get("from") or inner.args.get("from_")
    nodes = [from_.this] if from_ is not None else []
    nodes += [j.this for j in inner.args.get("joins") or []]
    for node in nodes:
        if isinstance(node, exp.Table) and isinstance(node.this, exp.Identifier):
            spec = schema.tables.get(node.name)
            if spec is not None and spec.labels_packed:
                scans[node.alias_or_name] = spec.packed_fields()
    projections = list(inner.expressions)
    groups: dict[str, list[tuple[int, int]]] = {}
    for i, step in enumerate(steps):
        if step.fetch_label is None or step.normalise or step.width or i in whole:
            continue
        label = projections[n + i]
        ref = label.this if isinstance(label, exp.Alias) else label
        if not isinstance(ref, exp.Column) or not isinstance(ref.this, exp.Identifier):
            continue
        offset = scans.get(ref.table, {}).get(ref.name)
        if offset is not None:
            groups.setdefault(ref.table, []).append((i, offset))
    names: list[str] = []
    removed: set[int] = set()
    for alias, members in groups.items():
        if len(members) < 2:
            continue
        name = f"_pg_packed{len(names)}"
        names.append(name)
        projections.append(_alias(exp.column(PACKED_LABELS, table=alias), name))
        for i, offset in members:
            removed.add(n + i)
            steps[i] = replace(steps[i], fetch_label=name, shift=offset, width=PACKED_WIDTH)
    if names:
        inner.set("expressions", [p for k, p in enumerate(projections) if k not in removed])
    return names


def _split_label(label: exp.Expr) -> tuple[exp.Expr, int]:
    """A label as (per-row part, constant bits OR-ed last by :meth:`_Labeller.combine` /
    :meth:`_Labeller.group_label`: an untyped non-negative literal, or a typed one)."""
    if isinstance(label, exp.BitwiseOr):
        right = label.expression
        c = _literal(right)
        if c is None and isinstance(right, exp.Cast):
            c = _literal(right.this)
        if c is not None:
            return label.this, c
    return label, 0


def _references(node: exp.Expr, name: str) -> bool:
    """True when ``node`` reads the outer query's column ``name``."""
    return any(c.name == name and c.table == _OUTER for c in node.find_all(exp.Column))


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
    return tuple(
        ColumnLineage(c.name, c.sources, c.categories, c.control_sources, c.control_categories)
        for c in r.columns
    )

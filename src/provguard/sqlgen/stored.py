"""Stored masks: the masked value of a bare protected column, computed once at load time.

Under a policy, the rewrite masks a bare column ``c`` of a base table per row with a ``CASE``
over its label (:func:`provguard.sqlgen.rewrite`). That masked value is a pure function of

- the value and its stored label (the label expression: ``COALESCE(NULLIF(c_origins, 0), 1)``,
  OR-ed with any row label of the table),
- the verdict's mask mapping, strategy -> forbidden origin bits (after the ``nullify``
  downgrade of computed columns),
- the ``unknown`` bit (a label of 0 is read as ``unknown``),
- the constant label bits OR-ed into the label (constant-labelled columns in ``WHERE`` etc.),
  as far as they meet a forbidden mask,
- the hash key, when a ``hash`` branch exists (only its public :func:`~provguard.sqlgen.keyed.
  key_id` enters the fingerprint, never the key),
- the placeholder and redaction constants.

:func:`mask_fingerprint` is SHA-256 over a canonical JSON of exactly these (RFC 8785-style:
sorted keys, no whitespace, integers as decimal strings). A *stored mask* is a companion column
``<col>__mask_<fp[:12]>`` holding the rewrite's own output for ``SELECT <col> FROM <table>``
under the policy (:mod:`provguard.dataplane.masks`); the table's
:class:`~provguard.sqlgen.schema.ColumnSpec` records ``stored_masks`` (fingerprint -> column).
At query time the rewrite computes the fingerprint of each bare base-table output from the
CURRENT verdict and label (:func:`stored_mask_for`) and reads the companion only on an exact
match; any difference (another policy, an instrument event, another app/purpose/key, a per-row
label that differs, a derived output, an aggregate) gives another fingerprint, and the ``CASE``
is emitted as before. A stale companion can therefore never be returned.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from sqlglot import exp

from provguard.sqlgen.schema import SchemaRegistry, TableSpec

#: the companion column of a stored mask is ``<column><MASK_INFIX><fingerprint[:12]>``
MASK_INFIX = "__mask_"
_VERSION = "provguard stored mask v1"
_U64 = (1 << 64) - 1


def mask_column_name(column: str, fingerprint: str) -> str:
    """The companion column of ``column``'s stored mask with ``fingerprint`` (64 hex digits):
    ``<column>__mask_<first 12 hex digits>``."""
    return f"{column}{MASK_INFIX}{fingerprint[:12]}"


def pads_nulls(sel: exp.Expr) -> bool:
    """True when the ``SELECT`` ``sel`` has a join that can pad rows with NULL (``LEFT``/
    ``RIGHT``/``FULL``, or any join kind other than inner and cross: positional, as-of...)."""
    for join in sel.args.get("joins") or []:
        kind = (join.args.get("kind") or "").upper()
        if join.args.get("side") or kind not in ("", "INNER", "CROSS"):
            return True
    return False


def base_outputs(
    root: exp.Select, projections: list[exp.Expr], aggregate: bool
) -> dict[int, tuple[str, str, str]]:
    """Outputs of the (qualified) root ``SELECT`` that are a bare column of a base table named
    in its ``FROM``/``JOIN`` (the test of the rewrite's stored hashes): output index ->
    ``(alias, table, column)``. Empty for an aggregate root and for a root with an outer join
    (NULL-padded rows)."""
    if aggregate or pads_nulls(root):
        # an outer join's padded row reads its label as unknown and its CASE may mask it, while
        # its companion would be NULL
        return {}
    sources: dict[str, str] = {}
    from_ = root.args.get("from") or root.args.get("from_")
    nodes = [from_.this] if from_ is not None else []
    nodes += [j.this for j in root.args.get("joins") or []]
    for node in nodes:
        if isinstance(node, exp.Table) and isinstance(node.this, exp.Identifier):
            sources[node.alias_or_name] = node.name
    found: dict[int, tuple[str, str, str]] = {}
    for i, proj in enumerate(projections):
        col = proj.this if isinstance(proj, exp.Alias) else proj
        if not isinstance(col, exp.Column) or not isinstance(col.this, exp.Identifier):
            continue
        if col.table in sources:
            found[i] = (col.table, sources[col.table], col.name)
    return found


def _constant(node: exp.Expr) -> int | None:
    """The value of an integer literal as the rewrite emits it (``5``, ``-5``, ``CAST(5 AS
    UBIGINT)``), as unsigned 64 bits; None for anything else."""
    if isinstance(node, exp.Cast):
        return _constant(node.this)
    if isinstance(node, exp.Paren):
        return _constant(node.this)
    if isinstance(node, exp.Neg):
        inner = _constant(node.this)
        return None if inner is None else (-inner) & _U64
    if isinstance(node, exp.Literal) and not node.is_string:
        try:
            return int(node.name) & _U64
        except ValueError:
            return None
    return None


def _split(label: exp.Expr) -> tuple[exp.Expr, int]:
    """``label`` as (per-row part, constant bits): the rewrite folds every constant of a label
    into one literal OR-ed last (``combine``)."""
    if isinstance(label, exp.BitwiseOr):
        c = _constant(label.expression)
        if c is not None:
            return label.this, c
    return label, 0


def _never_zero(node: exp.Expr, nonzero: frozenset[str]) -> bool:
    """True when the label expression ``node`` can be neither 0 nor NULL: an OR with such an
    operand, a stored label read as ``COALESCE(NULLIF(x, 0), <non-zero>)``, or a column named in
    ``nonzero`` (labels normalised at load)."""
    if isinstance(node, exp.BitwiseOr):
        return _never_zero(node.this, nonzero) or _never_zero(node.expression, nonzero)
    if isinstance(node, exp.Column):
        return node.name in nonzero
    if isinstance(node, exp.Coalesce) and isinstance(node.this, exp.Nullif):
        rest = node.expressions
        return len(rest) == 1 and bool(_constant(rest[0])) and not _constant(node.this.expression)
    return False


def mask_fingerprint(
    table: str,
    column: str,
    alias: str,
    masks: Mapping[str, int],
    unknown: int,
    label: exp.Expr,
    key_id: str | None,
    placeholder: str,
    redact_tail: str,
    nonzero: frozenset[str] = frozenset(),
) -> str | None:
    """The fingerprint (64 hex digits, SHA-256) of the masked value of ``table.column`` read
    under ``alias``, or None when no stored mask can stand for it.

    ``masks``: strategy -> forbidden origin bits of the verdict in force (non-empty);
    ``unknown``: the bit of ``unknown``; ``label``: the output's label expression as the rewrite
    emits it; ``key_id``: :func:`~provguard.sqlgen.keyed.key_id` of the hash key (used only if
    ``masks`` has ``hash``). None when the per-row part of ``label`` reads a column of another
    source than ``alias`` or has no column at all (a constant label needs no per-row mask). The
    constant bits of ``label`` enter only where they meet a forbidden mask (elsewhere they cannot
    change a ``(label & F) <> 0`` test), and whether they are non-zero when the per-row part can
    be 0 and ``unknown`` is forbidden (the ``label = 0`` test); ``nonzero``: the origins
    columns of a table whose labels were normalised at load (never 0 or NULL)."""
    if not masks:
        return None
    dynamic, const = _split(label)
    dynamic = dynamic.copy()
    columns = list(dynamic.find_all(exp.Column))
    if not columns:
        return None
    for col in columns:
        if col.table != alias:
            return None
        col.set("table", exp.to_identifier(table))
    forbidden = 0
    for m in masks.values():
        forbidden |= m
    zero_test = bool(forbidden & unknown) and not _never_zero(dynamic, nonzero)
    body = {
        "v": _VERSION,
        "table": table,
        "column": column,
        "label": dynamic.sql(dialect="duckdb"),
        "const": str(const & forbidden),
        "const_nonzero": bool(const) if zero_test else None,
        "masks": {s: str(m) for s, m in sorted(masks.items()) if m},
        "unknown": str(unknown),
        "key_id": key_id if masks.get("hash") else None,
        "placeholder": placeholder if masks.get("placeholder") else None,
        "redact_tail": redact_tail if masks.get("redact") else None,
    }
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def nonzero_labels(spec: TableSpec) -> frozenset[str]:
    """The origins columns of ``spec`` that hold no 0 or NULL (``labels_normalised``)."""
    if not spec.labels_normalised:
        return frozenset()
    return frozenset(c.origins_column for c in spec.columns.values() if c.origins_column)


def stored_mask_for(
    schema: SchemaRegistry,
    source: tuple[str, str, str],
    masks: Mapping[str, int],
    unknown: int,
    label: exp.Expr,
    key_id: str | None,
    placeholder: str,
    redact_tail: str,
) -> exp.Column | None:
    """A reference (``alias.companion``) to the stored mask of the bare output ``source``
    (``(alias, table, column)`` from :func:`base_outputs`) whose fingerprint is that of the
    current verdict and label (:func:`mask_fingerprint`), or None: the rewrite then emits its
    ``CASE``."""
    alias, table, column = source
    spec = schema.tables.get(table)
    cs = spec.columns.get(column) if spec is not None else None
    if spec is None or cs is None or not cs.stored_masks:
        return None
    fp = mask_fingerprint(
        table,
        column,
        alias,
        masks,
        unknown,
        label,
        key_id,
        placeholder,
        redact_tail,
        nonzero_labels(spec),
    )
    if fp is None:
        return None
    target = cs.stored_masks.get(fp)
    if target is None:
        return None
    return exp.column(target, table=alias)

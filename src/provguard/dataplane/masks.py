"""Stored masks: the policy's masked value of a protected column, computed once at load time.

Stored hashes (:mod:`provguard.dataplane.hashes`) take the HMAC out of a query; a *stored mask*
takes the whole masking ``CASE`` out. For each protected column ``c`` with a per-row label and a
mask under a :class:`~provguard.sqlgen.QueryPolicy`, :func:`stored_mask_select` rewrites
``SELECT c FROM <table>`` under the policy with :func:`provguard.sqlgen.rewrite` itself and
stores the rewrite's output for ``c`` (its ``CASE`` expression, inlined over the table) as a
companion column ``c__mask_<fp12>``; the column's spec records the fingerprint ``fp``
(:func:`provguard.sqlgen.stored.mask_fingerprint`: SHA-256 over the verdict's mask mapping, the
``unknown`` bit, the label expression, the constant label bits that meet a mask, the hash key's
public ``key_id`` and the placeholder/redaction constants; never the key). A later query reads
the companion only when its own verdict and label give the same fingerprint; otherwise it emits
the ``CASE`` (:mod:`provguard.sqlgen.stored`). Several fingerprints (policies, apps, purposes)
can coexist; :func:`drop_masks_select` removes them.

The value is computed by DuckDB and read by every back-end; it is restricted to text and integer
columns, whose text form (``CAST(v AS TEXT)``, used by ``redact``/``hash``/``placeholder``) is the
same in DuckDB, Spark and PostgreSQL. :meth:`provguard.dataplane.LabelledStore.store_masks`
applies it to a stored table.
"""

from __future__ import annotations

from collections.abc import Iterable

import duckdb
import pyarrow as pa
from sqlglot import exp

from provguard.errors import InputError, StoreError
from provguard.sqlgen import (
    PLACEHOLDER,
    REDACT_TAIL,
    QueryPolicy,
    QueryRefused,
    SchemaRegistry,
    TableSpec,
    rewrite,
)
from provguard.sqlgen.keyed import key_id
from provguard.sqlgen.schema import ORIGINS_SUFFIX, PACKED_LABELS
from provguard.sqlgen.stored import mask_column_name, mask_fingerprint, nonzero_labels

_OUTER = "_pg_q"


def maskable_columns(spec: TableSpec) -> list[str]:
    """The columns a stored mask can serve: a data category (the policy may mask it) and a
    per-row origins column (a constant label is masked without a per-row test already)."""
    return [n for n, c in spec.columns.items() if c.categories and c.origins_column is not None]


def _one_mask(
    table: str, column: str, schema: SchemaRegistry, policy: QueryPolicy
) -> tuple[str, exp.Expr] | None:
    """(fingerprint, masked-value expression over ``table``'s columns) of ``column`` under
    ``policy``, taken from the rewrite of ``SELECT column FROM table``; None when the rewrite
    emits the bare value (no mask applies) or a constant label decides it."""
    sql = exp.select(exp.column(column)).from_(exp.Table(this=exp.to_identifier(table))).sql()
    rw = rewrite(sql, schema, policy, dialect="duckdb")
    out = rw.columns[0]
    masks = dict(out.masks)
    if not any(masks.values()):
        return None
    outer = rw.expression
    assert isinstance(outer, exp.Select)
    sub = outer.args.get("from") or outer.args.get("from_")
    root = sub.this.this if sub is not None else None
    # a WHERE there holds only scan row filters (controller isolation, row rules): they pick
    # rows, they do not change the masked value, which is stored for every row
    if not isinstance(root, exp.Select) or root.args.get("joins"):
        raise StoreError(f"cannot store the mask of {table}.{column}: unexpected rewrite shape")
    inner = {p.alias_or_name: (p.this if isinstance(p, exp.Alias) else p) for p in root.expressions}
    label = inner.get(column + ORIGINS_SUFFIX)
    if label is None:
        raise StoreError(f"cannot store the mask of {table}.{column}: no label in the rewrite")
    kid = None
    if masks.get("hash"):
        key = policy.hash_key
        kid = key_id(key) if key is not None else None
    fp = mask_fingerprint(
        table,
        column,
        table,
        masks,
        1 << policy.registry.bit("unknown"),
        label,
        kid,
        PLACEHOLDER,
        REDACT_TAIL,
        nonzero_labels(schema.table(table)),
    )
    if fp is None:
        return None
    masked = outer.expressions[0]
    value = masked.this if isinstance(masked, exp.Alias) else masked
    value = value.copy()
    # inline the rewrite's inner columns (value, label, stored hash) over the table itself
    for col in list(value.find_all(exp.Column)):
        if col.table != _OUTER:
            continue
        source = inner.get(col.name)
        if source is None:
            raise StoreError(f"cannot store the mask of {table}.{column}: '{col.name}' unbound")
        col.replace(source.copy())
    return fp, value


def stored_mask_select(
    table: str,
    schema: SchemaRegistry,
    policy: QueryPolicy,
    *,
    columns: Iterable[str] | None = None,
    dialect: str = "duckdb",
) -> tuple[str, TableSpec, dict[str, str]]:
    """``SELECT *, <masked col> AS col__mask_<fp12>, ... FROM table`` in ``dialect``, the spec
    of its result (each stored column's ``stored_masks`` gains ``fp -> companion``) and the
    fingerprints stored, column -> fp.

    The masked value is the rewrite's own ``CASE`` for ``SELECT col FROM table`` under
    ``policy`` (module docstring). ``columns``: default :func:`maskable_columns`, those without a
    mask under ``policy`` skipped. Raises :class:`InputError` for an unknown column, a column
    named explicitly that has no per-row label or no mask under ``policy``, a name clash; the
    rewrite's errors (:class:`~provguard.sqlgen.QueryRefused` when the policy refuses the column,
    :class:`~provguard.sqlgen.QueryError` for a missing hash key)."""
    spec = schema.table(table)
    explicit = columns is not None
    names = list(columns) if columns is not None else maskable_columns(spec)
    hidden = spec.origins_columns() | spec.hash_columns()
    taken = set(spec.columns) | hidden
    updated = dict(spec.columns)
    added: list[exp.Expr] = []
    stored: dict[str, str] = {}
    # the masks are computed from the table without its stored masks (same values, no reuse)
    bare_schema = _bare_schema(table, spec, schema)
    replaced: set[str] = set()
    for name in names:
        cs = spec.columns.get(name)
        if cs is None:
            raise InputError(f"column '{name}' is not a data column of '{table}'")
        if not cs.categories or cs.origins_column is None:
            if explicit:
                raise InputError(
                    f"column '{name}' of '{table}' has no category or no per-row label: its"
                    " mask needs no stored companion"
                )
            continue
        try:
            found = _one_mask(table, name, bare_schema, policy)
        except QueryRefused:
            if explicit:
                raise
            continue  # a query returning it is refused anyway: nothing to store
        if found is None:
            if explicit:
                raise InputError(
                    f"column '{name}' of '{table}' is not masked under this policy: nothing to"
                    " store"
                )
            continue
        fp, value = found
        target = mask_column_name(name, fp)
        if target in taken:
            raise InputError(f"cannot add stored mask '{target}': the name is taken")
        masks = dict(cs.stored_masks)
        # a companion with the same fingerprint is recomputed (same values), not duplicated
        if fp in masks:
            replaced.add(masks[fp])
        masks[fp] = target
        added.append(exp.alias_(value, target))
        updated[name] = cs.model_copy(update={"stored_masks": masks})
        stored[name] = fp
    if replaced and dialect != "duckdb":
        raise InputError(
            "recomputing stored masks is done in DuckDB (LabelledStore.store_masks): the other"
            " back-ends have no SELECT * EXCLUDE"
        )
    star = exp.Star(**({"except_": [exp.column(c) for c in sorted(replaced)]} if replaced else {}))
    query = exp.select(star, *added).from_(exp.Table(this=exp.to_identifier(table)))
    new_spec = TableSpec.model_validate(spec.model_copy(update={"columns": updated}).model_dump())
    return query.sql(dialect=dialect), new_spec, stored


def mask_fingerprints(
    table: str,
    schema: SchemaRegistry,
    policy: QueryPolicy,
    *,
    columns: Iterable[str] | None = None,
) -> dict[str, str]:
    """Column -> fingerprint of the stored masks :func:`stored_mask_select` would make for
    ``table`` under ``policy`` (columns without a mask under it are left out). Errors as
    :func:`stored_mask_select`."""
    spec = schema.table(table)
    names = list(columns) if columns is not None else maskable_columns(spec)
    bare = _bare_schema(table, spec, schema)
    out: dict[str, str] = {}
    for name in names:
        if name not in spec.columns:
            raise InputError(f"column '{name}' is not a data column of '{table}'")
        try:
            found = _one_mask(table, name, bare, policy)
        except QueryRefused:
            continue
        if found is not None:
            out[name] = found[0]
    return out


def _bare_schema(table: str, spec: TableSpec, schema: SchemaRegistry) -> SchemaRegistry:
    """``schema`` with ``table``'s stored masks removed (the masks are computed by the CASE)."""
    bare_spec = spec.model_copy(
        update={
            "columns": {
                n: c.model_copy(update={"stored_masks": {}}) for n, c in spec.columns.items()
            }
        }
    )
    return schema.with_table(table, bare_spec)


def drop_masks_select(
    table: str,
    spec: TableSpec,
    fingerprints: Iterable[str] | None = None,
) -> tuple[str, TableSpec]:
    """``SELECT * EXCLUDE (<companions>) FROM table`` (DuckDB) and the spec without those stored
    masks: every stored mask when ``fingerprints`` is None, else those whose fingerprint is
    listed (on any column). Unknown fingerprints are ignored; returns the unchanged query
    (``SELECT *``) and spec when nothing matches."""
    wanted = set(fingerprints) if fingerprints is not None else None
    updated = dict(spec.columns)
    dropped: list[str] = []
    for name, cs in spec.columns.items():
        keep = {
            fp: col
            for fp, col in cs.stored_masks.items()
            if wanted is not None and fp not in wanted
        }
        dropped += [col for fp, col in cs.stored_masks.items() if fp not in keep]
        if len(keep) != len(cs.stored_masks):
            updated[name] = cs.model_copy(update={"stored_masks": keep})
    star = exp.Star(**({"except_": [exp.column(c) for c in sorted(dropped)]} if dropped else {}))
    query = exp.select(star).from_(exp.Table(this=exp.to_identifier(table)))
    new_spec = TableSpec.model_validate(spec.model_copy(update={"columns": updated}).model_dump())
    return query.sql(dialect="duckdb"), new_spec


def normalised_labels_select(
    table: str,
    spec: TableSpec,
    unknown: int,
    *,
    dialect: str = "duckdb",
    pack: bool = False,
    packed_in_file: bool = False,
) -> tuple[str, TableSpec]:
    """``SELECT * REPLACE (COALESCE(NULLIF(x, 0), unknown) AS x, ...) FROM table`` over every
    per-row origins column ``x`` of the data columns (DuckDB), and the spec with
    ``labels_normalised`` set and no stored masks (their fingerprints name the old label
    expression and would never match again). 0 and NULL mean ``unknown`` either way: the
    rewrite then reads the labels as they are. With ``pack`` (the caller checked that every
    label fits in :data:`~provguard.sqlgen.schema.PACKED_WIDTH` bits) the same statement also
    writes the normalised labels of :meth:`TableSpec.packable_columns` side by side into the
    uint64 column :data:`~provguard.sqlgen.schema.PACKED_LABELS` and sets ``labels_packed``;
    ``packed_in_file``: the table already has that column (it is replaced or dropped). Raises
    :class:`InputError` for another dialect or a table without per-row labels."""
    if dialect != "duckdb":
        raise InputError("labels are normalised in DuckDB (LabelledStore.normalise_labels)")
    names = sorted({c.origins_column for c in spec.columns.values() if c.origins_column})
    if not names:
        raise InputError(f"table '{table}' has no per-row origins column to normalise")
    lit = exp.Literal.number
    ubigint = exp.DataType.build("ubigint", dialect="duckdb")

    def normalised(n: str) -> exp.Expr:
        return exp.Cast(
            this=exp.Coalesce(
                this=exp.Nullif(this=exp.column(n), expression=lit(0)),
                expressions=[lit(unknown)],
            ),
            to=ubigint.copy(),
        )

    replace = [exp.alias_(normalised(n), n) for n in names]
    updated = {n: c.model_copy(update={"stored_masks": {}}) for n, c in spec.columns.items()}
    packed = pack and len(spec.packable_columns()) > 1
    new_spec = TableSpec.model_validate(
        spec.model_copy(
            update={"columns": updated, "labels_normalised": True, "labels_packed": packed}
        ).model_dump()
    )
    dropped = [exp.column(c) for c in sorted(spec.mask_columns())]
    extra: list[exp.Expr] = []
    if packed:
        fields: exp.Expr | None = None
        for n, offset in new_spec.packed_fields().items():
            part: exp.Expr = normalised(n)
            if offset:
                part = exp.Paren(this=exp.BitwiseLeftShift(this=part, expression=lit(offset)))
            fields = part if fields is None else exp.BitwiseOr(this=fields, expression=part)
        assert fields is not None
        if packed_in_file:
            replace.append(exp.alias_(fields, PACKED_LABELS))
        else:
            extra.append(exp.alias_(fields, PACKED_LABELS))
    elif packed_in_file:
        dropped.append(exp.column(PACKED_LABELS))
    star = exp.Star(**{"except_": dropped or None, "replace": replace})
    query = exp.select(star, *extra).from_(exp.Table(this=exp.to_identifier(table)))
    return query.sql(dialect="duckdb"), new_spec


def with_stored_masks(
    table: pa.Table,
    name: str,
    schema: SchemaRegistry,
    policy: QueryPolicy,
    *,
    columns: Iterable[str] | None = None,
) -> tuple[pa.Table, TableSpec, dict[str, str]]:
    """``table`` (Arrow, laid out as ``schema``'s table ``name``) with a stored-mask companion
    per masked column, computed by DuckDB, its new spec and the fingerprints (column -> fp).
    Errors as :func:`stored_mask_select`; :class:`InputError` for a masked column that is neither
    text nor integer; :class:`StoreError` if DuckDB fails."""
    sql, new_spec, stored = stored_mask_select(name, schema, policy, columns=columns)
    check_mask_types(table.schema, stored)
    con = duckdb.connect()
    try:
        con.register(name, table)
        return con.sql(sql).to_arrow_table(), new_spec, stored
    except duckdb.Error as exc:
        raise StoreError(f"cannot compute stored masks: {exc}") from exc
    finally:
        con.close()


def check_mask_types(schema: pa.Schema, columns: Iterable[str]) -> None:
    """Raise :class:`InputError` unless every column is text or integer in ``schema`` (their
    text form is the same in every back-end; a float or timestamp is not)."""
    for name in columns:
        try:
            t = schema.field(name).type
        except KeyError:
            raise InputError(f"column '{name}' is not in the stored table") from None
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)):
            raise InputError(
                f"column '{name}' is {t}: stored masks are kept for text and integer columns,"
                " whose text form every back-end writes alike"
            )

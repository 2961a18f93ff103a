"""The execution plan of a policy-aware ``SELECT``: SQL without the per-row constant work, plus
a post-fetch step per output column applied to the Arrow result.

The rewrite (:func:`provguard.sqlgen.rewrite`) always produces a self-contained statement
(:attr:`~provguard.sqlgen.Rewritten.sql`): every label and every mask is computed in SQL. That
text is what golden files, ``--show-sql``, ``CREATE TABLE AS``, Spark and PostgreSQL use. For a
DuckDB ``SELECT`` whose result is returned to the caller it additionally builds an
:class:`ExecutionPlan` (:attr:`~provguard.sqlgen.Rewritten.plan`), which moves work that is the
same function of each returned row out of DuckDB's sparse chunks (on a 1-in-100 filter, ~4,900
chunks of ~20 rows each, every expression paying its per-chunk cost) into a few vectorised
pyarrow kernels over the compact result:

- **constant label bits**: a label the rewrite built as ``P | c`` (``c`` the OR of the
  constant-labelled columns in ``WHERE``/``ON``..., e.g. ``| 192`` for ``subject_id``'s
  ``{douyin, duoshan}``) is fetched as ``P``, and ``c`` is OR-ed after fetch; a label that is the
  constant ``c`` on every row is not fetched at all;
- **label normalisation**: a label that is one stored label read as ``COALESCE(NULLIF(x, 0),
  unknown)`` is fetched as ``x``, and 0/NULL become ``unknown`` after fetch;
- **packed labels**: two or more labels that are stored normalised labels ``x`` of the same
  table scan, held in that table's packed label column (``TableSpec.labels_packed``), are
  fetched as that one column and each is cut out of its 16-bit field after fetch (on a
  selective scan DuckDB pays per fetched column and vector, not per byte);
- **masks** (bare and derived outputs alike): the per-row ``CASE WHEN (label & F) <> 0 ...``
  is evaluated over the full label after fetch, strongest strategy first (numpy finds each
  row's branch, one Arrow ``take`` builds the column); the ``hash`` branch only when it reads a
  stored keyed hash
  (:func:`provguard.dataplane.stored_hash_select`), never computed in Python.

**Why nothing can be under-labelled.** The plan is derived from the same rewrite, node by node: each
label the SQL fetches is a syntactic sub-expression of the self-contained label ``L``, and ``L =
post(fetched)`` holds by construction for the only three shapes split off (``L = P | c`` with ``c``
a literal, ``L = COALESCE(NULLIF(x, 0), u) [| c]`` with ``x`` one column, and ``L = x [| c]`` with
``x`` a normalised stored label of a row-level scan whose table packs it: the packed column is
written from the same normalised labels in the same statement, each field wide enough for every
origin of the registry, declassification rewrites the field with its label, and a file rewritten by
anything else is read without its packed column, like its stored masks); every other label is
fetched whole. The masks are applied to the reconstructed full label with the exact branch order,
bit tests and ``label = 0``-is-``unknown`` test of the SQL ``CASE``. The plan is used only for rows
returned to the caller; ``CREATE TABLE AS`` (rows written and labelled for later queries) and the
other back-ends run the self-contained text. A value whose text form pyarrow cannot reproduce
exactly (a text mask over anything but a string or an integer) makes :meth:`ExecutionPlan.finish`
return None and the caller runs the self-contained text instead.
``tests/sqlgen/test_sqlgen_plan.py`` checks plan == self-contained SQL cell by cell (values and
labels) on generated tables with NULL and 0 labels, masks, stored hashes and masks, aggregates,
joins, unions and windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_U64 = pa.uint64()
#: past the end of any string (code points)
_END = 1 << 62


@dataclass(frozen=True)
class PostStep:
    """The post-fetch step of one output column ``name`` and its label ``label``.

    Label: ``fetch_label`` names the fetched column holding the label's per-row part (None: the
    label is the constant ``const`` on every row; with ``width``, a packed label column whose
    field ``shift``/``width`` is the label); with ``normalise`` a 0 or NULL there becomes
    ``unknown`` (``COALESCE(NULLIF(x, 0), unknown)``); then ``const`` is OR-ed in (a NULL stays
    NULL, as in SQL). Value: without ``masks`` the fetched column ``name`` is returned as it is;
    with them (strategy -> forbidden origin bits, strongest first: ``nullify``, ``placeholder``,
    ``redact``, ``hash``) each row gets the first strategy whose bits meet its full label (or,
    when ``unknown`` is in the bits, whose label is 0); ``as_text``: the value is returned as
    text (``CAST(v AS TEXT)``); ``hash_column``: the fetched stored keyed hash the ``hash``
    branch returns."""

    name: str
    label: str
    fetch_label: str | None
    normalise: bool = False
    const: int = 0
    masks: tuple[tuple[str, int], ...] = ()
    as_text: bool = False
    hash_column: str | None = None
    #: with ``width`` > 0, ``fetch_label`` is a packed label column and the label is its
    #: ``width``-bit field at bit ``shift``: ``(packed >> shift) & (2**width - 1)``
    shift: int = 0
    width: int = 0

    @property
    def identity(self) -> bool:
        """True when the fetched value and label are returned unchanged."""
        return (
            self.fetch_label == self.label
            and not self.normalise
            and not self.const
            and not self.masks
            and not self.as_text
            and not self.width
        )


@dataclass(frozen=True)
class ExecutionPlan:
    """How the DuckDB engine runs a ``SELECT``: ``sql`` (DuckDB) then :meth:`finish` on its
    Arrow result. ``steps``: one per output column, in output order; ``unknown``: the bit of
    ``unknown``; ``placeholder`` / ``redact_tail``: the mask constants of the rewrite."""

    sql: str
    steps: tuple[PostStep, ...]
    unknown: int
    placeholder: str
    redact_tail: str

    def finish(self, fetched: pa.Table) -> pa.Table | None:
        """The self-contained query's result from the plan SQL's ``fetched`` result: columns
        ``c1..cn, c1__origins..cn__origins`` (uint64 labels), or None when a value's text form
        cannot be reproduced exactly here (run the self-contained SQL instead). Vectorised
        pyarrow over the fetched rows: per 100,000 rows about 0.1-0.5 ms of CPU per label and
        1-4 ms per masked text column (the masked column is a new string array;
        docs/benchmarks.md, "Policy-aware SQL, round 7")."""
        # DuckDB hands the result over in many small chunks (one per ~1,000-2,000 rows of a
        # selective scan); each kernel below would pay its per-call cost per chunk
        fetched = fetched.combine_chunks()
        n = fetched.num_rows
        labels: list[pa.ChunkedArray | pa.Array] = []
        values: list[pa.ChunkedArray | pa.Array] = []
        for step in self.steps:
            label = self._label(step, fetched, n)
            value = fetched.column(step.name)
            if step.masks or step.as_text:
                masked = self._mask(step, value, label, fetched)
                if masked is None:
                    return None
                value = masked
            values.append(value)
            labels.append(label)
        names = [s.name for s in self.steps] + [s.label for s in self.steps]
        return pa.table([*values, *labels], names=names)

    def _label(self, step: PostStep, fetched: pa.Table, n: int) -> pa.ChunkedArray | pa.Array:
        if step.fetch_label is None:
            return pa.array(np.full(n, step.const, dtype=np.uint64), type=_U64)
        label: pa.ChunkedArray | pa.Array = fetched.column(step.fetch_label)
        if label.type != _U64:
            label = pc.cast(label, _U64)
        if step.width:
            if step.shift:
                label = pc.shift_right(label, pa.scalar(step.shift, _U64))
            label = pc.bit_wise_and(label, pa.scalar((1 << step.width) - 1, _U64))
        if step.normalise:
            zero = pc.fill_null(pc.equal(label, pa.scalar(0, _U64)), True)
            label = pc.if_else(zero, pa.scalar(self.unknown, _U64), label)
        if step.const:
            label = pc.bit_wise_or(label, pa.scalar(step.const, _U64))
        return label

    def _mask(
        self,
        step: PostStep,
        value: pa.ChunkedArray,
        label: pa.ChunkedArray | pa.Array,
        fetched: pa.Table,
    ) -> pa.Array | None:
        """The masked value: SQL's ``CASE WHEN (label & F1) <> 0 [OR label = 0] THEN m1 WHEN
        ... ELSE v END`` over the full ``label``. Each row's branch (the first whose bits meet
        its label; a NULL label meets none, as a NULL condition in SQL) is found with numpy;
        the result is one ``take`` from a pool holding the value, one placeholder / NULL cell
        and only the rows each computed branch needs (their redaction, their stored hash)."""
        as_text = _text(value) if step.as_text else value
        if as_text is None:
            return None
        text = _flat(as_text)
        if not step.masks:
            return text
        out_type = text.type
        n = len(text)
        lab = _flat(label)
        bits = np.asarray(lab.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.uint64)
        valid = None if lab.null_count == 0 else np.asarray(lab.is_valid())
        branch = np.full(n, len(step.masks), dtype=np.intp)
        for j in range(len(step.masks) - 1, -1, -1):  # the strongest branch is written last
            mask = step.masks[j][1]
            hit = (bits & np.uint64(mask)) != 0
            if mask & self.unknown:  # a label of 0 has no recorded origin: unknown
                hit |= bits == 0
            if valid is not None:
                hit &= valid
            branch[hit] = j
        index = np.arange(n, dtype=np.int64)
        pieces: list[pa.Array] = [text]
        offset = n
        for j, (strategy, _) in enumerate(step.masks):
            rows = np.flatnonzero(branch == j)
            if rows.size == 0:
                continue
            piece = self._branch(strategy, text, rows, out_type, step, fetched)
            if len(piece) == 1 and strategy in ("nullify", "placeholder"):
                index[rows] = offset
            else:
                index[rows] = offset + np.arange(rows.size, dtype=np.int64)
            pieces.append(piece)
            offset += len(piece)
        if len(pieces) == 1:
            return text
        result: pa.Array = pa.concat_arrays(pieces).take(pa.array(index))
        return result

    def _branch(
        self,
        strategy: str,
        text: pa.Array,
        rows: np.ndarray,
        out_type: pa.DataType,
        step: PostStep,
        fetched: pa.Table,
    ) -> pa.Array:
        """The cells of one mask branch: one cell for ``nullify`` / ``placeholder``, else one
        per row of ``rows`` (positions in the fetched result)."""
        if strategy == "nullify":
            return pa.nulls(1, out_type)
        if strategy == "placeholder":
            return pa.array([self.placeholder], out_type)
        taken = pa.array(rows)
        if strategy == "redact":
            # SUBSTRING(CAST(v AS TEXT), 1, 1) || tail: the first code point kept, the rest
            # replaced by the tail ('' gives the tail alone); NULL stays NULL
            redacted: pa.Array = pc.utf8_replace_slice(text.take(taken), 1, _END, self.redact_tail)
            return redacted
        if step.hash_column is None:
            raise AssertionError(f"plan step {step.name}: a hash branch without a stored hash")
        column = _flat(fetched.column(step.hash_column)).take(taken)
        return column if column.type == out_type else pc.cast(column, out_type)


def _flat(a: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One contiguous array (a single chunk is taken as it is, without a copy)."""
    if isinstance(a, pa.ChunkedArray):
        if a.num_chunks == 1:
            return a.chunk(0)
        return a.combine_chunks()
    return a


def _text(value: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array | None:
    """``CAST(value AS TEXT)`` as DuckDB computes it, for the types whose text form pyarrow
    gives identically (strings, integers); None for any other type."""
    t = value.type
    if pa.types.is_string(t):
        return value
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pc.cast(value, pa.string())
    if pa.types.is_integer(t):
        return pc.cast(value, pa.string())
    return None

"""Policy -> SQL: lineage of every output column, provenance companions, masks and row filters.

See :func:`rewrite` (policy-aware rewrite, DuckDB, Spark and PostgreSQL dialects; for a DuckDB
``SELECT`` also its :class:`ExecutionPlan`), :func:`lineage`,
:class:`SchemaRegistry` (which column holds which data category and where its label lives) and
:class:`QueryPolicy` (the decision point bound to one query). Explicit and implicit flows
(Denning 1976) are both labelled and enforced; see ``docs/dataplane.md``.
"""

from provguard.sqlgen.errors import LineageError, QueryError, QueryRefused
from provguard.sqlgen.keyed import HASH_KEY_ENV, hmac_hex
from provguard.sqlgen.plan import ExecutionPlan, PostStep
from provguard.sqlgen.rewrite import (
    DIALECTS,
    PLACEHOLDER,
    REDACT_TAIL,
    ColumnLineage,
    ControlFilter,
    OutputColumn,
    Rewritten,
    label_type,
    lineage,
    rewrite,
)
from provguard.sqlgen.schema import (
    ORIGINS_SUFFIX,
    PROFILES,
    ROW_LABEL,
    ColumnSpec,
    RowLabelSpec,
    RowSpec,
    SchemaRegistry,
    TableSpec,
    default_schema,
    job_schema,
)
from provguard.sqlgen.verdict import STRATEGIES, ColumnVerdict, QueryPolicy, strongest

__all__ = [
    "DIALECTS",
    "HASH_KEY_ENV",
    "ORIGINS_SUFFIX",
    "PLACEHOLDER",
    "PROFILES",
    "REDACT_TAIL",
    "ROW_LABEL",
    "STRATEGIES",
    "ColumnLineage",
    "ColumnSpec",
    "ColumnVerdict",
    "ControlFilter",
    "ExecutionPlan",
    "LineageError",
    "OutputColumn",
    "PostStep",
    "QueryError",
    "QueryPolicy",
    "QueryRefused",
    "Rewritten",
    "RowLabelSpec",
    "RowSpec",
    "SchemaRegistry",
    "TableSpec",
    "default_schema",
    "hmac_hex",
    "job_schema",
    "label_type",
    "lineage",
    "rewrite",
    "strongest",
]

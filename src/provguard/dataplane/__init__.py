"""The data plane: labelled tables, policy-aware queries (DuckDB, Spark, PostgreSQL; Arrow,
pandas and Polars frames), keyed hashes stored at load time (:mod:`provguard.dataplane.hashes`),
declassification."""

from provguard.dataplane.hashes import stored_hash_select, with_stored_hashes
from provguard.dataplane.store import (
    DeclassifyResult,
    LabelledStore,
    QueryResult,
    query_frames,
    query_polars,
)

__all__ = [
    "DeclassifyResult",
    "LabelledStore",
    "QueryResult",
    "query_frames",
    "query_polars",
    "stored_hash_select",
    "with_stored_hashes",
]

"""The data plane: labelled tables, policy-aware queries (DuckDB, Spark, PostgreSQL; Arrow,
pandas and Polars frames), declassification."""

from provguard.dataplane.store import (
    DeclassifyResult,
    LabelledStore,
    QueryResult,
    query_frames,
    query_polars,
)

__all__ = ["DeclassifyResult", "LabelledStore", "QueryResult", "query_frames", "query_polars"]

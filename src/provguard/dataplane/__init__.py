"""The data plane: labelled tables, policy-aware queries (DuckDB, Spark), declassification."""

from provguard.dataplane.store import (
    DeclassifyResult,
    LabelledStore,
    QueryResult,
    query_frames,
)

__all__ = ["DeclassifyResult", "LabelledStore", "QueryResult", "query_frames"]

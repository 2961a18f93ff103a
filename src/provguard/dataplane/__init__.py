"""The data plane: labelled tables, policy-aware queries (DuckDB, Spark, PostgreSQL; Arrow,
pandas and Polars frames), keyed hashes stored at load time (:mod:`provguard.dataplane.hashes`),
the policy's masks stored at load time (:mod:`provguard.dataplane.masks`), declassification."""

from provguard.dataplane.hashes import stored_hash_select, with_stored_hashes
from provguard.dataplane.masks import (
    drop_masks_select,
    mask_fingerprints,
    normalised_labels_select,
    stored_mask_select,
    with_stored_masks,
)
from provguard.dataplane.store import (
    DeclassifyResult,
    LabelledStore,
    QueryResult,
    query_frames,
    query_polars,
    run_duckdb,
)

__all__ = [
    "DeclassifyResult",
    "LabelledStore",
    "QueryResult",
    "drop_masks_select",
    "mask_fingerprints",
    "normalised_labels_select",
    "query_frames",
    "query_polars",
    "run_duckdb",
    "stored_hash_select",
    "stored_mask_select",
    "with_stored_hashes",
    "with_stored_masks",
]

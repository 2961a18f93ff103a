"""Ingest: give every profile value a provenance label from the grant it arrived through.

A value whose source is ``provider`` carries the origin of the grant's provider (``wechat``/``qq``)
and the grant id; a value the user typed carries ``user_input``; a provider-sourced value whose
grant is not in the registry carries ``unknown`` (fail closed: policies decide what unknown gets).
Labels are stored as UBIGINT bitmasks of the :class:`~provguard.provenance.OriginRegistry`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from provguard.provenance import UNKNOWN, OriginRegistry

LABELLED_PROFILE_SCHEMA = pa.schema(
    [
        ("app_id", pa.string()),
        ("subject_id", pa.int64()),
        ("account_id", pa.string()),
        ("handle", pa.string()),
        ("handle_origins", pa.uint64()),
        ("handle_grant", pa.string()),
        ("avatar_key", pa.string()),
        ("avatar_origins", pa.uint64()),
        ("avatar_grant", pa.string()),
        ("grant_id", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)


def _labels(
    source: pa.ChunkedArray, grant_provider: pa.ChunkedArray, registry: OriginRegistry
) -> tuple[pa.Array, pa.Array]:
    """Origins mask (uint64, one per row) for one value column, and the grant column to keep."""
    sources = source.to_numpy(zero_copy_only=False)
    providers = grant_provider.to_numpy(zero_copy_only=False)
    masks = np.zeros(len(sources), dtype=np.uint64)
    is_user = sources == "user_input"
    is_provider = sources == "provider"
    masks[is_user] = np.uint64(registry.mask(["user_input"]))
    for name in sorted({p for p in providers[is_provider] if p is not None}):
        masks[is_provider & (providers == name)] = np.uint64(registry.mask([name]))
    no_origin = masks == 0  # provider value with no known grant, or an unrecorded source
    masks[no_origin] = np.uint64(registry.mask([UNKNOWN]))
    return pa.array(masks, pa.uint64()), pa.array(is_provider)


def label_profiles(profiles: pa.Table, grants: pa.Table, registry: OriginRegistry) -> pa.Table:
    """Labelled app profiles.

    ``profiles``: the sandbox ``app_profiles`` schema (app_id, subject_id, account_id, handle,
    handle_source, avatar_key, avatar_source, grant_id, created_at). ``grants``: grant_id,
    provider. Returns a table with :data:`LABELLED_PROFILE_SCHEMA`, one row per profile, same order.
    """
    provider_of = dict(
        zip(
            grants.column("grant_id").to_pylist(),
            grants.column("provider").to_pylist(),
            strict=True,
        )
    )
    grant_ids = profiles.column("grant_id").to_pylist()
    grant_provider = pa.chunked_array(
        [pa.array([provider_of.get(g) for g in grant_ids], pa.string())]
    )
    h_mask, h_from_grant = _labels(profiles.column("handle_source"), grant_provider, registry)
    a_mask, a_from_grant = _labels(profiles.column("avatar_source"), grant_provider, registry)
    grant_col = profiles.column("grant_id").combine_chunks()
    null = pa.nulls(len(profiles), pa.string())
    return pa.table(
        {
            "app_id": profiles.column("app_id"),
            "subject_id": profiles.column("subject_id"),
            "account_id": profiles.column("account_id"),
            "handle": profiles.column("handle"),
            "handle_origins": h_mask,
            "handle_grant": pc.if_else(h_from_grant, grant_col, null),
            "avatar_key": profiles.column("avatar_key"),
            "avatar_origins": a_mask,
            "avatar_grant": pc.if_else(a_from_grant, grant_col, null),
            "grant_id": grant_col,
            "created_at": profiles.column("created_at"),
        },
        schema=LABELLED_PROFILE_SCHEMA,
    )

"""The pyarrow schemas of the sandbox platform tables, and the dates of the story.

Every table of :class:`provguard.sandbox.platform.Platform` has exactly the schema below (names,
order, types, nullability); :func:`check_schema` enforces it. Timestamps are microseconds, UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

import pyarrow as pa

__all__ = [
    "APPS",
    "APP_PROFILES",
    "DOUYIN_EPOCH",
    "DUOSHAN_LAUNCH",
    "EDGES",
    "GRANTS",
    "ORDER_DATE",
    "PICTURES",
    "PROVIDER_PROFILES",
    "SCHEMAS",
    "SNAPSHOT",
    "SUBJECTS",
    "TABLE_NAMES",
    "TIMESTAMP",
    "TRANSFERS",
    "check_schema",
]

TIMESTAMP: Final = pa.timestamp("us", tz="UTC")

DOUYIN_EPOCH: Final = datetime(2017, 1, 1, tzinfo=UTC)
"""Earliest douyin account / grant in the sandbox."""
DUOSHAN_LAUNCH: Final = datetime(2019, 1, 15, tzinfo=UTC)
"""Duoshan launch: no duoshan account or transfer is older."""
ORDER_DATE: Final = datetime(2019, 3, 19, 16, tzinfo=UTC)
"""The injunction's effective date, 2019-03-20 00:00 in Asia/Shanghai (the bundle's time zone);
transfers first used before it are grandfathered."""
SNAPSHOT: Final = datetime(2019, 6, 30, tzinfo=UTC)
"""Default snapshot time of the platform: nothing in it is later."""


def _s(*fields: pa.Field) -> pa.Schema:
    return pa.schema(list(fields))


SUBJECTS: Final = _s(
    pa.field("subject_id", pa.int64(), nullable=False),
    pa.field("real_name", pa.string(), nullable=False),
    pa.field("login", pa.string(), nullable=False),
)
PROVIDER_PROFILES: Final = _s(
    pa.field("provider", pa.string(), nullable=False),
    pa.field("subject_id", pa.int64(), nullable=False),
    pa.field("unionid", pa.string(), nullable=False),
    pa.field("nickname", pa.string(), nullable=False),
    pa.field("avatar_key", pa.string(), nullable=False),
)
APPS: Final = _s(
    pa.field("app_id", pa.string(), nullable=False),
    pa.field("name", pa.string(), nullable=False),
    pa.field("controller_id", pa.string(), nullable=False),
    pa.field("controller_name", pa.string(), nullable=False),
)
GRANTS: Final = _s(
    pa.field("grant_id", pa.string(), nullable=False),
    pa.field("subject_id", pa.int64(), nullable=False),
    pa.field("provider", pa.string(), nullable=False),
    pa.field("app_id", pa.string(), nullable=False),
    pa.field("openid", pa.string(), nullable=False),
    pa.field("unionid", pa.string(), nullable=False),
    pa.field("scopes", pa.string(), nullable=False),
    pa.field("granted_at", TIMESTAMP, nullable=False),
    pa.field("status", pa.string(), nullable=False),
)
APP_PROFILES: Final = _s(
    pa.field("app_id", pa.string(), nullable=False),
    pa.field("subject_id", pa.int64(), nullable=False),
    pa.field("account_id", pa.string(), nullable=False),
    pa.field("handle", pa.string(), nullable=False),
    pa.field("handle_source", pa.string(), nullable=False),
    pa.field("handle_edit", pa.string(), nullable=False),
    pa.field("avatar_key", pa.string(), nullable=False),
    pa.field("avatar_source", pa.string(), nullable=False),
    pa.field("avatar_edit", pa.string(), nullable=False),
    pa.field("grant_id", pa.string(), nullable=True),
    pa.field("created_at", TIMESTAMP, nullable=False),
    pa.field("handle_is_real_name", pa.bool_(), nullable=False),
)
TRANSFERS: Final = _s(
    pa.field("transfer_id", pa.string(), nullable=False),
    pa.field("grant_id", pa.string(), nullable=False),
    pa.field("subject_id", pa.int64(), nullable=False),
    pa.field("provider", pa.string(), nullable=False),
    pa.field("from_app", pa.string(), nullable=False),
    pa.field("to_app", pa.string(), nullable=False),
    pa.field("first_used_at", TIMESTAMP, nullable=False),
)
EDGES: Final = _s(
    pa.field("src", pa.int64(), nullable=False),
    pa.field("dst", pa.int64(), nullable=False),
)
PICTURES: Final = _s(
    pa.field("avatar_key", pa.string(), nullable=False),
    pa.field("format", pa.string(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("data", pa.binary(), nullable=False),
)

SCHEMAS: Final[dict[str, pa.Schema]] = {
    "subjects": SUBJECTS,
    "provider_profiles": PROVIDER_PROFILES,
    "apps": APPS,
    "grants": GRANTS,
    "app_profiles": APP_PROFILES,
    "transfers": TRANSFERS,
    "edges": EDGES,
    "pictures": PICTURES,
}
"""Table name → schema, in the order the tables are written."""

TABLE_NAMES: Final[tuple[str, ...]] = tuple(SCHEMAS)


def check_schema(name: str, table: pa.Table) -> None:
    """Raise ``ValueError`` unless ``table`` has exactly the schema of table ``name``.

    Field names, order, types and nullability must match; schema metadata is ignored.
    """
    want = SCHEMAS[name]
    got = table.schema.remove_metadata()
    if not got.equals(want):
        raise ValueError(f"table {name!r} has schema\n{got}\nexpected\n{want}")

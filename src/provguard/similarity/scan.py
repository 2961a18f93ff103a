"""The profile-match scan: which app profiles still copy the provider's handle or picture.

This is the check behind Duoshan's March 2019 notice (DESIGN.md section 1): a user whose app
handle or profile picture is the same as on WeChat/QQ is asked to change one of them. The scan
compares every app profile with the provider's copy of the same data subject.

Rules (v1):

- ``handle_exact``: the app handle and the provider nickname are the identical string.
- ``handle_normalized``: they are equal after :func:`~provguard.similarity.handles.normalize_handle`
  (v1: format-character removal, Unicode compatibility caseless form, whitespace) but not
  identical. ``handle_exact`` and ``handle_normalized`` are never both true.
- A handle that is null, or *blank* (empty after normalisation, e.g. only spaces or zero-width
  characters), never matches: two empty handles are not a copy.
- ``picture_distance``: Hamming distance (0..256 bits) between the PDQ hashes of the two
  pictures; null when either side has no picture or no hash. ``picture_equal`` is
  ``picture_distance == 0`` ("picture hash equality is enough" in v1); a later version can
  threshold on ``picture_distance`` (Meta suggests <= 31) without rescanning.
- ``any_match = handle_exact or handle_normalized or picture_equal``.

Which rows come out: one row per (app profile, provider copy of the same ``subject_id``) -- an
inner join. A subject with no provider copy produces **no row**; a subject with copies at two
providers (WeChat and QQ) produces two rows. Rows are sorted by (app_id, subject_id, provider).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from provguard.errors import InputError
from provguard.similarity.handles import normalize_handles
from provguard.similarity.pictures import PDQ_BYTES, hamming_rows, pack_hashes

SCAN_SCHEMA = pa.schema(
    [
        pa.field("app_id", pa.string(), nullable=False),
        pa.field("subject_id", pa.int64(), nullable=False),
        pa.field("provider", pa.string(), nullable=False),
        pa.field("handle_exact", pa.bool_(), nullable=False),
        pa.field("handle_normalized", pa.bool_(), nullable=False),
        pa.field("picture_equal", pa.bool_(), nullable=False),
        pa.field("picture_distance", pa.int32(), nullable=True),
        pa.field("any_match", pa.bool_(), nullable=False),
    ]
)
"""Schema of the table :func:`scan_profiles` returns."""

PROFILE_COLUMNS = ("app_id", "subject_id", "handle", "avatar_key")
PROVIDER_COLUMNS = ("provider", "subject_id", "nickname", "avatar_key")
HASH_COLUMNS = ("avatar_key", "pdq")


def _require(table: pa.Table, columns: tuple[str, ...], what: str) -> None:
    if not isinstance(table, pa.Table):
        raise InputError(f"{what} must be a pyarrow.Table, got {type(table).__name__}")
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise InputError(f"{what} lacks column(s) {', '.join(missing)}")


def _cast(col: pa.ChunkedArray, to: pa.DataType, what: str) -> pa.ChunkedArray:
    try:
        return col.cast(to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise InputError(f"{what} cannot be read as {to}: {exc}") from exc


def _check_unique(table: pa.Table, keys: list[str], what: str) -> None:
    counts = table.group_by(keys).aggregate([([], "count_all")])
    if counts.num_rows != table.num_rows:
        raise InputError(f"{what} has duplicate rows for key ({', '.join(keys)})")


def _hash_lookup(
    picture_hashes: Mapping[str, bytes] | pa.Table,
) -> tuple[pa.Array, np.ndarray]:
    """Return (keys, packed hashes (M, 32) uint8); row i of the array is the hash of key i."""
    if isinstance(picture_hashes, pa.Table):
        _require(picture_hashes, HASH_COLUMNS, "picture_hashes")
        keys_col = _cast(picture_hashes.column("avatar_key"), pa.string(), "avatar_key")
        hash_col = picture_hashes.column("pdq")
        present = pc.and_(pc.is_valid(keys_col), pc.is_valid(hash_col))
        keys = keys_col.filter(present).to_pylist()
        values = hash_col.filter(present).to_pylist()
    else:
        keys = list(picture_hashes.keys())
        values = list(picture_hashes.values())
    for k in keys:
        if not isinstance(k, str):
            raise InputError("picture_hashes keys must be avatar_key strings")
    if len(set(keys)) != len(keys):
        raise InputError("picture_hashes has duplicate avatar_key values")
    for v in values:
        if not isinstance(v, bytes | bytearray) or len(v) != PDQ_BYTES:
            raise InputError(f"every PDQ hash in picture_hashes must be {PDQ_BYTES} bytes")
    return pa.array(keys, type=pa.string()), pack_hashes(values)


def _lookup_index(keys: pa.ChunkedArray, value_set: pa.Array) -> np.ndarray:
    idx = pc.index_in(keys, value_set=value_set)
    return np.asarray(pc.fill_null(idx, -1).to_numpy(), dtype=np.int64)


def _bool(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(col, False).to_numpy(zero_copy_only=False), dtype=bool)


def scan_profiles(
    profiles: pa.Table,
    provider_copies: pa.Table,
    picture_hashes: Mapping[str, bytes] | pa.Table,
) -> pa.Table:
    """Compare each app profile with the provider's copy of the same data subject.

    Args:
        profiles: the client apps' profiles, one row per (app_id, subject_id); columns
            ``app_id`` (str), ``subject_id`` (integer), ``handle`` (str, nullable),
            ``avatar_key`` (str, nullable); other columns are ignored.
        provider_copies: what the providers hold, one row per (provider, subject_id); columns
            ``provider`` (str), ``subject_id`` (integer), ``nickname`` (str, nullable),
            ``avatar_key`` (str, nullable); other columns are ignored.
        picture_hashes: PDQ hash (32 bytes) per avatar key, either a mapping or a table with
            columns ``avatar_key`` (str) and ``pdq`` (binary / fixed_size_binary(32)). A key
            missing here means "no hash": its picture_distance is null.

    Returns:
        A table with :data:`SCAN_SCHEMA` (see the module docstring for the rules and which rows
        are produced), sorted by (app_id, subject_id, provider).

    Raises:
        InputError: a missing column, a column of the wrong type, duplicate key rows, a hash
            that is not 32 bytes.
    """
    _require(profiles, PROFILE_COLUMNS, "profiles")
    _require(provider_copies, PROVIDER_COLUMNS, "provider_copies")
    left = pa.table(
        {
            "app_id": _cast(profiles.column("app_id"), pa.string(), "profiles.app_id"),
            "subject_id": _cast(profiles.column("subject_id"), pa.int64(), "profiles.subject_id"),
            "handle": _cast(profiles.column("handle"), pa.string(), "profiles.handle"),
            "app_avatar_key": _cast(
                profiles.column("avatar_key"), pa.string(), "profiles.avatar_key"
            ),
        }
    )
    right = pa.table(
        {
            "provider": _cast(
                provider_copies.column("provider"), pa.string(), "provider_copies.provider"
            ),
            "subject_id": _cast(
                provider_copies.column("subject_id"), pa.int64(), "provider_copies.subject_id"
            ),
            "nickname": _cast(
                provider_copies.column("nickname"), pa.string(), "provider_copies.nickname"
            ),
            "provider_avatar_key": _cast(
                provider_copies.column("avatar_key"), pa.string(), "provider_copies.avatar_key"
            ),
        }
    )
    for table, keys, what in (
        (left, ["app_id", "subject_id"], "profiles"),
        (right, ["provider", "subject_id"], "provider_copies"),
    ):
        if table.num_rows and (
            table.column(keys[0]).null_count or table.column("subject_id").null_count
        ):
            raise InputError(f"{what} has null values in ({', '.join(keys)})")
        _check_unique(table, keys, what)
    hash_keys, packed = _hash_lookup(picture_hashes)

    if left.num_rows == 0 or right.num_rows == 0:
        return SCAN_SCHEMA.empty_table()
    joined = left.join(right, keys="subject_id", join_type="inner")
    joined = joined.sort_by(
        [("app_id", "ascending"), ("subject_id", "ascending"), ("provider", "ascending")]
    )
    if joined.num_rows == 0:
        return SCAN_SCHEMA.empty_table()

    handle = joined.column("handle")
    nickname = joined.column("nickname")
    norm_handle = normalize_handles(handle)
    norm_nick = normalize_handles(nickname)
    nonblank = _bool(pc.and_(pc.not_equal(norm_handle, ""), pc.not_equal(norm_nick, "")))
    exact = _bool(pc.equal(handle, nickname)) & nonblank
    normalized = _bool(pc.equal(norm_handle, norm_nick)) & nonblank & ~exact

    ia = _lookup_index(joined.column("app_avatar_key"), hash_keys)
    ib = _lookup_index(joined.column("provider_avatar_key"), hash_keys)
    has_both = (ia >= 0) & (ib >= 0)
    distance = np.zeros(joined.num_rows, dtype=np.int32)
    if has_both.any():
        distance[has_both] = hamming_rows(packed[ia[has_both]], packed[ib[has_both]])
    picture_equal = has_both & (distance == 0)
    any_match = exact | normalized | picture_equal

    return pa.table(
        [
            joined.column("app_id"),
            joined.column("subject_id"),
            joined.column("provider"),
            pa.array(exact),
            pa.array(normalized),
            pa.array(picture_equal),
            pa.array(distance, mask=~has_both, type=pa.int32()),
            pa.array(any_match),
        ],
        schema=SCAN_SCHEMA,
    )

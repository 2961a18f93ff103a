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

Columns added in v2 (same rows; v1 columns unchanged):

- ``handle_similarity`` (0..1), ``handle_match_kind`` and ``handle_match``: the v2 handle match
  (:func:`provguard.similarity.match.score_handles`: match keys with emoji, decorations,
  traditional script and confusables folded; pinyin; an added suffix of a known shape or a
  symmetric wrapper, reported as ``contained``; rapidfuzz similarity). ``handle_match_kind`` is
  ``"none"`` when there is no match.
- ``picture_distance_min``: when the hash table has a ``dihedral`` column
  (:func:`provguard.similarity.pictures.hash_picture_table`: centre-square crop, 8 variants), the
  least Hamming distance between the app picture and any variant of the provider picture; else
  equal to ``picture_distance``. Null when either side has no hash.
- ``picture_quality_ok``: both PDQ quality scores are ``>= min_quality`` (true when the table has
  no ``quality`` column: quality is then not gated).
- ``picture_match``: ``picture_distance_min <= picture_radius`` and ``picture_quality_ok`` and,
  when the table has a ``chroma`` column, the L1 chromaticity distance of the two pictures is
  ``<= max_chroma``.
- ``copy_match = handle_match or picture_match``.

Which rows come out: one row per (app profile, provider copy of the same ``subject_id``) -- an
inner join. A subject with no provider copy produces **no row**; a subject with copies at two
providers (WeChat and QQ) produces two rows. Rows are sorted by (app_id, subject_id, provider).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from provguard.errors import InputError
from provguard.similarity.handles import normalize_handles
from provguard.similarity.match import CALIBRATED, HandleThresholds, score_handles
from provguard.similarity.pictures import (
    DIHEDRAL,
    PDQ_BYTES,
    chroma_distance,
    hamming_rows,
    min_dihedral_distance,
    pack_hashes,
)

PICTURE_RADIUS = 36
"""Default picture match radius in bits (of 256), calibrated jointly with
:data:`PICTURE_MAX_CHROMA` and :data:`PICTURE_QUALITY_MIN` on the seed-7 sandbox
(``bench/scan_labelled.py --calibrate``: best least recall over resize / recompress / mirror /
square crop at audit precision >= 0.999; PDQ reference: 31)."""

PICTURE_MAX_CHROMA = 0.03
"""Default largest L1 chromaticity distance (0..2) of a picture match (calibrated, see above)."""

PICTURE_QUALITY_MIN = 0
"""Default PDQ quality floor of a picture match (calibrated, see above: with the chromaticity
gate, any floor above 0 lost recall without gaining precision on the labelled set)."""

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
        pa.field("handle_similarity", pa.float64(), nullable=False),
        pa.field("handle_match_kind", pa.string(), nullable=False),
        pa.field("handle_match", pa.bool_(), nullable=False),
        pa.field("picture_distance_min", pa.int32(), nullable=True),
        pa.field("picture_quality_ok", pa.bool_(), nullable=False),
        pa.field("picture_match", pa.bool_(), nullable=False),
        pa.field("copy_match", pa.bool_(), nullable=False),
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


@dataclass(frozen=True)
class _Hashes:
    keys: pa.Array
    packed: np.ndarray  # (M, 32) uint8
    quality: np.ndarray | None  # (M,) int
    dihedral: np.ndarray | None  # (M, 8, 32) uint8
    chroma: np.ndarray | None  # (M, 3) float


def _hash_lookup(picture_hashes: Mapping[str, bytes] | pa.Table) -> _Hashes:
    """Keys, packed hashes (M, 32) uint8 (row i = key i), and quality / dihedral if present."""
    quality: np.ndarray | None = None
    dihedral: np.ndarray | None = None
    chroma: np.ndarray | None = None
    if isinstance(picture_hashes, pa.Table):
        _require(picture_hashes, HASH_COLUMNS, "picture_hashes")
        keys_col = _cast(picture_hashes.column("avatar_key"), pa.string(), "avatar_key")
        hash_col = picture_hashes.column("pdq")
        present = pc.and_(pc.is_valid(keys_col), pc.is_valid(hash_col))
        keys = keys_col.filter(present).to_pylist()
        values = hash_col.filter(present).to_pylist()
        if "quality" in picture_hashes.column_names:
            q = _cast(picture_hashes.column("quality"), pa.int32(), "quality").filter(present)
            quality = np.asarray(pc.fill_null(q, -1).to_numpy(), dtype=np.int64)
        if "dihedral" in picture_hashes.column_names:
            d = picture_hashes.column("dihedral").filter(present).to_pylist()
            if any(
                not isinstance(v, bytes | bytearray) or len(v) != DIHEDRAL * PDQ_BYTES for v in d
            ):
                raise InputError(f"every dihedral value must be {DIHEDRAL * PDQ_BYTES} bytes")
            dihedral = (
                np.frombuffer(b"".join(d), dtype=np.uint8).reshape(len(d), DIHEDRAL, PDQ_BYTES)
                if d
                else np.zeros((0, DIHEDRAL, PDQ_BYTES), dtype=np.uint8)
            )
        if "chroma" in picture_hashes.column_names:
            c = picture_hashes.column("chroma").filter(present).to_pylist()
            if any(v is None or len(v) != 3 for v in c):
                raise InputError("every chroma value must be a list of 3 numbers")
            chroma = np.asarray(c, dtype=np.float64).reshape(len(c), 3)
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
    return _Hashes(pa.array(keys, type=pa.string()), pack_hashes(values), quality, dihedral, chroma)


def _lookup_index(keys: pa.ChunkedArray, value_set: pa.Array) -> np.ndarray:
    idx = pc.index_in(keys, value_set=value_set)
    return np.asarray(pc.fill_null(idx, -1).to_numpy(), dtype=np.int64)


def _bool(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(col, False).to_numpy(zero_copy_only=False), dtype=bool)


def scan_profiles(
    profiles: pa.Table,
    provider_copies: pa.Table,
    picture_hashes: Mapping[str, bytes] | pa.Table,
    *,
    thresholds: HandleThresholds = CALIBRATED,
    picture_radius: int = PICTURE_RADIUS,
    min_quality: int = PICTURE_QUALITY_MIN,
    max_chroma: float = PICTURE_MAX_CHROMA,
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
            missing here means "no hash": its picture_distance is null. Optional columns
            ``quality`` (int, 0..100) and ``dihedral`` (8 x 32 bytes) enable the quality gate
            and mirror/rotation matching (:func:`~provguard.similarity.pictures.hash_picture_table`
            makes all four); an optional ``chroma`` column (3 floats) enables the chromaticity
            gate.
        thresholds: handle match thresholds (default: calibrated).
        picture_radius: picture match radius in bits (0..256).
        min_quality: PDQ quality floor (0..100) for a picture match.
        max_chroma: largest L1 chromaticity distance (0..2) for a picture match.

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
    if not 0 <= picture_radius <= PDQ_BYTES * 8:
        raise InputError("picture_radius must be in 0..256")
    if not 0.0 <= max_chroma <= 2.0:
        raise InputError("max_chroma must be in 0..2")
    hashes = _hash_lookup(picture_hashes)
    hash_keys, packed = hashes.keys, hashes.packed

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

    scores = score_handles(handle, nickname, thresholds, v1_app=norm_handle, v1_provider=norm_nick)
    dmin = distance.copy()
    if hashes.dihedral is not None and has_both.any():
        dmin[has_both] = min_dihedral_distance(packed[ia[has_both]], hashes.dihedral[ib[has_both]])
    quality_ok = np.ones(joined.num_rows, dtype=bool)
    if hashes.quality is not None:
        qa = np.where(ia >= 0, hashes.quality[np.maximum(ia, 0)], -1)
        qb = np.where(ib >= 0, hashes.quality[np.maximum(ib, 0)], -1)
        quality_ok = has_both & (qa >= min_quality) & (qb >= min_quality)
    picture_match = has_both & quality_ok & (dmin <= picture_radius)
    if hashes.chroma is not None and picture_match.any():
        sel = np.flatnonzero(picture_match)
        close = chroma_distance(hashes.chroma[ia[sel]], hashes.chroma[ib[sel]]) <= max_chroma
        picture_match[sel[~close]] = False

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
            pa.array(scores.similarity, type=pa.float64()),
            pa.array(scores.match_kind.tolist(), type=pa.string()),
            pa.array(scores.match),
            pa.array(dmin, mask=~has_both, type=pa.int32()),
            pa.array(quality_ok),
            pa.array(picture_match),
            pa.array(scores.match | picture_match),
        ],
        schema=SCAN_SCHEMA,
    )

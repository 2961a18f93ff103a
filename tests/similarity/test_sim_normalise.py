"""v3 picture hashing: 64x64 Lanczos normalisation before PDQ and the chromaticity gate."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from skimage import data

from provguard.errors import InputError
from provguard.similarity.pictures import (
    NORMALISED_SIDE,
    chroma_distance,
    chromaticity,
    hash_picture_table,
    min_dihedral_distance,
    normalise_square,
    pdq_hash_dihedral,
)
from provguard.similarity.scan import PICTURE_MAX_CHROMA, PICTURE_RADIUS, scan_profiles


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _avatars() -> list[Image.Image]:
    """Small (96-160 px) crops of bundled photos, like the sandbox avatars."""
    out = []
    rng = np.random.default_rng(3)
    for name in ("astronaut", "chelsea", "coffee", "rocket", "camera", "brick"):
        arr = np.asarray(getattr(data, name)())
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=2)
        img = Image.fromarray(np.ascontiguousarray(arr[:, :, :3]))
        w, h = int(rng.integers(96, 161)), int(rng.integers(96, 161))
        side = min(img.size) * 0.6
        out.append(
            img.resize((w, h), Image.Resampling.BILINEAR, box=(10, 10, 10 + side, 10 + side))
        )
    return out


def _dist(a: bytes, b: bytes) -> int:
    t = hash_picture_table(pa.table({"avatar_key": ["a", "b"], "data": [a, b]}))
    dih = np.frombuffer(b"".join(t.column("dihedral").to_pylist()), np.uint8).reshape(2, 8, 32)
    return int(min_dihedral_distance(dih[1:, 0], dih[:1])[0])


def test_normalise_square_shape_and_identity() -> None:
    img = np.zeros((120, 90, 3), np.uint8)
    img[:, :45] = 200
    out = normalise_square(img)
    assert out.shape == (NORMALISED_SIDE, NORMALISED_SIDE, 3) and out.flags.c_contiguous
    sq = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert np.array_equal(normalise_square(sq), sq)  # already 64x64: untouched
    with pytest.raises(InputError):
        normalise_square(img, 0)
    with pytest.raises(InputError):
        normalise_square(img[:, :, 0])


def test_resized_and_mirrored_small_avatars_stay_close() -> None:
    for img in _avatars():
        base = _jpeg(img)
        for edited in (
            img.resize(
                (round(img.width * 0.65), round(img.height * 0.65)), Image.Resampling.LANCZOS
            ),
            img.resize(
                (round(img.width * 1.45), round(img.height * 1.45)), Image.Resampling.LANCZOS
            ),
            img.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        ):
            assert _dist(base, _jpeg(edited)) <= PICTURE_RADIUS


def test_unnormalised_hash_differs_from_normalised() -> None:
    img = np.asarray(_avatars()[0])
    h64, _ = pdq_hash_dihedral(img)
    raw, _ = pdq_hash_dihedral(img, None)
    assert h64.shape == raw.shape == (8, 32)
    assert not np.array_equal(h64, raw)


def test_chromaticity_properties() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 200, (40, 50, 3), dtype=np.uint8)
    c = chromaticity(img)
    assert c.shape == (3,) and abs(float(c.sum()) - 1.0) < 1e-6
    # invariant under flips/rotation and uniform scaling (no clipping below 200 * 1.25)
    assert np.allclose(chromaticity(np.ascontiguousarray(img[:, ::-1])), c, atol=1e-6)
    assert np.allclose(chromaticity(np.ascontiguousarray(np.rot90(img))), c, atol=1e-6)
    brighter = np.round(img.astype(np.float64) * 1.25).astype(np.uint8)
    assert chroma_distance(chromaticity(brighter), c) < 0.005
    assert np.allclose(chromaticity(np.zeros((2, 2, 3), np.uint8)), 1 / 3)
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    blue = np.zeros((2, 2, 3), np.uint8)
    blue[..., 2] = 255
    assert chroma_distance(chromaticity(red), chromaticity(blue)) == pytest.approx(2.0)
    with pytest.raises(InputError):
        chroma_distance(np.zeros(2), np.zeros(2))


def test_scan_chroma_gate_rejects_a_retinted_copy() -> None:
    img = _avatars()[1]
    arr = np.asarray(img, np.float32) * np.array([1.25, 0.85, 0.8], np.float32)
    tinted = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    pics = pa.table(
        {"avatar_key": ["p", "same", "tint"], "data": [_jpeg(img), _jpeg(img, 50), _jpeg(tinted)]}
    )
    hashes = hash_picture_table(pics)
    assert hashes.column_names == ["avatar_key", "pdq", "quality", "dihedral", "chroma"]
    profiles = pa.table(
        {
            "app_id": ["a", "a"],
            "subject_id": [1, 2],
            "handle": ["x", "y"],
            "avatar_key": ["same", "tint"],
        }
    )
    prov = pa.table(
        {
            "provider": ["w", "w"],
            "subject_id": [1, 2],
            "nickname": ["q", "r"],
            "avatar_key": ["p", "p"],
        }
    )
    out = scan_profiles(profiles, prov, hashes)
    assert out.column("picture_match").to_pylist() == [True, False]
    # the tinted copy is near in PDQ (luminance); only the chromaticity gate tells them apart
    assert out.column("picture_distance_min").to_pylist()[1] <= PICTURE_RADIUS
    ungated = scan_profiles(profiles, prov, hashes, max_chroma=2.0)
    assert ungated.column("picture_match").to_pylist() == [True, True]
    assert PICTURE_MAX_CHROMA < 0.1
    with pytest.raises(InputError):
        scan_profiles(profiles, prov, hashes, max_chroma=3.0)

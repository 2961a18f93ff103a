from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from skimage import data

from provguard.errors import InputError
from provguard.similarity.pictures import (
    decode_image,
    hamming,
    hamming_rows,
    pack_hashes,
    pdq_hash,
)


def _photo(name: str) -> np.ndarray:
    """A bundled scikit-image test photo (no network)."""
    return np.asarray(getattr(data, name)())


def _encode(image: np.ndarray, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return _photo("astronaut")


def test_hash_shape_and_quality(astronaut: np.ndarray) -> None:
    h, q = pdq_hash(astronaut)
    assert isinstance(h, bytes) and len(h) == 32
    assert 50 <= q <= 100
    assert pdq_hash(astronaut.copy()) == (h, q)  # deterministic


def test_png_roundtrip_is_exact(astronaut: np.ndarray) -> None:
    png = _encode(astronaut, "PNG")
    decoded = decode_image(png)
    assert decoded.shape == astronaut.shape and decoded.dtype == np.uint8
    assert np.array_equal(decoded, astronaut)
    assert hamming(pdq_hash(decoded)[0], pdq_hash(astronaut)[0]) == 0


def test_identical_bytes_hash_equal(astronaut: np.ndarray) -> None:
    jpeg = _encode(astronaut, "JPEG", quality=85)
    assert pdq_hash(decode_image(jpeg))[0] == pdq_hash(decode_image(bytes(jpeg)))[0]


def test_near_duplicates_are_close_different_photos_far(astronaut: np.ndarray) -> None:
    h, _ = pdq_hash(astronaut)
    recompressed = decode_image(_encode(astronaut, "JPEG", quality=30))
    resized = np.asarray(Image.fromarray(astronaut).resize((160, 160), Image.Resampling.BILINEAR))
    both = decode_image(_encode(resized, "JPEG", quality=50))
    for edited in (recompressed, resized, both):
        assert hamming(h, pdq_hash(edited)[0]) <= 16
    for other in (_photo("chelsea"), _photo("coffee")):
        assert hamming(h, pdq_hash(np.asarray(other))[0]) >= 90
    # the two other photos are also far from each other
    assert hamming(pdq_hash(_photo("chelsea"))[0], pdq_hash(_photo("coffee"))[0]) >= 90


def test_grey_and_rgba_inputs_decode_to_rgb(astronaut: np.ndarray) -> None:
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)])
    assert np.array_equal(decode_image(_encode(rgba, "PNG")), astronaut)
    grey = decode_image(_encode(_photo("camera"), "PNG"))
    assert grey.shape == (512, 512, 3)


def test_decode_rejects_garbage() -> None:
    with pytest.raises(InputError):
        decode_image(b"not an image")
    with pytest.raises(InputError):
        decode_image("text")  # type: ignore[arg-type]


def test_pdq_rejects_bad_arrays(astronaut: np.ndarray) -> None:
    with pytest.raises(InputError):
        pdq_hash(astronaut[:, :, 0])
    with pytest.raises(InputError):
        pdq_hash(astronaut.astype(np.float32))


def test_hamming_and_packing() -> None:
    a = bytes(32)
    b = bytes([0xFF]) + bytes(30) + bytes([0x01])
    assert hamming(a, b) == 9
    assert hamming(b, b) == 0
    packed = pack_hashes([a, b, b])
    assert packed.shape == (3, 32) and packed.dtype == np.uint8
    assert hamming_rows(packed, packed[::-1]).tolist() == [9, 0, 9]
    assert hamming_rows(packed, packed[0]).tolist() == [0, 9, 9]
    assert pack_hashes([]).shape == (0, 32)
    with pytest.raises(InputError):
        hamming(a, b"short")
    with pytest.raises(InputError):
        pack_hashes([b"short"])
    with pytest.raises(InputError):
        hamming_rows(packed.astype(np.int64), packed)

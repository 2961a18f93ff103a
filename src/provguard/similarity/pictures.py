"""Profile-picture decoding and PDQ perceptual hashing.

PDQ is Meta's 256-bit perceptual hash for images (Meta/Facebook ThreatExchange, "The TMK+PDQF
Video-Hashing Algorithm and the PDQ Image Similarity Algorithm", 2019): luminance -> 64x64
downsample with a Jarosz tent filter -> 16x16 DCT -> threshold at the median. Two hashes of the
same picture after resize / recompression differ in a few bits; Meta suggests a Hamming distance
of <= 31 (of 256) as "the same picture" and discarding hashes whose quality is below 50 (flat,
featureless images). The hashing itself is the ``pdqhash`` package (a binding of the reference
C++ implementation).

Bit order: a hash is 32 bytes, big-endian, so ``hash.hex()`` is the 64-hex-digit string that the
reference implementation prints (word 15 first). Hashes of many pictures are packed as an
``(N, 32) uint8`` array (:func:`pack_hashes`).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pdqhash
import pyarrow as pa
from PIL import Image, ImageOps

from provguard.errors import InputError

PDQ_BYTES = 32
"""Length of a PDQ hash in bytes (256 bits)."""

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def decode_image(data: bytes) -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, WebP, GIF first frame, ...) to RGB pixels.

    The EXIF orientation tag, if any, is applied (a phone photo comes out upright). Palette,
    grey and CMYK images are converted to RGB; an alpha channel is dropped (transparent pixels
    keep their stored colour).

    Args:
        data: the encoded file contents.

    Returns:
        ``(H, W, 3) uint8`` array, C-contiguous.

    Raises:
        InputError: the bytes are not a decodable image (or exceed Pillow's decompression-bomb
            limit).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InputError(f"image data must be bytes, got {type(data).__name__}")
    try:
        with Image.open(io.BytesIO(bytes(data))) as img:
            img.load()
            upright = ImageOps.exif_transpose(img)
            rgb = upright.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError(f"cannot decode image: {exc}") from exc
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def pdq_hash(image: np.ndarray) -> tuple[bytes, int]:
    """PDQ hash of an RGB image.

    Args:
        image: ``(H, W, 3) uint8`` RGB pixels, H and W >= 1.

    Returns:
        ``(hash, quality)``: the 32-byte hash (see module docstring for bit order) and PDQ's
        quality score in 0..100 (below 50 the hash is unreliable).

    Raises:
        InputError: wrong shape or dtype.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise InputError("image must be a numpy uint8 array")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"image must have shape (H, W, 3), got {image.shape}")
    bits, quality = pdqhash.compute(np.ascontiguousarray(image))
    packed = np.packbits(np.asarray(bits, dtype=np.uint8))
    return packed.tobytes(), int(quality)


def _check_hash(h: bytes) -> None:
    if not isinstance(h, bytes | bytearray) or len(h) != PDQ_BYTES:
        raise InputError(f"a PDQ hash must be {PDQ_BYTES} bytes")


def hamming(a: bytes, b: bytes) -> int:
    """Number of differing bits (0..256) between two 32-byte hashes.

    Raises:
        InputError: either hash is not 32 bytes.
    """
    _check_hash(a)
    _check_hash(b)
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).bit_count()


def pack_hashes(hashes: Sequence[bytes]) -> np.ndarray:
    """Pack N 32-byte hashes into an ``(N, 32) uint8`` array (row i = hash i).

    Raises:
        InputError: a hash is not 32 bytes.
    """
    for h in hashes:
        _check_hash(h)
    if len(hashes) == 0:
        return np.zeros((0, PDQ_BYTES), dtype=np.uint8)
    buf = b"".join(bytes(h) for h in hashes)
    return np.frombuffer(buf, dtype=np.uint8).reshape(len(hashes), PDQ_BYTES).copy()


def hamming_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Hamming distance between two packed hash arrays.

    Args:
        a, b: ``(N, 32) uint8`` arrays (or one of them ``(32,)``, broadcast against the other).

    Returns:
        ``(N,) int64`` bits differing per row, 0..256.

    Raises:
        InputError: wrong dtype or last dimension.
    """
    for x in (a, b):
        if x.dtype != np.uint8 or x.shape[-1] != PDQ_BYTES or x.ndim not in (1, 2):
            raise InputError("packed hashes must be uint8 arrays of shape (N, 32)")
    xor = np.bitwise_xor(a, b)
    out: np.ndarray = _POPCOUNT[xor].sum(axis=-1, dtype=np.int64)
    return out


# --- v2: centre-square crop, dihedral variants, quality gate -----------------------------------

DIHEDRAL = 8
"""Number of dihedral variants of a picture (identity, 3 rotations, 4 reflections)."""

PDQ_QUALITY_MIN = 50
"""PDQ's reference quality floor (Meta, PDQ paper, 2019). The scan's calibrated floor is
:data:`provguard.similarity.scan.PICTURE_QUALITY_MIN` (the chromaticity gate replaces it)."""

NORMALISED_SIDE = 64
"""Side (pixels) the centre square is resampled to (Lanczos) before PDQ. PDQ's reference
downsamples to 64x64 with a Jarosz tent filter whose window is ``(side + 127) // 128`` pixels:
1 (no filtering) for 96-190 px avatars and an even, off-centre window for some larger sizes,
which makes resized and mirrored copies of small avatars drift by 30+ bits. Resampling to
exactly 64x64 with Pillow's symmetric Lanczos filter first makes PDQ's own filter the identity
(measured in docs/scanner.md: resize recall 0.58 -> 0.98, mirror 0.71 -> 0.93 at equal
precision)."""

CHROMA_CHANNELS = 3
"""Length of the chromaticity vector (r, g, b) / (r + g + b)."""


def centre_square(image: np.ndarray) -> np.ndarray:
    """The centred square of side ``min(H, W)`` of an ``(H, W, C)`` image (a view, no copy).

    An avatar cropped to a square by an app and the original then share this region, so their
    PDQ hashes stay close.

    Raises:
        InputError: ``image`` is not an ``(H, W, C)`` array with H, W >= 1.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or min(image.shape[:2]) < 1:
        raise InputError("image must be an (H, W, C) array with H, W >= 1")
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[top : top + side, left : left + side]


def normalise_square(image: np.ndarray, side: int = NORMALISED_SIDE) -> np.ndarray:
    """Centre square of an RGB image resampled to ``side x side`` (Pillow Lanczos).

    Args:
        image: ``(H, W, 3) uint8`` RGB pixels.
        side: output side in pixels (>= 1).

    Returns:
        ``(side, side, 3) uint8``, C-contiguous.

    Raises:
        InputError: wrong shape or dtype, ``side < 1``.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise InputError("image must be a numpy uint8 array")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"image must have shape (H, W, 3), got {image.shape}")
    if side < 1:
        raise InputError("side must be >= 1")
    square = Image.fromarray(np.ascontiguousarray(centre_square(image)))
    if square.size != (side, side):
        square = square.resize((side, side), Image.Resampling.LANCZOS)
    return np.ascontiguousarray(np.asarray(square, dtype=np.uint8))


def chromaticity(image: np.ndarray) -> np.ndarray:
    """Mean chromaticity ``(r, g, b) / (r + g + b)`` of an RGB image (averaged over pixels).

    Invariant under the dihedral group, resizing and uniform brightness scaling (up to
    clipping); it tells apart differently tinted views of one scene, which PDQ (luminance only)
    cannot.

    Args:
        image: ``(H, W, 3) uint8`` RGB pixels.

    Returns:
        ``(3,) float32`` summing to 1 (``(1/3, 1/3, 1/3)`` for a black image).

    Raises:
        InputError: wrong shape or dtype.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
        raise InputError("image must be an (H, W, 3) uint8 array")
    if image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"image must have shape (H, W, 3), got {image.shape}")
    mean = image.reshape(-1, 3).astype(np.float64).mean(axis=0)
    total = float(mean.sum())
    if total <= 0.0:
        return np.full(3, 1.0 / 3.0, dtype=np.float32)
    out: np.ndarray = (mean / total).astype(np.float32)
    return out


def chroma_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise L1 distance (0..2) between chromaticity vectors ``(..., 3)``.

    Raises:
        InputError: the last dimension is not 3.
    """
    if a.shape[-1] != CHROMA_CHANNELS or b.shape[-1] != CHROMA_CHANNELS:
        raise InputError("chromaticity arrays must have a last dimension of 3")
    out: np.ndarray = np.abs(a.astype(np.float64) - b.astype(np.float64)).sum(axis=-1)
    return out


def pdq_hash_dihedral(
    image: np.ndarray, side: int | None = NORMALISED_SIDE
) -> tuple[np.ndarray, int]:
    """PDQ hashes of the 8 dihedral variants of the centre square of an RGB image.

    Args:
        image: ``(H, W, 3) uint8`` RGB pixels.
        side: the centre square is first resampled to ``side x side`` (Lanczos;
            :func:`normalise_square`); ``None`` hashes it at its own size (the v2 behaviour).

    Returns:
        ``(hashes, quality)``: ``(8, 32) uint8`` packed hashes (row 0 is the picture itself,
        bit order as :func:`pdq_hash`; the rows follow ``pdqhash.compute_dihedral``: original,
        rotations by 90/180/270 degrees, left-right and up-down flips, transpose,
        transverse) and the quality (0..100) of the original.

    Raises:
        InputError: wrong shape or dtype.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise InputError("image must be a numpy uint8 array")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"image must have shape (H, W, 3), got {image.shape}")
    square = (
        np.ascontiguousarray(centre_square(image))
        if side is None
        else normalise_square(image, side)
    )
    bits, quality = pdqhash.compute_dihedral(square)
    packed = np.packbits(np.asarray(bits, dtype=np.uint8), axis=1)
    return packed, int(quality)


PICTURE_HASH_SCHEMA = pa.schema(
    [
        pa.field("avatar_key", pa.string(), nullable=False),
        pa.field("pdq", pa.binary(PDQ_BYTES), nullable=False),
        pa.field("quality", pa.int32(), nullable=False),
        pa.field("dihedral", pa.binary(DIHEDRAL * PDQ_BYTES), nullable=False),
        pa.field("chroma", pa.list_(pa.float32(), CHROMA_CHANNELS), nullable=False),
    ]
)
"""Schema of :func:`hash_picture_table`: ``pdq`` is the hash of the normalised centre square
(= dihedral row 0); ``chroma`` its :func:`chromaticity`."""


def hash_picture_table(pictures: pa.Table) -> pa.Table:
    """Decode and hash every picture: centre square resampled to 64x64
    (:func:`normalise_square`), PDQ of its 8 dihedral variants, quality, chromaticity.

    Args:
        pictures: columns ``avatar_key`` (str) and ``data`` (encoded image bytes).

    Returns:
        A table with :data:`PICTURE_HASH_SCHEMA`, one row per input row, same order.

    Raises:
        InputError: a missing column, a null key or an undecodable picture (the message names
            the key).
    """
    if not isinstance(pictures, pa.Table) or not {"avatar_key", "data"} <= set(
        pictures.column_names
    ):
        raise InputError("pictures must be a table with columns avatar_key, data")
    keys = pictures.column("avatar_key").to_pylist()
    blobs = pictures.column("data").to_pylist()
    n = len(keys)
    dihedral = np.zeros((n, DIHEDRAL, PDQ_BYTES), dtype=np.uint8)
    quality = np.zeros(n, dtype=np.int32)
    chroma = np.zeros((n, CHROMA_CHANNELS), dtype=np.float32)
    for i, (key, blob) in enumerate(zip(keys, blobs, strict=True)):
        if key is None or blob is None:
            raise InputError(f"picture row {i} has a null avatar_key or data")
        try:
            square = normalise_square(decode_image(blob))
            dihedral[i], quality[i] = pdq_hash_dihedral(square, None)
            chroma[i] = chromaticity(square)
        except InputError as exc:
            raise InputError(f"picture {key}: {exc.message}") from exc
    flat = dihedral.reshape(n, DIHEDRAL * PDQ_BYTES)
    return pa.table(
        [
            pa.array(keys, pa.string()),
            pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(PDQ_BYTES), n, [None, pa.py_buffer(dihedral[:, 0].tobytes())]
            ),
            pa.array(quality, pa.int32()),
            pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(DIHEDRAL * PDQ_BYTES), n, [None, pa.py_buffer(flat.tobytes())]
            ),
            pa.FixedSizeListArray.from_arrays(
                pa.array(chroma.reshape(-1), pa.float32()), CHROMA_CHANNELS
            ),
        ],
        schema=PICTURE_HASH_SCHEMA,
    )


def min_dihedral_distance(a: np.ndarray, b8: np.ndarray) -> np.ndarray:
    """Row-wise minimum Hamming distance between hash ``a[i]`` and any variant ``b8[i, k]``.

    Args:
        a: ``(N, 32) uint8`` packed hashes.
        b8: ``(N, 8, 32) uint8`` packed dihedral hashes.

    Returns:
        ``(N,) int64``, 0..256.

    Raises:
        InputError: wrong shapes or dtypes.
    """
    if a.dtype != np.uint8 or a.ndim != 2 or a.shape[1] != PDQ_BYTES:
        raise InputError("a must be a (N, 32) uint8 array")
    if b8.dtype != np.uint8 or b8.shape != (a.shape[0], DIHEDRAL, PDQ_BYTES):
        raise InputError("b8 must be a (N, 8, 32) uint8 array matching a")
    xa = np.ascontiguousarray(a).view(np.uint64)  # (N, 4)
    xb = np.ascontiguousarray(b8).view(np.uint64)  # (N, 8, 4)
    out: np.ndarray = np.bitwise_count(xb ^ xa[:, None, :]).sum(axis=2, dtype=np.int64).min(axis=1)
    return out

"""Avatar pictures made from real photos shipped inside scikit-image, and realistic edits.

Sources (:data:`PHOTO_SOURCES`): photographs bundled in the scikit-image wheel and loaded with
``skimage.data.<name>()`` — nothing is downloaded. Grey-scale photos are expanded to RGB.

A **base avatar** (a provider picture, or an unrelated picture a user uploads) is a distinct
random view of one photo: a crop whose side is 25–80 % of the photo's shorter side at a random
position, a random aspect ratio, a rotation by a multiple of 90°, a per-channel colour tint
(×0.8–1.2), scaled to ``width × height`` with both sides in 96–160 px; encoded JPEG (quality
80–92) with probability 0.8, else PNG.

An **edit** (:data:`AVATAR_EDITS`) turns a picture into the app's copy, with Pillow:

``exact``        the same bytes, re-hosted under the app's key;
``resize``       scaled by a factor in [0.6, 0.9] ∪ [1.1, 1.5], re-encoded in the same format;
``recompress``   re-encoded as JPEG at quality 35–65;
``square_crop``  centre crop to a square of the shorter side (a square source gets a centre crop
                 to 85–95 % of its side instead), re-encoded in the same format;
``mirror``       flipped left–right, re-encoded in the same format.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

import numpy as np
import numpy.typing as npt
import skimage.data
from PIL import Image

__all__ = [
    "AVATAR_EDITS",
    "PHOTO_SOURCES",
    "EncodedPicture",
    "base_avatar",
    "edit_picture",
    "load_photos",
]

PHOTO_SOURCES: Final = (
    "astronaut",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "rocket",
    "retina",
    "clock",
    "grass",
    "gravel",
    "brick",
)
"""``skimage.data`` loaders of real photographs bundled in the scikit-image wheel."""

AVATAR_EDITS: Final = ("exact", "resize", "recompress", "square_crop", "mirror")
"""Picture edits, as recorded in ``app_profiles.avatar_edit`` (besides ``user_input``)."""

MIN_SIDE: Final = 96
MAX_SIDE: Final = 160


@dataclass(frozen=True)
class EncodedPicture:
    """An encoded image: ``format`` is ``"jpeg"`` or ``"png"``; sizes in pixels."""

    format: str
    width: int
    height: int
    data: bytes


@lru_cache(maxsize=1)
def load_photos() -> tuple[Image.Image, ...]:
    """The :data:`PHOTO_SOURCES` photos as RGB Pillow images (loaded once, offline)."""
    photos = []
    for name in PHOTO_SOURCES:
        arr: npt.NDArray[np.uint8] = getattr(skimage.data, name)()
        if arr.ndim == 2:
            arr = np.stack([arr, arr, arr], axis=2)
        photos.append(Image.fromarray(np.ascontiguousarray(arr[:, :, :3])).convert("RGB"))
    return tuple(photos)


def _encode(img: Image.Image, fmt: str, quality: int = 90) -> EncodedPicture:
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="PNG", compress_level=6)
    return EncodedPicture(fmt, img.width, img.height, buf.getvalue())


def base_avatar(rng: np.random.Generator) -> tuple[Image.Image, EncodedPicture]:
    """Draw one base avatar (see module docstring).

    Returns:
        ``(decoded RGB image, encoded picture)``; the image is what the bytes decode to, so that
        edits can start from it without decoding.
    """
    photos = load_photos()
    photo = photos[int(rng.integers(0, len(photos)))]
    width = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
    height = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
    short = min(photo.width, photo.height)
    side = rng.uniform(0.25, 0.80) * short
    aspect = width / height
    cw = min(side * np.sqrt(aspect), photo.width)
    ch = min(side / np.sqrt(aspect), photo.height)
    x0 = rng.uniform(0, photo.width - cw)
    y0 = rng.uniform(0, photo.height - ch)
    rot = int(rng.integers(0, 4))
    out_size = (width, height) if rot % 2 == 0 else (height, width)
    img = photo.resize(out_size, Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    if rot:
        img = img.rotate(90 * rot, expand=True)
    tint = rng.uniform(0.8, 1.2, 3)
    arr = np.asarray(img, dtype=np.float32) * tint.astype(np.float32)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rng.random() < 0.8:
        pic = _encode(img, "jpeg", int(rng.integers(80, 93)))
        return Image.open(io.BytesIO(pic.data)).convert("RGB"), pic
    return img, _encode(img, "png")


def edit_picture(
    img: Image.Image, pic: EncodedPicture, edit: str, rng: np.random.Generator
) -> EncodedPicture:
    """Apply ``edit`` (one of :data:`AVATAR_EDITS`) to ``pic`` whose decoded form is ``img``.

    Raises:
        ValueError: unknown edit.
    """
    if edit == "exact":
        return pic
    if edit == "resize":
        factor = rng.uniform(0.6, 0.9) if rng.random() < 0.5 else rng.uniform(1.1, 1.5)
        size = (max(16, round(img.width * factor)), max(16, round(img.height * factor)))
        return _encode(img.resize(size, Image.Resampling.LANCZOS), pic.format)
    if edit == "recompress":
        return _encode(img, "jpeg", int(rng.integers(35, 66)))
    if edit == "square_crop":
        side = min(img.width, img.height)
        if img.width == img.height:
            side = round(side * rng.uniform(0.85, 0.95))
        left = (img.width - side) // 2
        top = (img.height - side) // 2
        return _encode(img.crop((left, top, left + side, top + side)), pic.format)
    if edit == "mirror":
        return _encode(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), pic.format)
    raise ValueError(f"unknown avatar edit {edit!r}")

"""Exact Hamming radius search: faiss and numpy back-ends agree with a naive scan."""

from __future__ import annotations

import numpy as np
import pytest

from provguard.errors import InputError
from provguard.similarity.index import Backend, HashIndex, near_pairs


def _naive(q: np.ndarray, b: np.ndarray, radius: int) -> set[tuple[int, int, int]]:
    d = np.unpackbits(q[:, None, :] ^ b[None, :, :], axis=2).sum(2)
    qi, bi = np.nonzero(d <= radius)
    return {(int(i), int(j), int(d[i, j])) for i, j in zip(qi, bi, strict=True)}


@pytest.mark.parametrize("radius", [0, 31, 36, 110, 256])
def test_backends_equal_naive(radius: int) -> None:
    rng = np.random.default_rng(radius)
    base = rng.integers(0, 256, (300, 32), dtype=np.uint8)
    q = base[rng.integers(0, 300, 120)].copy()
    flips = rng.integers(0, 256, (120, 30))
    for k in range(30):  # 0..30 bits flipped per query (with repeats)
        rows = np.arange(120)[k < flips[:, 0] % 31]
        q[rows, flips[rows, k] // 8] ^= (1 << (flips[rows, k] % 8)).astype(np.uint8)
    want = _naive(q, base, radius)
    backends: tuple[Backend, ...] = ("faiss", "numpy", "mih")
    for backend in backends:
        got = HashIndex(base, backend).radius_search(q, radius, block=50)
        pairs = zip(got.query.tolist(), got.base.tolist(), got.distance.tolist(), strict=True)
        assert set(pairs) == want
        order = np.lexsort((got.base, got.query))
        assert np.array_equal(order, np.arange(len(got)))  # sorted by (query, base)
    assert len(near_pairs(q, base, radius)) == len(want)


def test_empty_and_bad_inputs() -> None:
    base = np.zeros((0, 32), np.uint8)
    assert len(HashIndex(base).radius_search(np.zeros((3, 32), np.uint8), 10)) == 0
    with pytest.raises(InputError):
        HashIndex(np.zeros((2, 31), np.uint8))
    with pytest.raises(InputError):
        HashIndex(np.zeros((2, 32), np.uint8), "annoy")  # type: ignore[arg-type]
    with pytest.raises(InputError):
        HashIndex(np.zeros((2, 32), np.uint8)).radius_search(np.zeros((1, 32), np.uint8), 257)

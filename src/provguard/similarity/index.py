"""Exact Hamming-radius search over packed 256-bit hashes (PDQ) at a million hashes.

Two interchangeable back-ends give the same answer:

- ``"faiss"`` -- ``faiss.IndexBinaryFlat`` (Johnson, Douze, Jegou, "Billion-scale similarity search
  with GPUs", 2017; the CPU binary flat index): exhaustive XOR + popcount in C++ with SIMD,
  multi-threaded; ``range_search`` returns every pair within the radius. Exact.
- ``"numpy"`` -- XOR of ``uint64`` words and ``numpy.bitwise_count``, in query blocks. Exact;
  the differential oracle and the fallback.

Radius semantics: a pair is returned when its Hamming distance is ``<= radius`` (PDQ's reference
match rule is ``distance <= 31``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np

from provguard.errors import InputError
from provguard.similarity.pictures import PDQ_BYTES

Backend = Literal["faiss", "numpy"]


@dataclass(frozen=True)
class NearPairs:
    """All pairs within the radius: ``query[i]`` is near ``base[j]`` at ``distance[i]`` bits.

    Arrays have equal length ``P``; sorted by (query, base).
    """

    query: np.ndarray  # (P,) int64
    base: np.ndarray  # (P,) int64
    distance: np.ndarray  # (P,) int32

    def __len__(self) -> int:
        return int(self.query.shape[0])


def _check(packed: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(packed, np.ndarray) or packed.dtype != np.uint8:
        raise InputError(f"{what} must be a uint8 array of shape (N, 32)")
    if packed.ndim != 2 or packed.shape[1] != PDQ_BYTES:
        raise InputError(f"{what} must have shape (N, 32), got {packed.shape}")
    return np.ascontiguousarray(packed)


class HashIndex:
    """An exact radius-search index over ``(N, 32) uint8`` packed hashes.

    Args:
        base: the indexed hashes (row j has id j).
        backend: ``"faiss"`` (default) or ``"numpy"``; both exact and equal.

    Raises:
        InputError: wrong dtype/shape, unknown backend.
    """

    def __init__(self, base: np.ndarray, backend: Backend = "faiss") -> None:
        if backend not in ("faiss", "numpy"):
            raise InputError(f"unknown index backend '{backend}'")
        self.backend: Backend = backend
        self._base = _check(base, "base")
        self._words = self._base.view(np.uint64)
        self._faiss: faiss.IndexBinaryFlat | None = None
        if backend == "faiss":
            self._faiss = faiss.IndexBinaryFlat(PDQ_BYTES * 8)
            if len(self._base):
                self._faiss.add(self._base)

    def __len__(self) -> int:
        return int(self._base.shape[0])

    def radius_search(self, queries: np.ndarray, radius: int, *, block: int = 20_000) -> NearPairs:
        """Every (query, base) pair with Hamming distance ``<= radius``.

        Args:
            queries: ``(M, 32) uint8`` packed hashes.
            radius: 0..256 bits.
            block: queries per block (bounds memory: numpy uses ``block * N * 8`` bytes).

        Returns:
            :class:`NearPairs`, sorted by (query, base).

        Raises:
            InputError: wrong dtype/shape, radius out of range.
        """
        q = _check(queries, "queries")
        if not 0 <= radius <= PDQ_BYTES * 8:
            raise InputError("radius must be in 0..256")
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        if len(self) and len(q):
            step = block if self._faiss is not None else max(1, min(block, 2**27 // len(self)))
            for start in range(0, len(q), step):
                chunk = q[start : start + step]
                qi, bi, d = self._search_block(chunk, radius)
                parts.append((qi + start, bi, d))
        if not parts:
            empty = np.zeros(0, dtype=np.int64)
            return NearPairs(empty, empty.copy(), np.zeros(0, dtype=np.int32))
        qi = np.concatenate([p[0] for p in parts])
        bi = np.concatenate([p[1] for p in parts])
        d = np.concatenate([p[2] for p in parts])
        order = np.lexsort((bi, qi))
        return NearPairs(qi[order], bi[order], d[order].astype(np.int32))

    def _search_block(
        self, chunk: np.ndarray, radius: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._faiss is not None:
            # faiss's binary range search keeps distances strictly below the threshold
            lims, dist, ids = self._faiss.range_search(chunk, radius + 1)
            counts = np.diff(lims).astype(np.int64)
            qi = np.repeat(np.arange(len(chunk), dtype=np.int64), counts)
            return qi, ids.astype(np.int64), dist.astype(np.int32)
        words = chunk.view(np.uint64)
        dist = np.zeros((len(chunk), len(self)), dtype=np.int32)
        for w in range(words.shape[1]):
            dist += np.bitwise_count(words[:, w, None] ^ self._words[None, :, w])
        qi, bi = np.nonzero(dist <= radius)
        return qi.astype(np.int64), bi.astype(np.int64), dist[qi, bi]


def near_pairs(
    queries: np.ndarray, base: np.ndarray, radius: int, *, backend: Backend = "faiss"
) -> NearPairs:
    """All pairs of ``queries`` x ``base`` within ``radius`` bits (the platform-side audit).

    Shapes and errors as :meth:`HashIndex.radius_search`.
    """
    return HashIndex(base, backend).radius_search(queries, radius)

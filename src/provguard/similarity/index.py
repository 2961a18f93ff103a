"""Exact Hamming-radius search over packed 256-bit hashes (PDQ) at a million hashes.

Two interchangeable back-ends give the same answer:

- ``"faiss"`` -- ``faiss.IndexBinaryFlat`` (Johnson, Douze, Jegou, "Billion-scale similarity search
  with GPUs", 2017; the CPU binary flat index): exhaustive XOR + popcount in C++ with SIMD,
  multi-threaded; ``range_search`` returns every pair within the radius. Exact.
- ``"numpy"`` -- XOR of ``uint64`` words and ``numpy.bitwise_count``, in query blocks. Exact;
  the differential oracle and the fallback.
- ``"mih"`` -- multi-index hashing (Norouzi, Punjani, Fleet, CVPR 2012;
  :mod:`provguard.similarity.mih`): the 256 bits are cut into ``m`` chunks, pairs within ``r``
  agree within ``r // m`` bits on some chunk (pigeonhole), so only those buckets are compared.
  Exact, and for large query batches at PDQ radii far faster than a flat scan (1M x 1M at
  radius 36: docs/benchmarks.md, "Picture audit at 1M x 1M"). When :func:`~provguard.
  similarity.mih.plan_chunks` finds a flat scan cheaper (small base, large radius) it uses
  faiss.

:func:`audit_dihedral` is the platform-side audit of the v3 picture rule: every partner picture
against the 8 dihedral variants of every provider picture, least distance per pair.

Radius semantics: a pair is returned when its Hamming distance is ``<= radius`` (PDQ's reference
match rule is ``distance <= 31``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np

from provguard.errors import InputError
from provguard.similarity.mih import MultiIndexHash, mih_join, plan_chunks
from provguard.similarity.pictures import DIHEDRAL, PDQ_BYTES

Backend = Literal["faiss", "numpy", "mih"]

DEFAULT_MAX_RADIUS = 36
"""Radius the ``"mih"`` back-end plans its chunks for (the v3 picture rule's radius)."""


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
        backend: ``"faiss"`` (default), ``"numpy"`` or ``"mih"``; all exact and equal.
        max_radius: ``"mih"`` only: the radius its chunks are planned for (searches at other
            radii stay exact, larger ones probe more buckets). Memory ``m * N * 40`` bytes.

    Raises:
        InputError: wrong dtype/shape, unknown backend.
    """

    def __init__(
        self,
        base: np.ndarray,
        backend: Backend = "faiss",
        *,
        max_radius: int = DEFAULT_MAX_RADIUS,
    ) -> None:
        if backend not in ("faiss", "numpy", "mih"):
            raise InputError(f"unknown index backend '{backend}'")
        self.backend: Backend = backend
        self._base = _check(base, "base")
        self._words = self._base.view(np.uint64)
        self._faiss: faiss.IndexBinaryFlat | None = None
        self._mih: MultiIndexHash | None = None
        chunks = plan_chunks(len(self._base), max_radius) if backend == "mih" else None
        if chunks is not None:
            self._mih = MultiIndexHash(self._base, chunks)
        elif backend in ("faiss", "mih"):
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
        if self._mih is not None and len(q):
            parts.append(self._mih.search(q, radius))
        elif len(self) and len(q):
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


@dataclass(frozen=True)
class DihedralPairs:
    """Audit result: partner picture ``app[i]`` is within the radius of provider picture
    ``provider[i]``; ``distance[i]`` is the least distance over the provider's 8 dihedral
    variants and ``variant[i]`` (0..7, ``pdqhash.compute_dihedral`` order) the first variant at
    that distance. Arrays have equal length ``P``; sorted by (app, provider).
    """

    app: np.ndarray  # (P,) int64
    provider: np.ndarray  # (P,) int64
    distance: np.ndarray  # (P,) int32
    variant: np.ndarray  # (P,) int8

    def __len__(self) -> int:
        return int(self.app.shape[0])


def audit_dihedral(
    app: np.ndarray,
    provider8: np.ndarray,
    radius: int,
    *,
    backend: Backend = "mih",
    chunks: int | None = None,
) -> DihedralPairs:
    """All (partner, provider) picture pairs whose least distance over the provider's 8
    dihedral variants is ``<= radius`` bits: the platform-side audit of the v3 picture rule
    (``scan.PICTURE_RADIUS``; the chroma gate is applied by the caller to the returned pairs).

    Exact: the same pairs and distances as ``min_dihedral_distance`` over all ``M x N`` pairs.
    The ``N * 8`` variant hashes are searched as one base (row ``8 * j + v``); with ``"mih"``
    the partner and variant hashes are joined chunk by chunk (:func:`~provguard.similarity.
    mih.mih_join`, memory ``40 * (M + 8N)`` bytes per chunk), falling back to faiss when
    :func:`~provguard.similarity.mih.plan_chunks` finds a flat scan cheaper.

    Args:
        app: ``(M, 32) uint8`` partner picture hashes (row 0 of their dihedral block).
        provider8: ``(N, 8, 32) uint8`` provider dihedral hashes (``hash_picture_table``'s
            ``dihedral`` column, reshaped).
        radius: 0..256 bits.
        backend: ``"mih"`` (default), ``"faiss"`` or ``"numpy"``; all exact and equal.
        chunks: ``"mih"`` only: force this many chunks instead of :func:`~provguard.similarity.
            mih.plan_chunks` (which may pick a flat scan).

    Returns:
        :class:`DihedralPairs` sorted by (app, provider).

    Raises:
        InputError: wrong dtype/shape, radius out of range, unknown backend, bad ``chunks``.
    """
    q = _check(app, "app")
    if (
        not isinstance(provider8, np.ndarray)
        or provider8.dtype != np.uint8
        or provider8.ndim != 3
        or provider8.shape[1:] != (DIHEDRAL, PDQ_BYTES)
    ):
        raise InputError("provider8 must be a uint8 array of shape (N, 8, 32)")
    if backend not in ("faiss", "numpy", "mih"):
        raise InputError(f"unknown index backend '{backend}'")
    if not 0 <= radius <= PDQ_BYTES * 8:
        raise InputError("radius must be in 0..256")
    base = np.ascontiguousarray(provider8).reshape(-1, PDQ_BYTES)
    if backend == "mih" and chunks is None:
        chunks = plan_chunks(len(base), radius)
    if backend == "mih" and chunks is not None:
        qi, bi, d = mih_join(q, base, radius, chunks)
    else:
        flat: Backend = "numpy" if backend == "numpy" else "faiss"
        found = HashIndex(base, flat).radius_search(q, radius)
        qi, bi, d = found.query, found.base, found.distance
    prov = bi // DIHEDRAL
    variant = bi % DIHEDRAL
    order = np.lexsort((variant, d, prov, qi))
    qi, prov, d, variant = qi[order], prov[order], d[order], variant[order]
    first = np.ones(len(qi), dtype=bool)
    first[1:] = (qi[1:] != qi[:-1]) | (prov[1:] != prov[:-1])
    return DihedralPairs(
        qi[first].astype(np.int64),
        prov[first].astype(np.int64),
        d[first].astype(np.int32),
        variant[first].astype(np.int8),
    )

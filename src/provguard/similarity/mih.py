"""Exact multi-index hashing (MIH) for Hamming radius search over packed 256-bit hashes.

Follows Norouzi, Punjani, Fleet, "Fast Search in Hamming Space with Multi-Index Hashing",
CVPR 2012. The 256 bits are cut into ``m`` disjoint chunks (lengths differ by at most one bit).
By the pigeonhole principle, two hashes within ``r`` bits agree within ``s = r // m`` bits on at
least one chunk (if every chunk differed in ``s + 1`` or more bits the total would be
``m * (s + 1) > r``). So every pair within the radius is found by looking up, in each chunk's
table, the buckets of all keys within ``s`` bits of the query's chunk; every candidate is then
checked on all 256 bits. The search is exact: the same pairs as brute force.

Layout (memory ``m * N * 36`` bytes plus ``8 * 2**L`` per chunk of ``L`` bits): one table per
chunk, a CSR bucket index over the chunk's ``L``-bit key (``offsets``, length ``2**L + 1``) and
a copy of the hashes and ids in bucket order, so that a bucket's candidates are read
sequentially. A pair found in several chunks is reported once: only from the first chunk whose
chunk distance is ``<= s``. The kernels are compiled with numba and run over queries on all
cores (``numba.prange``).

Bit numbering: a ``(N, 32) uint8`` hash is read as four little-endian ``uint64`` words; bit
``k`` is bit ``k % 64`` of word ``k // 64``. Chunk ``c`` covers a contiguous run of these bits.
Any fixed partition is valid; this one keeps key extraction to two shifts.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb

import numba
import numpy as np

from provguard.errors import InputError

BITS = 256
"""Hash length in bits."""

MAX_CHUNK_BITS = 24
"""Longest chunk key: its bucket index holds ``2**24 + 1`` offsets (128 MiB)."""

PROBE_COST = 4.0
"""Cost of one bucket probe relative to one candidate check, for :func:`plan_chunks`."""

_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)
_S56 = np.uint64(56)
_ONE = np.uint64(1)
_TWO = np.uint64(2)
_FOUR = np.uint64(4)


@numba.njit(inline="always", cache=True)
def _popcount(x: np.uint64) -> np.uint64:
    # the SWAR idiom; LLVM turns it into one popcnt instruction
    x = x - ((x >> _ONE) & _M1)
    x = (x & _M2) + ((x >> _TWO) & _M2)
    x = (x + (x >> _FOUR)) & _M4
    return (x * _H01) >> _S56


@numba.njit(parallel=True, cache=True)
def _join_chunk(
    q_keys: np.ndarray,
    q_off: np.ndarray,
    q_words: np.ndarray,
    q_ids: np.ndarray,
    b_off: np.ndarray,
    b_words: np.ndarray,
    b_ids: np.ndarray,
    flips: np.ndarray,
    chunk_mask: np.ndarray,
    c: int,
    s: int,
    radius: int,
    nblocks: int,
    cap: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # bucket join on chunk c: every non-empty query bucket kq (q_keys, increasing) against the
    # base buckets kq ^ flip;
    # flip-major inside a block of buckets so both sides are read as sequential runs
    nbuckets = q_keys.shape[0]
    per = (nbuckets + nblocks - 1) // nblocks
    out_q = np.empty((nblocks, cap), dtype=np.int64)
    out_b = np.empty((nblocks, cap), dtype=np.int64)
    out_d = np.empty((nblocks, cap), dtype=np.int32)
    counts = np.zeros(nblocks, dtype=np.int64)
    ur = np.uint64(radius)
    us = np.uint64(s)
    for blk in numba.prange(nblocks):
        cnt = 0
        for f in range(flips.shape[0]):
            flip = flips[f]
            for t in range(blk * per, min(nbuckets, (blk + 1) * per)):
                kq = q_keys[t]
                qlo = q_off[kq]
                qhi = q_off[kq + 1]
                kb = kq ^ flip
                blo = b_off[kb]
                bhi = b_off[kb + 1]
                for i in range(qlo, qhi):
                    q0 = q_words[i, 0]
                    q1 = q_words[i, 1]
                    q2 = q_words[i, 2]
                    q3 = q_words[i, 3]
                    for j in range(blo, bhi):
                        x0 = q0 ^ b_words[j, 0]
                        x1 = q1 ^ b_words[j, 1]
                        x2 = q2 ^ b_words[j, 2]
                        x3 = q3 ^ b_words[j, 3]
                        d = _popcount(x0) + _popcount(x1) + _popcount(x2) + _popcount(x3)
                        if d <= ur:
                            dup = False
                            for c2 in range(c):
                                cd = (
                                    _popcount(x0 & chunk_mask[c2, 0])
                                    + _popcount(x1 & chunk_mask[c2, 1])
                                    + _popcount(x2 & chunk_mask[c2, 2])
                                    + _popcount(x3 & chunk_mask[c2, 3])
                                )
                                if cd <= us:
                                    dup = True
                                    break
                            if not dup:
                                if cnt < cap:
                                    out_q[blk, cnt] = q_ids[i]
                                    out_b[blk, cnt] = b_ids[j]
                                    out_d[blk, cnt] = d
                                cnt += 1
        counts[blk] = cnt
    return out_q, out_b, out_d, counts


def chunk_lengths(m: int) -> list[int]:
    """Lengths of the ``m`` chunks of 256 bits (differ by at most one; longest first)."""
    if not 1 <= m <= BITS:
        raise InputError(f"chunks must be in 1..{BITS}, got {m}")
    short, extra = divmod(BITS, m)
    return [short + 1] * extra + [short] * (m - extra)


def _ball(bits: int, s: int) -> int:
    return sum(comb(bits, k) for k in range(min(s, bits) + 1))


def estimated_cost(n: int, radius: int, m: int) -> float:
    """Expected work per query for ``m`` chunks on ``n`` uniformly random hashes.

    ``sum over chunks of ball(L, s) * (PROBE_COST + n / 2**L)`` with ``s = radius // m`` (probes
    plus candidates, in candidate checks). Real hashes cluster, so this is a planning estimate.
    """
    s = radius // m
    return sum(_ball(L, s) * (PROBE_COST + n / 2.0**L) for L in chunk_lengths(m))


def plan_chunks(n: int, radius: int) -> int | None:
    """The number of chunks with the least :func:`estimated_cost`, or ``None`` when a flat scan
    (``n`` checks per query) is estimated cheaper (small ``n`` or a large radius)."""
    best: tuple[float, int] | None = None
    for m in range(1, 65):
        if chunk_lengths(m)[0] > MAX_CHUNK_BITS:
            continue
        cost = estimated_cost(n, radius, m)
        if best is None or cost < best[0]:
            best = (cost, m)
    if best is None or best[0] >= n / 2:
        return None
    return best[1]


@dataclass(frozen=True)
class _Layout:
    word0: np.ndarray
    shift0: np.ndarray
    mask0: np.ndarray
    word1: np.ndarray
    mask1: np.ndarray
    bits0: np.ndarray
    chunk_mask: np.ndarray
    lengths: list[int]


def _layout(m: int) -> _Layout:
    lengths = chunk_lengths(m)
    word0, shift0, mask0, word1, mask1, bits0 = ([] for _ in range(6))
    chunk_mask = np.zeros((m, 4), dtype=np.uint64)
    start = 0
    for c, length in enumerate(lengths):
        w, sh = divmod(start, 64)
        n0 = min(length, 64 - sh)
        n1 = length - n0
        word0.append(w)
        shift0.append(sh)
        mask0.append((1 << n0) - 1)
        word1.append(min(w + 1, 3))
        mask1.append((1 << n1) - 1)
        bits0.append(n0)
        for k in range(start, start + length):
            chunk_mask[c, k // 64] |= np.uint64(1 << (k % 64))
        start += length
    return _Layout(
        np.array(word0, dtype=np.int64),
        np.array(shift0, dtype=np.uint64),
        np.array(mask0, dtype=np.uint64),
        np.array(word1, dtype=np.int64),
        np.array(mask1, dtype=np.uint64),
        np.array(bits0, dtype=np.uint64),
        chunk_mask,
        lengths,
    )


def _flip_masks(bits: int, s: int) -> np.ndarray:
    """All ``bits``-bit masks with at most ``s`` bits set, in increasing order (int64)."""
    values = np.arange(2**bits, dtype=np.int64)
    return values[np.bitwise_count(values) <= s]


@numba.njit(cache=True)
def _counting_sort(keys: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    # stable bucket order of keys given the CSR offsets of their counts
    fill = offsets[:-1].copy()
    order = np.empty(keys.shape[0], dtype=np.int64)
    for i in range(keys.shape[0]):
        k = keys[i]
        order[fill[k]] = i
        fill[k] += 1
    return order


@dataclass(frozen=True)
class _Table:
    offsets: np.ndarray  # (2**L + 1,) int64 CSR over the chunk key
    words: np.ndarray  # (N, 4) uint64 in bucket order
    ids: np.ndarray  # (N,) int64 row ids in bucket order


def _keys(words: np.ndarray, lay: _Layout, c: int) -> np.ndarray:
    lo = (words[:, lay.word0[c]] >> lay.shift0[c]) & lay.mask0[c]
    hi = (words[:, lay.word1[c]] & lay.mask1[c]) << lay.bits0[c]
    keys: np.ndarray = (lo | hi).astype(np.int64)
    return keys


def _table(words: np.ndarray, lay: _Layout, c: int) -> _Table:
    keys = _keys(words, lay, c)
    counts = np.bincount(keys, minlength=2 ** lay.lengths[c])
    offsets = np.zeros(counts.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    order: np.ndarray = _counting_sort(keys, offsets)
    return _Table(offsets, words[order], order)


def _as_words(packed: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(packed, np.ndarray) or packed.dtype != np.uint8:
        raise InputError(f"{what} must be a uint8 array of shape (N, 32)")
    if packed.ndim != 2 or packed.shape[1] != BITS // 8:
        raise InputError(f"{what} must have shape (N, 32), got {packed.shape}")
    words: np.ndarray = np.ascontiguousarray(packed).view(np.uint64)
    return words


def _checked_layout(chunks: int) -> _Layout:
    lay = _layout(chunks)
    if lay.lengths[0] > MAX_CHUNK_BITS:
        raise InputError(f"{chunks} chunks give {lay.lengths[0]}-bit keys (max {MAX_CHUNK_BITS})")
    return lay


def _check_radius(radius: int, lay: _Layout) -> int:
    if not 0 <= radius <= BITS:
        raise InputError("radius must be in 0..256")
    s = radius // len(lay.lengths)
    if _ball(lay.lengths[0], s) > 2**22:
        raise InputError(f"radius {radius} needs too many probes for {len(lay.lengths)} chunks")
    return s


_NBLOCKS = 2048
_CAP = 64


def _join(
    qt: _Table, bt: _Table, lay: _Layout, c: int, s: int, radius: int, flips: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cap = _CAP
    q_keys = np.flatnonzero(np.diff(qt.offsets)).astype(np.int64)
    while True:
        out_q, out_b, out_d, counts = _join_chunk(
            q_keys,
            qt.offsets, qt.words, qt.ids, bt.offsets, bt.words, bt.ids, flips,
            lay.chunk_mask, c, s, radius, _NBLOCKS, cap,
        )  # fmt: skip
        if int(counts.max()) <= cap:
            break
        cap = int(counts.max())  # rare: a block with many near pairs; run the chunk again
    mask = np.arange(cap)[None, :] < counts[:, None]
    return out_q[mask], out_b[mask], out_d[mask]


def _pairs(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), np.zeros(0, dtype=np.int32)
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
    )


def mih_join(
    queries: np.ndarray, base: np.ndarray, radius: int, chunks: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (query, base) pair within ``radius`` bits, by a per-chunk bucket join; unsorted.

    Both sides are bucketed on one chunk at a time (counting sort), and every query bucket is
    joined with the base buckets within ``radius // chunks`` bits of its key, so memory stays at
    one chunk's tables (``40 * (M + N)`` bytes plus ``8 * 2**L``). Each pair is reported once.

    Args:
        queries: ``(M, 32) uint8``.
        base: ``(N, 32) uint8``.
        radius: 0..256; pairs with distance ``<= radius``.
        chunks: number of chunks (see :func:`plan_chunks`).

    Returns:
        ``(query_index, base_index, distance)``: int64, int64, int32 arrays of equal length.

    Raises:
        InputError: wrong dtype/shape; radius out of range; too many probes for ``chunks``;
            a chunk longer than ``MAX_CHUNK_BITS``.
    """
    qw = _as_words(queries, "queries")
    bw = _as_words(base, "base")
    lay = _checked_layout(chunks)
    s = _check_radius(radius, lay)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    if len(qw) and len(bw):
        flips = {L: _flip_masks(L, s) for L in set(lay.lengths)}
        for c, length in enumerate(lay.lengths):
            qt, bt = _table(qw, lay, c), _table(bw, lay, c)
            parts.append(_join(qt, bt, lay, c, s, radius, flips[length]))
    return _pairs(parts)


class MultiIndexHash:
    """Exact radius search by multi-index hashing over ``(N, 32) uint8`` packed hashes.

    The base's chunk tables are built once; each :meth:`search` buckets its queries and runs
    the bucket join of :func:`mih_join`. Suited to large query batches (thousands or more): a
    search visits every non-empty query bucket.

    Args:
        base: the indexed hashes; row ``j`` has id ``j``.
        chunks: number of chunks ``m`` (each at most ``MAX_CHUNK_BITS`` bits); choose it with
            :func:`plan_chunks` for the radius you will search.

    Memory: ``m * N * 40`` bytes plus ``8 * 2**L`` bytes per chunk of ``L`` bits.

    Raises:
        InputError: wrong dtype/shape; a chunk longer than ``MAX_CHUNK_BITS``.
    """

    def __init__(self, base: np.ndarray, chunks: int) -> None:
        words = _as_words(base, "base")
        self.chunks = chunks
        self._layout = _checked_layout(chunks)
        self._n = int(words.shape[0])
        self._tables = [_table(words, self._layout, c) for c in range(chunks)]

    def __len__(self) -> int:
        return self._n

    def probes_per_query(self, radius: int) -> int:
        """Buckets looked up per query bucket at ``radius`` (sum of ``ball(L, radius // m)``)."""
        return sum(_ball(L, radius // self.chunks) for L in self._layout.lengths)

    def search(self, queries: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (query, base) pair within ``radius`` bits, unsorted.

        Args:
            queries: ``(M, 32) uint8``.
            radius: 0..256 bits; pairs with distance ``<= radius``. The probes grow as
                ``ball(L, radius // m)``: build with :func:`plan_chunks` for this radius.

        Returns:
            ``(query_index, base_id, distance)``: int64, int64, int32 arrays of equal length.

        Raises:
            InputError: wrong dtype/shape, radius out of range, too many probes for ``m``.
        """
        qw = _as_words(queries, "queries")
        lay = self._layout
        s = _check_radius(radius, lay)
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        if len(qw) and self._n:
            flips = {L: _flip_masks(L, s) for L in set(lay.lengths)}
            for c, length in enumerate(lay.lengths):
                qt = _table(qw, lay, c)
                parts.append(_join(qt, self._tables[c], lay, c, s, radius, flips[length]))
        return _pairs(parts)

"""Multi-index hashing and the dihedral picture audit are exact: differential tests against the
numpy brute-force back-end on real sandbox PDQ hashes, synthetic near-duplicates (hypothesis)
and the pigeonhole edge cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provguard.adapters.graph_files import read_edge_list
from provguard.errors import InputError
from provguard.sandbox import build_platform
from provguard.similarity.index import HashIndex, audit_dihedral
from provguard.similarity.mih import (
    MultiIndexHash,
    chunk_lengths,
    estimated_cost,
    mih_join,
    plan_chunks,
)
from provguard.similarity.pictures import hash_picture_table, min_dihedral_distance

ROOT = Path(__file__).resolve().parents[2]


def _triples(qi: np.ndarray, bi: np.ndarray, d: np.ndarray) -> list[tuple[int, int, int]]:
    return sorted(zip(qi.tolist(), bi.tolist(), d.tolist(), strict=True))


def _brute(q: np.ndarray, base: np.ndarray, radius: int) -> list[tuple[int, int, int]]:
    got = HashIndex(base, "numpy").radius_search(q, radius)
    return _triples(got.query, got.base, got.distance)


def _flip(rng: np.random.Generator, h: np.ndarray, most: int) -> np.ndarray:
    """Copy of ``h`` with 0..most distinct bits flipped per row."""
    out = h.copy()
    for row in range(len(out)):
        k = int(rng.integers(0, most + 1))
        for bit in rng.choice(256, size=k, replace=False):
            out[row, bit // 8] ^= np.uint8(1 << (bit % 8))
    return out


@pytest.fixture(scope="module")
def real8(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """PDQ dihedral blocks ``(P, 8, 32)`` of a real sandbox sample (seed 11, 1,500 edges)."""
    lines = (ROOT / "data" / "graphs" / "snap-ego-facebook.txt").read_text().splitlines()[:1500]
    path = tmp_path_factory.mktemp("graphs") / "small.txt"
    path.write_text("\n".join(lines) + "\n")
    platform = build_platform(read_edge_list(path), seed=11)
    table = hash_picture_table(platform.pictures.slice(0, 400))
    flat = np.frombuffer(b"".join(table.column("dihedral").to_pylist()), dtype=np.uint8)
    return flat.reshape(-1, 8, 32).copy()


@pytest.mark.parametrize("chunks", [13, 16, 24])
def test_mih_join_equals_brute_force_on_sandbox_hashes(real8: np.ndarray, chunks: int) -> None:
    rng = np.random.default_rng(chunks)
    real = real8.reshape(-1, 32)
    assert len(real) >= 2000
    base = np.concatenate([real, _flip(rng, real[rng.integers(0, len(real), 500)], 20)])
    q = np.concatenate([real8[:, 0], _flip(rng, real[rng.integers(0, len(real), 800)], 40)])
    for radius in (0, 31, 36, 48):
        want = _brute(q, base, radius)
        got = _triples(*mih_join(q, base, radius, chunks))
        assert got == want  # same pairs, same distances, each pair once
    # real near-duplicates exist, so the comparison is not vacuous
    assert len(_brute(q, base, 36)) > len(q)


def test_audit_dihedral_equals_least_variant_distance(real8: np.ndarray) -> None:
    rng = np.random.default_rng(3)
    prov8 = real8[:150]
    pick = rng.integers(0, 150, 120)
    app = np.concatenate(
        [
            _flip(rng, prov8[pick, rng.integers(0, 8, 120)], 40),
            real8[150:200, 0],
            rng.integers(0, 256, (30, 32), dtype=np.uint8),
        ]
    )
    m, n = len(app), len(prov8)
    least = min_dihedral_distance(np.repeat(app, n, axis=0), np.tile(prov8, (m, 1, 1)))
    least = least.reshape(m, n)
    for radius in (31, 36):
        ai, pj = np.nonzero(least <= radius)
        want = sorted(zip(ai.tolist(), pj.tolist(), least[ai, pj].tolist(), strict=True))
        assert len(want) >= 100
        for kwargs in ({"chunks": 13}, {"chunks": 16}, {"backend": "faiss"}, {"backend": "numpy"}):
            got = audit_dihedral(app, prov8, radius, **kwargs)
            assert _triples(got.app, got.provider, got.distance) == want
            # the reported variant is one at the least distance
            x = app[got.app] ^ prov8[got.provider, got.variant.astype(np.int64)]
            assert np.array_equal(np.unpackbits(x, axis=1).sum(1), got.distance)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    chunks=st.integers(13, 40),
    radius=st.integers(0, 60),
    most=st.integers(0, 70),
)
def test_mih_join_property(seed: int, chunks: int, radius: int, most: int) -> None:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (300, 32), dtype=np.uint8)
    base[150:] = _flip(rng, base[:150], 6)  # near-duplicate pairs inside the base too
    q = _flip(rng, base[rng.integers(0, 300, 100)], most)
    assert _triples(*mih_join(q, base, radius, chunks)) == _brute(q, base, radius)


def test_pigeonhole_edge() -> None:
    """36 bits off, 3 in each of 12 chunks and none in the last: found only through the last
    chunk; 3 bits in all 13 chunks (39) is out of radius."""
    lengths = chunk_lengths(13)
    assert sum(lengths) == 256 and max(lengths) - min(lengths) <= 1
    base = np.random.default_rng(0).integers(0, 256, (1, 32), dtype=np.uint8)
    bits = base.view(np.uint64).copy()

    def flipped(chunks_hit: int) -> np.ndarray:
        w = bits.copy()
        start = 0
        for c, length in enumerate(lengths):
            if c < chunks_hit:
                for k in range(start, start + 3):
                    w[0, k // 64] ^= np.uint64(1 << (k % 64))
            start += length
        return w.view(np.uint8)

    q = np.concatenate([flipped(12), flipped(13)])
    qi, bi, d = mih_join(q, base, 36, 13)
    assert _triples(qi, bi, d) == [(0, 0, 36)]
    assert _triples(*mih_join(q, base, 39, 13)) == [(0, 0, 36), (1, 0, 39)]


def test_many_results_per_block_and_index_search() -> None:
    rng = np.random.default_rng(5)
    h = rng.integers(0, 256, (1, 32), dtype=np.uint8)
    base = np.concatenate([np.repeat(h, 300, 0), rng.integers(0, 256, (2000, 32), np.uint8)])
    q = np.repeat(h, 5, 0)
    qi, bi, d = mih_join(q, base, 10, 13)  # 1,500 pairs in one bucket: past the first buffer
    assert len(qi) == 1500 and set(bi.tolist()) == set(range(300)) and not d.any()
    index = MultiIndexHash(base, 13)
    assert len(index) == 2300 and index.probes_per_query(36) == sum(
        1 + L + L * (L - 1) // 2 for L in chunk_lengths(13)
    )
    assert _triples(*index.search(q, 10)) == _triples(qi, bi, d)


def test_hash_index_mih_backend_plans_chunks() -> None:
    rng = np.random.default_rng(9)
    base = rng.integers(0, 256, (60_000, 32), dtype=np.uint8)
    q = _flip(rng, base[rng.integers(0, 60_000, 500)], 45)
    index = HashIndex(base, "mih")
    assert index._mih is not None and index._mih.chunks == plan_chunks(60_000, 36)
    got = index.radius_search(q, 36)
    want = HashIndex(base, "faiss").radius_search(q, 36)
    assert np.array_equal(got.query, want.query) and np.array_equal(got.base, want.base)
    assert np.array_equal(got.distance, want.distance) and len(want) >= 300


def test_plan_chunks() -> None:
    # the 1M x 8 variants audit at the v3 radius: 13 chunks of 19-20 bits, 2 bits per chunk
    assert plan_chunks(8_000_000, 36) == 13
    assert chunk_lengths(13) == [20] * 9 + [19] * 4
    assert estimated_cost(8_000_000, 36, 13) < estimated_cost(8_000_000, 36, 12)
    assert estimated_cost(8_000_000, 36, 13) < estimated_cost(8_000_000, 36, 14)
    assert plan_chunks(200, 36) is None  # a flat scan is cheaper
    assert plan_chunks(8_000_000, 200) is None


def test_bad_inputs() -> None:
    ok = np.zeros((2, 32), np.uint8)
    with pytest.raises(InputError):
        chunk_lengths(0)
    with pytest.raises(InputError):
        mih_join(ok, ok, 36, 5)  # 52-bit keys
    with pytest.raises(InputError):
        mih_join(ok, ok, 257, 13)
    with pytest.raises(InputError):
        mih_join(ok, ok, 200, 11)  # 24-bit keys: too many probes per chunk
    with pytest.raises(InputError):
        mih_join(np.zeros((2, 31), np.uint8), ok, 36, 13)
    with pytest.raises(InputError):
        MultiIndexHash(ok.astype(np.int8), 13)
    with pytest.raises(InputError):
        audit_dihedral(ok, np.zeros((2, 7, 32), np.uint8), 36)
    with pytest.raises(InputError):
        audit_dihedral(ok, np.zeros((2, 8, 32), np.uint8), 36, backend="annoy")  # type: ignore[arg-type]
    with pytest.raises(InputError):
        audit_dihedral(ok, np.zeros((2, 8, 32), np.uint8), -1)
    assert len(mih_join(ok[:0], ok, 36, 13)[0]) == 0
    assert len(audit_dihedral(ok, np.zeros((0, 8, 32), np.uint8), 36)) == 0

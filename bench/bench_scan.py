"""Speed of the profile-match scan (issue 6): the app-side check (1M handle pairs, 1M picture
pairs x 8 dihedral variants), the 1M-hash index query, the platform-side audit and hashing.

Handles: 1M (app, provider) pairs drawn from the seed-7 sandbox pairs, each made distinct by an
index suffix on both sides (so per-distinct-value caching does not hide the cost). The job's
path is :func:`provguard.similarity.match.score_handles` (whole-column normalisation, rapidfuzz
``cpdist``); the anchor is the per-pair Python path it replaced (``normalize_handle`` of both
sides with the v1 and match-key pipelines, rapidfuzz ``Indel`` / ``Prefix`` per pair, pinyin
for cross-script pairs), timed on ``--anchor-pairs`` pairs and scaled linearly (labelled).

Pictures: uniformly random 256-bit hashes (PDQ hashes are median-thresholded, so about
balanced) with planted near copies. App-side: ``min_dihedral_distance`` (numpy
``bitwise_count``), the job's path. Index: ``HashIndex`` (faiss ``IndexBinaryFlat``, exact)
over 1M hashes vs the numpy brute-force back-end (anchor), radius ``PICTURE_RADIUS``. Audit:
partner hashes x 1M provider hashes, all pairs within the radius, measured on
``--audit-queries`` queries and scaled to 1M x 1M (labelled as an estimate); the v3 audit
compares every partner picture with the 8 dihedral variants of every provider picture, i.e.
8x the single-variant scan. Hashing speed on the sandbox's real pictures.

Audit (issue 6, ``run_audit``; alone with ``--audit-only``): the v3 rule's platform-side audit,
``--audit-n`` partner pictures against the 8 dihedral variants of ``--audit-n`` provider
pictures (8N hashes), every pair within ``PICTURE_RADIUS``. Hashes: the sandbox's real PDQ
dihedral blocks (all pictures hashed), provider rows ``--real-frac`` copies of a real block with
0..12 bits flipped per variant, the rest uniformly random; partner rows 5 % copies of a random
provider variant with 0..30 bits flipped, 5 % other edits of real blocks, the rest random.
Anchor: faiss ``IndexBinaryFlat.range_search`` called once per query (today's path), measured on
``--anchor-queries`` queries and scaled; faiss batched (one call over a block of queries) is
measured the same way. ``audit_dihedral`` (multi-index hashing) runs on the whole audit; its
pairs for the first ``--check-queries`` partner pictures are compared with the faiss flat scan
(exactness). Wall and CPU seconds are printed (CPU = process time, both cores).

Run: .venv/bin/python bench/bench_scan.py [--n 1000000] [--audit-queries 10000]
     .venv/bin/python bench/bench_scan.py --audit-only [--audit-n 1000000]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rapidfuzz.distance import Indel, Prefix

from provguard.adapters.graph_files import read_edge_list
from provguard.sandbox import build_platform
from provguard.similarity.handles import MATCH_STEPS, V1_STEPS, normalize_handle
from provguard.similarity.index import HashIndex, audit_dihedral
from provguard.similarity.match import pinyin_key, score_handles
from provguard.similarity.mih import plan_chunks
from provguard.similarity.pictures import hash_picture_table, min_dihedral_distance
from provguard.similarity.scan import PICTURE_RADIUS

GRAPH = Path(__file__).resolve().parents[1] / "data" / "graphs" / "snap-ego-facebook.txt"


def _hanzi(s: str) -> bool:
    return any("\u4e00" <= c <= "\u9fff" for c in s)


def per_pair_path(a: list[str], b: list[str]) -> int:
    """The per-pair Python path (anchor): same features, one pair at a time."""
    matches = 0
    for x, y in zip(a, b, strict=True):
        ka, kb = normalize_handle(x, MATCH_STEPS), normalize_handle(y, MATCH_STEPS)
        v1 = normalize_handle(x, V1_STEPS) == normalize_handle(y, V1_STEPS)
        sim = Indel.normalized_similarity(ka, kb)
        Prefix.similarity(ka, kb)
        py = ka != kb and _hanzi(ka) != _hanzi(kb) and pinyin_key(ka) == pinyin_key(kb)
        matches += bool(v1 or ka == kb or py or sim >= 0.97)
    return matches


T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def cpu_timed(fn: Callable[[], T]) -> tuple[float, float, T]:
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out


def audit_hashes(
    real8: np.ndarray, n: int, real_frac: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic audit input: ``(n, 32)`` partner hashes and ``(n, 8, 32)`` provider blocks."""
    rng = np.random.default_rng(seed)

    def flip(h: np.ndarray, most: int) -> None:  # flips 0..most bits (with repeats) per row
        rows = len(h)
        if rows == 0:
            return
        pos = rng.integers(0, 256, (rows, most))
        how_many = rng.integers(0, most + 1, rows)
        for k in range(most):
            sel = np.nonzero(k < how_many)[0]
            h[sel, pos[sel, k] // 8] ^= (1 << (pos[sel, k] % 8)).astype(np.uint8)

    prov8 = rng.integers(0, 256, (n, 8, 32), dtype=np.uint8)
    n_real = int(n * real_frac)
    prov8[:n_real] = real8[rng.integers(0, len(real8), n_real)]
    flat = prov8[:n_real].reshape(-1, 32)
    flip(flat, 12)
    prov8[:n_real] = flat.reshape(n_real, 8, 32)
    perm = rng.permutation(n)
    prov8 = prov8[perm]
    app = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    n_copy = n // 20
    app[:n_copy] = prov8[rng.integers(0, n, n_copy), rng.integers(0, 8, n_copy)]
    flip(app[:n_copy], 30)
    n_edit = n // 20
    edits = real8[rng.integers(0, len(real8), n_edit), rng.integers(0, 8, n_edit)]
    flip(edits, 12)
    app[n_copy : n_copy + n_edit] = edits
    return app[rng.permutation(n)], prov8


def run_audit(args: argparse.Namespace, real8: np.ndarray) -> list[tuple[str, float, str]]:
    """The platform-side audit rows (see module docstring)."""
    n = args.audit_n
    app, prov8 = audit_hashes(real8, n, args.real_frac, seed=1)
    base = prov8.reshape(-1, 32)
    print(f"audit: {n:,} partner x {n:,} provider x 8 variants; load {os.getloadavg()[0]:.2f}")
    rows: list[tuple[str, float, str]] = []
    flat = faiss.IndexBinaryFlat(256)
    flat.add(base)
    r = PICTURE_RADIUS
    k = args.anchor_queries

    def per_query() -> None:
        for i in range(k):
            flat.range_search(app[i : i + 1], r + 1)

    w_pq, c_pq, _ = cpu_timed(per_query)
    anchor = w_pq * n / k
    kb = args.check_queries
    w_b, c_b, (lims, dist, ids) = cpu_timed(lambda: flat.range_search(app[:kb], r + 1))
    flat.reset()  # free the 8N-hash flat index before the audit
    print(f"anchors done; load {os.getloadavg()[0]:.2f}")
    audit_dihedral(app[:1000], prov8[:2000], r)  # compile the numba kernels (cached on disk)
    w_m, c_m, got = cpu_timed(lambda: audit_dihedral(app, prov8, r))
    counts = np.diff(lims).astype(np.int64)
    qi = np.repeat(np.arange(kb, dtype=np.int64), counts)
    bi = ids.astype(np.int64)
    want: dict[tuple[int, int], int] = {}
    for q_, b_, d_ in zip(qi.tolist(), bi.tolist(), dist.tolist(), strict=True):
        key = (q_, b_ // 8)
        want[key] = min(d_, want.get(key, 257))
    sel = got.app < kb
    have = dict(
        zip(
            zip(got.app[sel].tolist(), got.provider[sel].tolist(), strict=True),
            got.distance[sel].tolist(),
            strict=True,
        )
    )
    exact = have == want
    m = plan_chunks(len(base), r)
    rows += [
        (
            f"audit ANCHOR: faiss IndexBinaryFlat, one range_search per query, {k:,} queries x "
            f"{len(base):,} variant hashes, scaled to {n:,} (CPU {c_pq * n / k:,.0f} s)",
            anchor,
            "1.0x",
        ),
        (
            f"audit: faiss IndexBinaryFlat batched, {kb:,} queries in one call, scaled to {n:,} "
            f"(CPU {c_b * n / kb:,.0f} s)",
            w_b * n / kb,
            f"{w_b * n / kb / anchor:.3f}x",
        ),
        (
            f"audit: audit_dihedral (MIH, {m} chunks), {n:,} x {n:,} x 8 MEASURED, "
            f"{len(got):,} pairs; first {kb:,} partners identical to faiss flat "
            f"({len(want):,} pairs): {exact} (CPU {c_m:,.0f} s)",
            w_m,
            f"{w_m / anchor:.4f}x",
        ),
    ]
    print(f"load average after audit: {os.getloadavg()[0]:.2f}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--anchor-pairs", type=int, default=50_000)
    ap.add_argument("--index-queries", type=int, default=2_000)
    ap.add_argument("--audit-queries", type=int, default=10_000)
    ap.add_argument("--audit-only", action="store_true")
    ap.add_argument("--audit-n", type=int, default=1_000_000)
    ap.add_argument("--real-frac", type=float, default=0.1)
    ap.add_argument("--anchor-queries", type=int, default=200)
    ap.add_argument("--check-queries", type=int, default=2_000)
    args = ap.parse_args()
    n = args.n
    print(f"load average at start: {os.getloadavg()[0]:.2f} (2 cores)")
    platform = build_platform(read_edge_list(GRAPH), seed=7)
    if args.audit_only:
        t_hash, ht = timed(lambda: hash_picture_table(platform.pictures))
        real8 = np.frombuffer(b"".join(ht.column("dihedral").to_pylist()), dtype=np.uint8).reshape(
            -1, 8, 32
        )
        print(f"hashed {len(real8):,} sandbox pictures in {t_hash:.1f} s")
        print_rows(run_audit(args, real8))
        return
    app, prov = platform.app_profiles, platform.provider_profiles
    nick = dict(
        zip(prov.column("subject_id").to_pylist(), prov.column("nickname").to_pylist(), strict=True)
    )
    pairs = [
        (h, nick[s])
        for s, h in zip(
            app.column("subject_id").to_pylist(), app.column("handle").to_pylist(), strict=True
        )
        if s in nick
    ]
    rng = np.random.default_rng(0)
    pick = rng.integers(0, len(pairs), n)
    a = [f"{pairs[j][0]}{i}" for i, j in enumerate(pick)]
    b = [f"{pairs[j][1]}{i}" for i, j in enumerate(pick)]
    rows: list[tuple[str, float, str]] = []

    t_exact, eq = timed(lambda: pc.equal(pa.array(a), pa.array(b)))
    score_handles(a[:100], b[:100])  # build the lookup tables once (not per column)
    t_v3, s = timed(lambda: score_handles(a, b))
    m = args.anchor_pairs
    t_anchor, _ = timed(lambda: per_pair_path(a[:m], b[:m]))
    t_anchor_n = t_anchor * n / m
    matches = int(s.match.sum())
    exact = int(pc.sum(eq).as_py())
    rows += [
        (f"handles app-side, {n:,} pairs: exact equality (pyarrow)", t_exact, ""),
        (
            f"handles app-side, {m:,} pairs: per-pair Python path (anchor, measured)",
            t_anchor,
            "",
        ),
        (f"handles app-side, {n:,} pairs: per-pair path scaled from {m:,}", t_anchor_n, "1.0x"),
        (
            f"handles app-side, {n:,} pairs: v3 scanner ({matches:,} matches; exact {exact:,})",
            t_v3,
            f"{t_v3 / t_anchor_n:.3f}x",
        ),
    ]

    base = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    b8 = rng.integers(0, 256, (n, 8, 32), dtype=np.uint8)
    b8[:, 0] = base
    q = base.copy()
    flips = rng.integers(0, 256, (n, 10))
    for k in range(10):
        q[np.arange(n), flips[:, k] // 8] ^= (1 << (flips[:, k] % 8)).astype(np.uint8)
    t_pic, d = timed(lambda: min_dihedral_distance(q, b8))
    within = int((np.asarray(d) <= PICTURE_RADIUS).sum())
    rows.append(
        (
            f"pictures app-side, {n:,} pairs x 8 dihedral (numpy bitwise_count; "
            f"{within:,} within {PICTURE_RADIUS})",
            t_pic,
            "",
        )
    )

    t_build, index = timed(lambda: HashIndex(base, "faiss"))
    nq = args.index_queries
    queries = q[:nq]
    t_faiss, got = timed(lambda: index.radius_search(queries, PICTURE_RADIUS))
    numpy_index = HashIndex(base, "numpy")
    t_np, want = timed(lambda: numpy_index.radius_search(queries, PICTURE_RADIUS))
    same = np.array_equal(got.query, want.query) and np.array_equal(got.base, want.base)
    rows += [
        (f"index build: {n:,} hashes (faiss IndexBinaryFlat)", t_build, ""),
        (
            f"index query: {nq:,} queries x {n:,} hashes, radius {PICTURE_RADIUS}: numpy brute "
            f"force (anchor)",
            t_np,
            "1.0x",
        ),
        (
            f"index query: same, HashIndex faiss ({len(got):,} pairs; identical to numpy: {same})",
            t_faiss,
            f"{t_faiss / t_np:.3f}x",
        ),
        (
            f"index query: per query, faiss, {n:,} hashes (ms)",
            t_faiss / nq * 1000,
            "",
        ),
    ]

    mq = args.audit_queries
    partner = base[:mq].copy()
    partner[:, 3] ^= 0x0F  # 4 bits off: each partner picture has one true near copy
    t_audit, found = timed(lambda: index.radius_search(partner, PICTURE_RADIUS))
    est1 = t_audit * n / mq
    rows += [
        (
            f"audit: {mq:,} partner x {n:,} provider hashes, all pairs <= {PICTURE_RADIUS} bits "
            f"(faiss flat, exact; {len(found):,} pairs)",
            t_audit,
            "",
        ),
        (f"audit ESTIMATE {n:,} x {n:,}, one variant (scaled from {mq:,} queries)", est1, ""),
        (f"audit ESTIMATE {n:,} x {n:,} x 8 dihedral variants (v3 rule)", est1 * 8, ""),
    ]
    t_hash, ht = timed(lambda: hash_picture_table(platform.pictures))
    count = ht.num_rows
    rows.append(
        (
            f"hashing {count:,} sandbox pictures (decode + centre square + 64x64 Lanczos + 8 "
            f"dihedral PDQ + chroma), 1 core: {count / t_hash:,.0f} images/s",
            t_hash,
            "",
        )
    )
    real8 = np.frombuffer(b"".join(ht.column("dihedral").to_pylist()), dtype=np.uint8)
    rows += run_audit(args, real8.reshape(-1, 8, 32))
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    print_rows(rows)


def print_rows(rows: list[tuple[str, float, str]]) -> None:
    print("| work | seconds | ratio to anchor |")
    print("|---|---:|---:|")
    for name, sec, ratio in rows:
        print(f"| {name} | {sec:.2f} | {ratio} |")


if __name__ == "__main__":
    main()

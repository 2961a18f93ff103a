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

Run: .venv/bin/python bench/bench_scan.py [--n 1000000] [--audit-queries 10000]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rapidfuzz.distance import Indel, Prefix

from provguard.adapters.graph_files import read_edge_list
from provguard.sandbox import build_platform
from provguard.similarity.handles import MATCH_STEPS, V1_STEPS, normalize_handle
from provguard.similarity.index import HashIndex
from provguard.similarity.match import pinyin_key, score_handles
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--anchor-pairs", type=int, default=50_000)
    ap.add_argument("--index-queries", type=int, default=2_000)
    ap.add_argument("--audit-queries", type=int, default=10_000)
    args = ap.parse_args()
    n = args.n
    print(f"load average at start: {os.getloadavg()[0]:.2f} (2 cores)")
    platform = build_platform(read_edge_list(GRAPH), seed=7)
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
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    print("| work | seconds | ratio to anchor |")
    print("|---|---:|---:|")
    for name, sec, ratio in rows:
        print(f"| {name} | {sec:.2f} | {ratio} |")


if __name__ == "__main__":
    main()

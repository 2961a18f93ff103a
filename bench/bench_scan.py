"""Speed of the profile-match scan: app-side check (1M handle pairs, 1M picture pairs), the
platform-side audit (partner pictures x provider pictures within the radius) and hashing speed.

Handles: 1M (app, provider) pairs drawn from the seed-7 sandbox pairs, each made distinct by an
index suffix on both sides (so per-distinct-value caching does not hide the cost). Pictures:
uniformly random 256-bit hashes (PDQ hashes are median-thresholded, so about balanced), with
planted near copies; hashing speed is measured on the sandbox's real pictures.
Anchors: exact string equality (pyarrow) for handles; faiss IndexBinaryFlat brute-force range
search for the audit.

Run: .venv/bin/python bench/bench_scan.py [--n 1000000] [--audit-queries 100000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from provguard.adapters.graph_files import read_edge_list
from provguard.sandbox import build_platform
from provguard.similarity.index import near_pairs
from provguard.similarity.match import score_handles
from provguard.similarity.pictures import hash_picture_table, min_dihedral_distance
from provguard.similarity.scan import PICTURE_RADIUS

GRAPH = Path(__file__).resolve().parents[1] / "data" / "graphs" / "snap-ego-facebook.txt"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--audit-queries", type=int, default=100_000)
    args = ap.parse_args()
    n = args.n
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
    rows = []
    t = time.perf_counter()
    eq = pc.equal(pa.array(a), pa.array(b))
    t_exact = time.perf_counter() - t
    t = time.perf_counter()
    s = score_handles(a, b)
    t_v2 = time.perf_counter() - t
    rows.append((f"handles app-side, {n:,} pairs: exact (pyarrow, anchor)", t_exact, 1.0))
    rows.append(
        (
            f"handles app-side, {n:,} pairs: v2 scanner ({int(s.match.sum()):,} matches; exact {int(pc.sum(eq).as_py()):,})",
            t_v2,
            t_v2 / t_exact,
        )
    )

    base = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    b8 = rng.integers(0, 256, (n, 8, 32), dtype=np.uint8)
    b8[:, 0] = base
    q = base.copy()
    flips = rng.integers(0, 256, (n, 10))
    for k in range(10):
        q[np.arange(n), flips[:, k] // 8] ^= (1 << (flips[:, k] % 8)).astype(np.uint8)
    t = time.perf_counter()
    d = min_dihedral_distance(q, b8)
    t_pic = time.perf_counter() - t
    rows.append(
        (
            f"pictures app-side, {n:,} pairs x 8 dihedral (numpy bitwise_count; {int((d <= PICTURE_RADIUS).sum()):,} within {PICTURE_RADIUS})",
            t_pic,
            float("nan"),
        )
    )

    m = args.audit_queries
    partner = base[:m].copy()
    partner[:, 3] ^= 0x0F  # 4 bits off: each partner picture has one true near copy
    t = time.perf_counter()
    found = near_pairs(partner, base, PICTURE_RADIUS)
    t_audit = time.perf_counter() - t
    rows.append(
        (
            f"audit: {m:,} partner x {n:,} provider hashes, all pairs <= {PICTURE_RADIUS} bits (faiss flat, exact; {len(found):,} pairs)",
            t_audit,
            float("nan"),
        )
    )
    rows.append(
        (f"audit extrapolated to {n:,} x {n:,} (linear in queries)", t_audit * n / m, float("nan"))
    )
    t = time.perf_counter()
    ht = hash_picture_table(platform.pictures)
    t_hash = time.perf_counter() - t
    rows.append(
        (
            f"hashing {ht.num_rows:,} sandbox pictures (decode + centre square + 8 dihedral PDQ): {ht.num_rows / t_hash:,.0f} images/s",
            t_hash,
            float("nan"),
        )
    )
    print("| work | seconds | ratio to anchor |")
    print("|---|---:|---:|")
    for name, sec, ratio in rows:
        print(f"| {name} | {sec:.2f} | {'' if ratio != ratio else f'{ratio:.1f}x'} |")


if __name__ == "__main__":
    main()

"""Decision speed: provguard's compiled index vs cedarpy (policy set parsed once, reused).

Run: .venv/bin/python bench/bench_decide.py [--rows 1000000] [--seed 7]

Same bundles (random rules over 100 apps, 5 actions, purposes, categories, origins; 10 / 1,000 /
10,000 rules) and the same request stream for both engines. Single decisions: p50 / p99 in µs per
call over a stream of distinct-looking requests (provguard: warm plan cache, and cold: a fresh
index per measured call is too slow to matter, so "cold" = plan cache emptied before each call);
batch: decisions per second (provguard ``decide_batch`` on numpy columns; cedarpy
``is_authorized_batch``). Prints one table; ratios are cedarpy time / provguard time.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from datetime import UTC, datetime, timedelta

import numpy as np

from provguard.decide import CompiledPolicy, Request, decide_batch
from provguard.decide.cedar import cedar_request, to_cedar
from provguard.policy import PolicySet, load_bundle_text
from provguard.provenance import default_registry

APPS = [f"app{i}" for i in range(100)]
ACTIONS = ["use", "derive", "display", "store", "transfer"]
PURPOSES = ["social.friend_recommendation", "profile.display", "analytics", "marketing"]
CATS = ["user.avatar", "user.name.nickname", "user.social.friend_list", "grant.login"]
ORIGINS = ["wechat", "qq", "user_input", "apple"]


def bundle(n: int, rng: random.Random) -> PolicySet:
    """``n`` rules in bundles of at most 1,000 (a bundle file is capped at 1 MiB)."""
    return PolicySet.of(_bundle(min(1000, n - start), start, rng) for start in range(0, n, 1000))


def _bundle(n: int, start: int, rng: random.Random):  # type: ignore[no-untyped-def]
    lines = [
        f"instrument: {{id: bench{start}, kind: internal_policy, issuer: bench,"
        " effective_from: 2019-01-01}",
        "rules:",
    ]
    for k in range(start, start + n):
        effect = rng.choice(["deny", "permit"])
        apps = ", ".join(rng.sample(APPS, 2))
        acts = ", ".join(rng.sample(ACTIONS[:3], 2))
        purp = rng.choice(PURPOSES)
        cats = ", ".join(rng.sample(CATS, 2))
        ors = ", ".join(rng.sample(ORIGINS, 2))
        lines.append(
            f"  - {{id: r{k}, effect: {effect}, actions: [{acts}], purposes: [{purp}], "
            f"apps: [{apps}], data: {{categories: [{cats}], origins: [{ors}]}}}}"
        )
    return load_bundle_text("\n".join(lines) + "\n", f"bench{start}.yaml")


def stream(n: int, rng: random.Random) -> list[Request]:
    t0 = datetime(2020, 1, 1, tzinfo=UTC)
    return [
        Request(
            app=rng.choice(APPS),
            action=rng.choice(ACTIONS[:3]),
            category=rng.choice(CATS),
            origins=frozenset(rng.sample(ORIGINS, rng.randint(1, 2))),
            at=t0 + timedelta(minutes=rng.randint(0, 10**6)),
            purpose=rng.choice(PURPOSES),
        )
        for _ in range(n)
    ]


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100)[int(q) - 1] if len(xs) > 1 else xs[0]


def time_calls(fn, items: list[object]) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    clock = time.perf_counter_ns
    for it in items:
        t = clock()
        fn(it)
        out.append((clock() - t) / 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    try:
        import cedarpy
    except ImportError:  # pragma: no cover
        cedarpy = None
    rng = random.Random(args.seed)
    reqs = stream(5000, rng)
    reg = default_registry()
    rows = []
    for n in (10, 1_000, 10_000):
        ps = bundle(n, random.Random(n))
        cp = CompiledPolicy(ps)
        for r in reqs:  # warm the plan cache
            cp.decide(r)
        warm = time_calls(cp.decide, reqs)

        def cold(r: Request, cp: CompiledPolicy = cp) -> None:
            cp._plans.clear()
            cp.decide(r)

        cold_t = time_calls(cold, reqs[:1000])
        row = {
            "rules": n,
            "pg_p50": pct(warm, 50),
            "pg_p99": pct(warm, 99),
            "pg_cold_p50": pct(cold_t, 50),
            "pg_cold_p99": pct(cold_t, 99),
        }
        if cedarpy is not None:
            ct = to_cedar(ps)
            handle = cedarpy.PolicySet.from_str(ct.text)
            creqs = [cedar_request(r) for r in reqs[: 300 if n == 10_000 else 1000]]
            agree = sum(
                (res.decision.value == "Allow") == (cp.decide(r).effect == "permit")
                for r, res in zip(
                    reqs, cedarpy.is_authorized_batch(creqs, handle, []), strict=False
                )
            )
            ced = time_calls(lambda c, h=handle: cedarpy.is_authorized(c, h, []), creqs)
            t = time.perf_counter()
            cedarpy.is_authorized_batch(creqs, handle, [])
            row.update(
                cedar_p50=pct(ced, 50),
                cedar_p99=pct(ced, 99),
                cedar_batch=len(creqs) / (time.perf_counter() - t),
                agree=f"{agree}/{len(creqs)}",
            )
        # batch
        m = args.rows
        brng = np.random.default_rng(args.seed)
        cols = {
            "app": np.array(APPS, dtype=object)[brng.integers(0, len(APPS), m)],
            "action": np.array(ACTIONS[:3], dtype=object)[brng.integers(0, 3, m)],
            "category": np.array(CATS, dtype=object)[brng.integers(0, len(CATS), m)],
            "purpose": np.array(PURPOSES, dtype=object)[brng.integers(0, len(PURPOSES), m)],
        }
        bits = np.array([1 << reg.bit(o) for o in ORIGINS], dtype=np.uint64)
        masks = bits[brng.integers(0, 4, m)] | bits[brng.integers(0, 4, m)]
        at = np.datetime64("2020-01-01T00:00:00", "ns") + brng.integers(0, 10**15, m).astype(
            "timedelta64[ns]"
        )
        t = time.perf_counter()
        out = decide_batch(cp, origins=masks, at=at, registry=reg, **cols)
        row["pg_batch"] = m / (time.perf_counter() - t)
        row["classes"] = len(out.classes)
        rows.append(row)
    head = (
        "| rules | provguard p50 µs | p99 µs | cold p50 / p99 µs | cedarpy p50 µs | p99 µs | "
        "p50 ratio | provguard batch dec/s | cedarpy batch dec/s | batch ratio | agree |"
    )
    print(head)
    print("|" + "---|" * 11)
    for r in rows:
        print(
            f"| {r['rules']:,} | {r['pg_p50']:.2f} | {r['pg_p99']:.2f} | "
            f"{r['pg_cold_p50']:.1f} / {r['pg_cold_p99']:.1f} | "
            f"{r.get('cedar_p50', float('nan')):.1f} | {r.get('cedar_p99', float('nan')):.1f} | "
            f"{r.get('cedar_p50', float('nan')) / r['pg_p50']:.0f}× | {r['pg_batch']:,.0f} | "
            f"{r.get('cedar_batch', float('nan')):,.0f} | "
            f"{r['pg_batch'] / r.get('cedar_batch', float('nan')):.0f}× | {r.get('agree', '-')} |"
        )


if __name__ == "__main__":
    main()

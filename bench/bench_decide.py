"""Decision speed: provguard's compiled index against cedarpy, a Rego engine and Casbin.

Run: .venv/bin/python bench/bench_decide.py [--rows 1000000] [--seed 7]

Same bundles (random rules over 100 apps, 3 actions, purposes, categories, origins; 10 / 1,000 /
10,000 rules) and the same request stream for every engine, each translated from the provguard
bundle: cedarpy (``provguard.decide.cedar.to_cedar``, policy set parsed once, reused), Rego with
regorus through ``opa-eval`` (one Rego rule per provguard rule, module parsed once) and pycasbin
(``casbin``; one policy line per (app, action, purpose, category, origin) of each rule, since a
Casbin policy line is one tuple). Engines that are not installed are shown as "-".

Single decisions: p50 / p99 in µs per call over a stream of distinct-looking requests (provguard:
warm plan cache, and "cold" = plan cache emptied before each call). Batch: decisions per second of
``decide_batch`` over ``--rows`` rows, with string columns given as numpy object arrays ("obj")
and as Arrow dictionary arrays ("dict", what Parquet / DuckDB hand over); cedarpy:
``is_authorized_batch``. A last line decides the 2019 injunction's login-grant transfers with a
per-row first-use time column (the grandfathering exception evaluated per row). Ratios are the
other engine's time over provguard's. "agree" counts requests on which each engine gives
provguard's allow / not-allow answer.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from provguard.decide import CompiledPolicy, Request, decide_batch
from provguard.decide.cedar import cedar_request, to_cedar
from provguard.policy import PolicySet, load_bundle_text, load_policy_dir
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


def time_calls(fn, items: list[Any]) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    clock = time.perf_counter_ns
    for it in items:
        t = clock()
        fn(it)
        out.append((clock() - t) / 1000)
    return out


def _ancestors(key: str) -> list[str]:
    parts = key.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def _set(values: Any) -> str:
    return "{" + ", ".join(json.dumps(v) for v in sorted(values)) + "}"


def to_rego(ps: PolicySet) -> str:
    """One Rego rule per enforced provguard rule (targets only: the bench rules have no
    conditions), deny overrides permit, validity as a time test."""
    lines = ["package pg", "import rego.v1"]
    for b in ps.bundles:
        start = int(
            datetime.combine(b.instrument.effective_from, datetime.min.time(), UTC).timestamp()
        )
        for r in b.rules:
            assert not r.dynamic and r.mode == "enforce" and r.apps.values is not None
            body = [f"input.time >= {start}", f"input.action in {_set(r.actions)}"]
            body.append(f"input.app in {_set(r.apps.values)}")
            if r.purposes is not None:
                body.append(f"some p in input.purposes; p in {_set(r.purposes)}")
            if r.categories is not None:
                body.append(f"some c in input.categories; c in {_set(r.categories)}")
            if r.origins is not None:
                body.append(f"some o in input.origins; o in {_set(r.origins)}")
            head = "deny_ids" if r.effect == "deny" else "permit_ids"
            lines.append(f'{head} contains "{r.id}" if {{ ' + "; ".join(body) + " }")
    lines.append(
        'decision := "deny" if { count(deny_ids) > 0 } '
        'else := "permit" if { count(permit_ids) > 0 } else := "not_applicable"'
    )
    return "\n".join(lines) + "\n"


def rego_input(r: Request) -> str:
    return json.dumps(
        {
            "app": r.app,
            "action": r.action,
            "purposes": _ancestors(r.purpose) if r.purpose else [],
            "categories": _ancestors(r.category),
            "origins": sorted(r.origins),
            "time": int(r.at.timestamp()),
        }
    )


CASBIN_MODEL = """[request_definition]
r = sub, act, purpose, cat, o1, o2
[policy_definition]
p = sub, act, purpose, cat, origin, eft
[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))
[matchers]
m = r.sub == p.sub && r.act == p.act && r.purpose == p.purpose && r.cat == p.cat \
&& (r.o1 == p.origin || r.o2 == p.origin)
"""


def to_casbin(ps: PolicySet) -> list[list[str]]:
    """Casbin policy lines: one per (app, action, purpose, category, origin) of every rule (the
    bench's purposes and categories are leaves and requests name leaves, so equality is exact)."""
    out = []
    for _, r in ps.rules():
        assert r.apps.values and r.purposes and r.categories and r.origins
        for app in r.apps.values:
            for act in sorted(r.actions):
                for p in r.purposes:
                    for c in r.categories:
                        for o in sorted(r.origins):
                            out.append(
                                [app, act, p, c, o, "allow" if r.effect == "permit" else "deny"]
                            )
    return out


def casbin_args(r: Request) -> tuple[str, ...]:
    o = sorted(r.origins)
    return (r.app, r.action, r.purpose or "", r.category, o[0], o[1] if len(o) > 1 else "")


def batch_columns(m: int, seed: int) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    reg = default_registry()
    brng = np.random.default_rng(seed)
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
    return cols, masks, at


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def grandfathering_batch(m: int, seed: int) -> tuple[float, int]:
    """Decisions/s on login-grant transfers under the shipped bundles, first-use time per row."""
    ps = load_policy_dir(Path(__file__).resolve().parents[1] / "policies")
    cp = CompiledPolicy(ps)
    reg = default_registry()
    rng = np.random.default_rng(seed)
    apps = np.array(["douyin", "duoshan"], dtype=object)
    bits = np.array([1 << reg.bit(o) for o in ("wechat", "qq", "user_input")], dtype=np.uint64)
    t0 = np.datetime64("2019-01-01T00:00:00", "ns")
    first = t0 + rng.integers(0, 2 * 10**16, m).astype("timedelta64[ns]")
    first[rng.random(m) < 0.2] = np.datetime64("NaT")
    kw = {
        "app": apps[rng.integers(0, 2, m)],
        "action": "transfer",
        "category": "grant.login",
        "recipient": np.array(["duoshan", "douyin", "toutiao"], dtype=object)[
            rng.integers(0, 3, m)
        ],
        "origins": bits[rng.integers(0, 3, m)],
        "at": t0 + rng.integers(0, 4 * 10**16, m).astype("timedelta64[ns]"),
        "grant_first_used_by_recipient_at": first,
    }
    decide_batch(cp, registry=reg, **kw)
    best = min(_timed(lambda: decide_batch(cp, registry=reg, **kw)) for _ in range(3))
    out = decide_batch(cp, registry=reg, **kw)
    return m / best, int(out.excepted.sum())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    try:
        import cedarpy
    except ImportError:  # pragma: no cover
        cedarpy = None
    try:
        import opa_eval
    except ImportError:  # pragma: no cover
        opa_eval = None
    try:
        import casbin
        from casbin import model as casbin_model
    except ImportError:  # pragma: no cover
        casbin = None
    rng = random.Random(args.seed)
    reqs = stream(5000, rng)
    reg = default_registry()
    cols, masks, at = batch_columns(args.rows, args.seed)
    dcols = {k: pa.array(v, type=pa.string()).dictionary_encode() for k, v in cols.items()}
    rows = []
    for n in (10, 1_000, 10_000):
        ps = bundle(n, random.Random(n))
        cp = CompiledPolicy(ps)
        for r in reqs:  # warm the plan cache
            cp.decide(r)
        warm = time_calls(cp.decide, reqs)
        allowed = [cp.decide(r).effect == "permit" for r in reqs]

        def cold(r: Request, cp: CompiledPolicy = cp) -> None:
            cp._plans.clear()
            cp.decide(r)

        cold_t = time_calls(cold, reqs[:1000])
        row: dict[str, Any] = {
            "rules": n,
            "pg_p50": pct(warm, 50),
            "pg_p99": pct(warm, 99),
            "pg_cold_p50": pct(cold_t, 50),
            "pg_cold_p99": pct(cold_t, 99),
        }
        if cedarpy is not None:
            ct = to_cedar(ps)
            handle = cedarpy.PolicySet.from_str(ct.text)
            k = 300 if n == 10_000 else 1000
            creqs = [cedar_request(r) for r in reqs[:k]]
            res = cedarpy.is_authorized_batch(creqs, handle, [])
            agree = sum(
                (x.decision.value == "Allow") == a for x, a in zip(res, allowed, strict=False)
            )
            ced = time_calls(lambda c, h=handle: cedarpy.is_authorized(c, h, []), creqs)
            dt = _timed(lambda h=handle, c=creqs: cedarpy.is_authorized_batch(c, h, []))
            row.update(
                cedar_p50=pct(ced, 50),
                cedar_p99=pct(ced, 99),
                cedar_batch=len(creqs) / dt,
                cedar_agree=f"{agree}/{len(creqs)}",
            )
        if opa_eval is not None:
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "pg.rego")
                Path(path).write_text(to_rego(ps), encoding="utf-8")
                ev = opa_eval.OpaEval(path, query="data.pg.decision")
            k = {10: 1000, 1_000: 300, 10_000: 50}[n]
            inputs = [rego_input(r) for r in reqs[:k]]
            got = [ev.evaluate_parsed(x) for x in inputs]
            agree = sum(g == cp.decide(r).effect for g, r in zip(got, reqs, strict=False))
            rt = time_calls(ev.evaluate_parsed, inputs)
            row.update(rego_p50=pct(rt, 50), rego_p99=pct(rt, 99), rego_agree=f"{agree}/{k}")
        if casbin is not None:
            mdl = casbin_model.Model()
            mdl.load_model_from_text(CASBIN_MODEL)
            enf = casbin.Enforcer(mdl)
            enf.add_policies(to_casbin(ps))
            k = {10: 1000, 1_000: 100, 10_000: 20}[n]
            cargs = [casbin_args(r) for r in reqs[:k]]
            agree = sum(enf.enforce(*c) == a for c, a in zip(cargs, allowed, strict=False))
            bt = time_calls(lambda c, e=enf: e.enforce(*c), cargs)
            row.update(casbin_p50=pct(bt, 50), casbin_p99=pct(bt, 99), casbin_agree=f"{agree}/{k}")
        # batch: best of 3 after a warm-up call (the warm-up builds the dense tables)
        decide_batch(cp, origins=masks, at=at, registry=reg, **cols)
        for label, c in (("obj", cols), ("dict", dcols)):
            best = min(
                _timed(lambda c=c, cp=cp: decide_batch(cp, origins=masks, at=at, registry=reg, **c))
                for _ in range(3)
            )
            row[f"pg_batch_{label}"] = args.rows / best
        row["classes"] = len(decide_batch(cp, origins=masks, at=at, registry=reg, **dcols).classes)
        rows.append(row)

    nan = float("nan")

    def f(r: dict[str, Any], key: str, fmt: str = ".1f") -> str:
        return format(r[key], fmt) if key in r else "-"

    def ratio(r: dict[str, Any], key: str, base: str) -> str:
        return f"{r[key] / r[base]:.0f}×" if key in r else "-"

    print("Single decisions (µs per call; ratio = other engine's p50 / provguard warm p50)")
    print()
    print(
        "| rules | provguard p50 | p99 | cold p50 / p99 | cedarpy p50 | p99 | ratio | "
        "Rego (regorus) p50 | p99 | ratio | Casbin p50 | p99 | ratio | agree cedar / rego / casbin |"
    )
    print("|" + "---|" * 14)
    for r in rows:
        print(
            f"| {r['rules']:,} | {r['pg_p50']:.2f} | {r['pg_p99']:.2f} | "
            f"{r['pg_cold_p50']:.1f} / {r['pg_cold_p99']:.1f} | "
            f"{f(r, 'cedar_p50')} | {f(r, 'cedar_p99')} | {ratio(r, 'cedar_p50', 'pg_p50')} | "
            f"{f(r, 'rego_p50')} | {f(r, 'rego_p99')} | {ratio(r, 'rego_p50', 'pg_p50')} | "
            f"{f(r, 'casbin_p50')} | {f(r, 'casbin_p99')} | {ratio(r, 'casbin_p50', 'pg_p50')} | "
            f"{r.get('cedar_agree', '-')} / {r.get('rego_agree', '-')} / "
            f"{r.get('casbin_agree', '-')} |"
        )
    print()
    print(f"Batch ({args.rows:,} rows; decisions per second)")
    print()
    print(
        "| rules | provguard obj columns | provguard Arrow dict columns | request classes | "
        "cedarpy is_authorized_batch | ratio (obj) |"
    )
    print("|" + "---|" * 6)
    for r in rows:
        cb = r.get("cedar_batch", nan)
        print(
            f"| {r['rules']:,} | {r['pg_batch_obj']:,.0f} | {r['pg_batch_dict']:,.0f} | "
            f"{r['classes']:,} | {cb:,.0f} | {r['pg_batch_obj'] / cb:.0f}× |"
        )
    rate, exc = grandfathering_batch(args.rows, args.seed)
    print()
    print(
        f"Injunction transfers with a per-row first-use column ({args.rows:,} rows, "
        f"{exc:,} grandfathered): {rate:,.0f} decisions/s"
    )


if __name__ == "__main__":
    main()

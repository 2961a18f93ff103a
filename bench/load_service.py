"""Bounded loopback load test of ``POST /v1/decisions`` (provguard serve's app under uvicorn).

For each audit setting (``off``; ``queued`` = block mode, answer once queued; ``committed`` =
block mode, answer once the entry's batch has committed) the script

1. builds a fresh output folder (control store with the policy bundles, empty audit log),
2. starts the service app under uvicorn in a child process on 127.0.0.1 at a free port
   (single worker, access log off),
3. runs ``--clients`` concurrent httpx async clients (one connection each) posting decision
   requests for ``--seconds`` seconds, at most ``--max-requests`` requests in all; every request
   carries a unique ``audit_context.req`` id,
4. stops the server gracefully (SIGTERM: the audit writer flushes on shutdown) and checks the
   audit log: exactly one entry per answered (HTTP 200) decision, matched by id -- none lost,
   none duplicated, none extra -- and the hash chain verifies.

Prints one row per setting: requests, errors, throughput (answered decisions/s), p50/p99/max
latency (ms, client side, request sent to response read), audit entries, lost, extra, chain ok.

    .venv/bin/python bench/load_service.py [--clients 16] [--seconds 20] \
        [--max-requests 200000] [--modes off,queued,committed]

Exit status 1 if any audit entry was lost or duplicated, or the chain does not verify.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.adapters.control_sqlite import SqlControlStore
from provguard.policy import load_policy_dir

KEY = "load-test-key-douyin"
ROOT = Path(__file__).resolve().parents[1]
POLICIES = ROOT / "policies"
ORIGINS = (["wechat"], ["qq"], ["user_input"], ["wechat", "user_input"])
PURPOSES = ("social.friend_recommendation", "profile.display")


@dataclass
class Result:
    mode: str
    sent: int
    ok_ids: list[str]
    errors: Counter[str]
    latencies_ms: list[float]
    elapsed: float
    entries: int = 0
    lost: int = 0
    extra: int = 0
    chain_ok: bool = False


def serve(store: str, port: int, mode: str) -> None:
    """Child process: the service app under uvicorn on 127.0.0.1:``port``."""
    import uvicorn

    from provguard.service import ApiKeys, Client, ServiceSettings, create_app

    keys = ApiKeys()
    keys.add(KEY, Client("douyin-load", "douyin", "app"))
    settings = ServiceSettings(
        store=Path(store),
        policy=POLICIES,
        api_keys=keys,
        audit_mode="off" if mode == "off" else "block",
        ack="committed" if mode == "committed" else "queued",
        queue_size=100_000,
    )
    uvicorn.run(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_store(root: Path) -> None:
    root.mkdir(parents=True)
    SqlControlStore(root / "control.db").save_bundles(load_policy_dir(POLICIES).bundles)
    SqliteAuditLog(root / "control.db").close()


async def wait_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited with status {proc.returncode}")
            try:
                if (await c.get(url + "/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("the server did not start in time")


async def load(url: str, clients: int, seconds: float, max_requests: int, mode: str) -> Result:
    res = Result(mode, 0, [], Counter(), [], 0.0)
    deadline = time.monotonic() + seconds
    counter = iter(range(max_requests))

    async def one_client(c: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            i = next(counter, None)
            if i is None:
                return
            rid = f"r{i}"
            body = {
                "action": "use",
                "category": "user.avatar",
                "origins": ORIGINS[i % len(ORIGINS)],
                "purpose": PURPOSES[(i // len(ORIGINS)) % len(PURPOSES)],
                "audit_context": {"req": rid},
            }
            res.sent += 1
            t = time.perf_counter()
            try:
                r = await c.post(url + "/v1/decisions", json=body)
            except httpx.HTTPError as exc:
                res.errors[type(exc).__name__] += 1
                continue
            res.latencies_ms.append((time.perf_counter() - t) * 1000)
            if r.status_code == 200:
                res.ok_ids.append(rid)
            else:
                res.errors[f"HTTP {r.status_code}"] += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"X-API-Key": KEY}
    async with httpx.AsyncClient(limits=limits, headers=headers, timeout=60.0) as c:
        t0 = time.monotonic()
        await asyncio.gather(*(one_client(c) for _ in range(clients)))
        res.elapsed = time.monotonic() - t0
    return res


def check_log(db: Path, res: Result) -> None:
    log = SqliteAuditLog(db, create=False)
    try:
        ids = Counter(
            str(e.payload.get("context", {}).get("req")) for e in log.entries(kind="decision")
        )
        res.entries = sum(ids.values())
        answered = set(res.ok_ids)
        res.lost = sum(1 for rid in answered if ids[rid] == 0)
        res.extra = sum(n - 1 for n in ids.values() if n > 1) + sum(
            n for rid, n in ids.items() if rid not in answered
        )
        res.chain_ok = log.verify().ok
    finally:
        log.close()


def run_mode(mode: str, args: argparse.Namespace, tmp: Path) -> Result:
    store = tmp / f"out-{mode}"
    make_store(store)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(store), str(port), mode],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(wait_up(url, proc))
        res = asyncio.run(load(url, args.clients, args.seconds, args.max_requests, mode))
    finally:
        proc.send_signal(signal.SIGTERM)  # graceful: lifespan shutdown closes the writer
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if mode == "off":
        res.chain_ok = True
    else:
        check_log(store / "control.db", res)
    return res


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--max-requests", type=int, default=200_000)
    p.add_argument("--modes", default="off,queued,committed")
    args = p.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("off", "queued", "committed")]
    if bad:
        p.error(f"unknown mode(s) {bad}: use off, queued, committed")
    print(
        f"clients {args.clients}, {args.seconds:g} s per setting, "
        f"at most {args.max_requests} requests; server: uvicorn, 1 worker, 127.0.0.1"
    )
    header = (
        "| audit | requests | errors | decisions/s | p50 ms | p99 ms | max ms "
        "| audit entries | lost | extra | chain ok |"
    )
    rows = []
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for mode in modes:
            r = run_mode(mode, args, Path(tmp))
            errors = sum(r.errors.values())
            detail = ", ".join(f"{k} {v}" for k, v in sorted(r.errors.items()))
            audit = "-" if mode == "off" else str(r.entries)
            rows.append(
                f"| {mode} | {r.sent} | {errors}{f' ({detail})' if detail else ''} "
                f"| {len(r.ok_ids) / r.elapsed:.0f} | {pct(r.latencies_ms, 0.5):.2f} "
                f"| {pct(r.latencies_ms, 0.99):.2f} | {max(r.latencies_ms, default=0):.1f} "
                f"| {audit} | {r.lost if mode != 'off' else '-'} "
                f"| {r.extra if mode != 'off' else '-'} | {r.chain_ok if mode != 'off' else '-'} |"
            )
            failed |= r.lost > 0 or r.extra > 0 or not r.chain_ok
            print(rows[-1], flush=True)
    print()
    print(header)
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Bounded loopback load test of ``POST /v1/decisions`` (provguard serve's app under uvicorn).

For each audit setting (``off``; ``queued`` = block mode, answer once queued; ``committed`` =
block mode, answer once the entry's batch has committed) the script

1. builds a fresh output folder (control store with the policy bundles, empty audit log),
2. starts the service app under uvicorn in a child process on 127.0.0.1 at a free port
   (``--workers`` processes, default 1; access log off),
3. runs ``--clients`` concurrent httpx async clients (one connection each) posting decision
   requests for ``--seconds`` seconds, at most ``--max-requests`` requests in all; every request
   carries a unique ``audit_context.req`` id,
4. stops the server gracefully (SIGTERM: the audit writer flushes on shutdown) and checks the
   audit log: exactly one entry per answered (HTTP 200) decision, matched by id -- none lost,
   none duplicated, none extra -- and the hash chain verifies.

Prints one row per setting: requests, errors, throughput (answered decisions/s), p50/p99/max
latency (ms, client side, request sent to response read), audit entries, lost, extra, chain ok.

    .venv/bin/python bench/load_service.py [--clients 16] [--seconds 20] \
        [--max-requests 200000] [--modes off,queued,committed] [--workers 1]
    .venv/bin/python bench/load_service.py --inprocess 2000   # endpoint A/B, see inprocess()

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
from typing import Annotated

import httpx
from fastapi import Depends, Request

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.adapters.control_sqlite import SqlControlStore
from provguard.policy import load_policy_dir
from provguard.service.app import ServiceState, _key_from, _to_request, state_of
from provguard.service.auth import Client
from provguard.service.errors import AuthenticationError, ForbiddenError
from provguard.service.schemas import (
    AuditInfo,
    DecisionBody,
    DecisionResponse,
    ObligationView,
    ReasonView,
)

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


def serve(store: str, port: int, mode: str, workers: int) -> None:
    """Child process: the service app under uvicorn on 127.0.0.1:``port`` with ``workers``
    worker processes (as ``provguard serve --workers N`` runs it)."""
    import json

    import uvicorn

    from provguard.service.app import (
        SETTINGS_ENV,
        ServiceSettings,
        create_app,
        settings_to_environment,
    )
    from provguard.service.auth import hash_key

    keys = Path(store) / "keys.json"
    doc = {
        "keys": [{"name": "douyin-load", "app": "douyin", "role": "app", "sha256": hash_key(KEY)}]
    }
    keys.write_text(json.dumps(doc))
    settings = ServiceSettings(
        store=Path(store),
        policy=POLICIES,
        keys=keys,
        audit_mode="off" if mode == "off" else "block",
        ack="committed" if mode == "committed" else "queued",
        queue_size=100_000,
    )
    if workers == 1:
        uvicorn.run(
            create_app(settings), host="127.0.0.1", port=port, log_level="warning", access_log=False
        )
        return
    os.environ[SETTINGS_ENV] = settings_to_environment(settings)
    uvicorn.run(
        "provguard.service.app:app_from_environment",
        factory=True,
        workers=workers,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        timeout_worker_healthcheck=120,
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


async def wait_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
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
        [sys.executable, __file__, "--serve", str(store), str(port), mode, str(args.workers)],
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


# --- the decision endpoint written the previous way (sync handler and dependencies), for the A/B


def _current_client_sync(request: Request) -> Client:
    client = state_of(request).keys.lookup(_key_from(request))
    if client is None:
        raise AuthenticationError("a valid API key is required")
    return client


def _require_app_sync(client: Annotated[Client, Depends(_current_client_sync)]) -> Client:
    if client.role != "app":
        raise ForbiddenError("app key needed")
    return client


def _state_sync(request: Request) -> ServiceState:
    return state_of(request)


def _sync_decision(
    body: DecisionBody,
    client: Annotated[Client, Depends(_require_app_sync)],
    state: Annotated[ServiceState, Depends(_state_sync)],
) -> DecisionResponse:
    decision = state.decide(_to_request(body, client))
    d = decision.as_dict()
    return DecisionResponse(
        effect=decision.effect,
        allowed=decision.allowed,
        reasons=[ReasonView(**r) for r in d["reasons"]],
        obligations=[ObligationView(**o) for o in d["obligations"]],
        request=d["request"],
        audit=AuditInfo(mode="off", submission=None, acknowledged=False),
    )


def inprocess(n: int, rounds: int = 5) -> int:
    """A/B of the decision endpoint's own cost, in process (httpx ASGI transport: no sockets,
    no client process): the endpoint as served (``async def`` handler and dependencies) against
    the same handler written the previous way (``def`` handler and ``def`` dependencies, each
    run in the thread pool, response validated). ``n`` sequential requests per arm per round,
    arms interleaved; audit off. Prints p50/p99 per request (µs) and the ratios."""
    import statistics

    from provguard.service import ApiKeys, ServiceSettings, create_app

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "out"
        make_store(store)
        keys = ApiKeys()
        keys.add(KEY, Client("douyin-load", "douyin", "app"))
        app = create_app(
            ServiceSettings(store=store, policy=POLICIES, api_keys=keys, audit_mode="off")
        )

        app.add_api_route(
            "/bench/sync-decision",
            _sync_decision,
            methods=["POST"],
            response_model=DecisionResponse,
        )

        async def arm(c: httpx.AsyncClient, path: str, base: int) -> list[float]:
            out = []
            for i in range(n):
                body = {
                    "action": "use",
                    "category": "user.avatar",
                    "origins": ORIGINS[i % len(ORIGINS)],
                    "purpose": PURPOSES[(i // len(ORIGINS)) % len(PURPOSES)],
                    "audit_context": {"req": f"r{base + i}"},
                }
                t = time.perf_counter()
                r = await c.post(path, json=body)
                out.append((time.perf_counter() - t) * 1e6)
                if r.status_code != 200:
                    raise SystemExit(f"{path}: HTTP {r.status_code} {r.text}")
            return out

        async def main_ab() -> dict[str, list[float]]:
            res: dict[str, list[float]] = {"async (as served)": [], "sync (previous)": []}
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://bench", headers={"X-API-Key": KEY}
            ) as c:
                await arm(c, "/v1/decisions", 0)  # warm-up
                for r in range(rounds):
                    res["async (as served)"] += await arm(c, "/v1/decisions", r * n)
                    res["sync (previous)"] += await arm(c, "/bench/sync-decision", r * n)
            return res

        res = asyncio.run(main_ab())
        app.state.provguard.close()
    base = res["async (as served)"]
    print(f"in-process A/B, {rounds} rounds x {n} sequential requests per arm, audit off")
    print(f"{'arm':<20}{'p50 us':>9}{'p99 us':>9}{'mean us':>9}{'p50 ratio':>11}{'p99 ratio':>11}")
    for name, xs in res.items():
        print(
            f"{name:<20}{pct(xs, 0.5):>9.0f}{pct(xs, 0.99):>9.0f}{statistics.fmean(xs):>9.0f}"
            f"{pct(xs, 0.5) / pct(base, 0.5):>11.3f}{pct(xs, 0.99) / pct(base, 0.99):>11.3f}"
        )
    return 0


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def main() -> int:
    if len(sys.argv) == 6 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--max-requests", type=int, default=200_000)
    p.add_argument("--modes", default="off,queued,committed")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument(
        "--inprocess",
        type=int,
        default=0,
        metavar="N",
        help="instead: in-process A/B of the endpoint (async vs previous sync), N requests/arm",
    )
    args = p.parse_args()
    if args.inprocess:
        return inprocess(args.inprocess)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("off", "queued", "committed")]
    if bad:
        p.error(f"unknown mode(s) {bad}: use off, queued, committed")
    print(
        f"clients {args.clients}, {args.seconds:g} s per setting, "
        f"at most {args.max_requests} requests; server: uvicorn, {args.workers} worker(s), "
        "127.0.0.1"
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

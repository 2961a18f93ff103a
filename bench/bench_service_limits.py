"""What the service's input limits cost per request (session 6, findings F4/F5/F6).

Interleaved in one process (A, B, A, B, ... per round; medians over rounds):

* parse: the stdlib ``json.loads`` (what FastAPI used) vs :func:`provguard.service.limits.
  strict_loads` on a typical decision body, the same body with a non-ASCII ``audit_context``
  escape (``\\u`` forces the surrogate scan), and a 1,000-request batch body;
* pre-check: :func:`provguard.service.limits.ensure_auditable` (the writer's canonical encoding
  of the entry, done before answering) vs the decision itself (a memoised
  :class:`provguard.decide.DecisionPoint` hit, the service's hot path), plain and with an
  ``audit_context``;
* HTTP: a whole ``POST /v1/decisions`` through the app's TestClient (audit on, ack queued), for
  scale.

Usage::

    .venv/bin/python bench/bench_service_limits.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from provguard.decide import DecisionPoint  # noqa: E402
from provguard.decide import Request as PdpRequest  # noqa: E402
from provguard.policy import load_policy_dir  # noqa: E402
from provguard.service.limits import ensure_auditable, strict_loads  # noqa: E402

BODY = {
    "action": "use",
    "category": "user.avatar",
    "origins": ["wechat"],
    "purpose": "social.friend_recommendation",
    "audit_context": {"req": "r-000123", "subject_id": 4711},
}


def _per_call(fn: Callable[[], object], n: int) -> float:
    """Seconds per call of ``fn`` over ``n`` calls."""
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()

    single = json.dumps(BODY).encode()
    escaped = json.dumps({**BODY, "audit_context": {"req": "小爱 Alice"}}).encode()  # \\u escapes
    batch = json.dumps({"requests": [BODY] * 1000}).encode()

    policy = load_policy_dir(ROOT / "policies")
    pdp = DecisionPoint(policy)
    req = PdpRequest(
        app="douyin",
        action="use",
        category="user.avatar",
        origins=frozenset({"wechat"}),
        at=datetime.now(UTC),
        purpose="social.friend_recommendation",
    )
    decision = pdp.decide(req)
    ctx_plain = {"client_app": "douyin", "key": "douyin-prod"}
    ctx_more = {**BODY["audit_context"], **ctx_plain}  # type: ignore[dict-item]

    pairs: list[tuple[str, Callable[[], object], Callable[[], object], int]] = [
        (f"parse: decision body ({len(single)} B)", lambda: json.loads(single), lambda: strict_loads(single), 20_000),
        ("parse: body with \\u escapes", lambda: json.loads(escaped), lambda: strict_loads(escaped), 20_000),
        (f"parse: batch of 1,000 ({len(batch) // 1024} KiB)", lambda: json.loads(batch), lambda: strict_loads(batch), 20),
        ("decide (memo hit) vs pre-check, no context", lambda: pdp.decide(req),
         lambda: ensure_auditable(decision, stage="service", context=ctx_plain), 20_000),
        ("decide (memo hit) vs pre-check, audit_context", lambda: pdp.decide(req),
         lambda: ensure_auditable(decision, stage="service", context=ctx_more), 20_000),
    ]  # fmt: skip
    results: dict[str, tuple[list[float], list[float]]] = {p[0]: ([], []) for p in pairs}
    for _ in range(args.rounds):
        for name, a, b, n in pairs:
            results[name][0].append(_per_call(a, n))
            results[name][1].append(_per_call(b, n))

    http = _http(args.rounds)
    load = os.getloadavg()
    print(f"rounds {args.rounds}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'what':50} {'A: anchor µs':>13} {'B: limits µs':>13} {'B/A':>6} {'B-A µs':>8}")
    for name, (a_s, b_s) in results.items():
        anchor, ours = statistics.median(a_s) * 1e6, statistics.median(b_s) * 1e6
        print(f"{name:50} {anchor:13.2f} {ours:13.2f} {ours / anchor:6.2f} {ours - anchor:8.2f}")
    print(f"{'POST /v1/decisions, whole request (TestClient)':50} {'':13} {http:13.1f}")


def _http(rounds: int) -> float:
    """Median µs of one ``POST /v1/decisions`` through the app (in process)."""
    from fastapi.testclient import TestClient

    sys.path.insert(0, str(ROOT / "tests" / "service"))
    from tests.service.conftest import api_keys, build_small_store

    from provguard.service import ServiceSettings, create_app

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "out"
        build_small_store(store, ROOT / "policies")
        settings = ServiceSettings(store=store, policy=ROOT / "policies", api_keys=api_keys())
        times = []
        with TestClient(create_app(settings)) as c:
            headers = {"X-API-Key": "key-douyin", "content-type": "application/json"}
            for _ in range(rounds):
                t0 = time.perf_counter()
                for _ in range(200):
                    c.post("/v1/decisions", content=json.dumps(BODY).encode(), headers=headers)
                times.append((time.perf_counter() - t0) / 200)
        return statistics.median(times) * 1e6


if __name__ == "__main__":
    main()

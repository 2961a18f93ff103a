"""Added latency of the service's store cross-check on its campaign and grant endpoints.

    .venv/bin/python bench/bench_service_withheld.py [--store out/demo] [--rounds 7] [--n 200]

Copies the output folder ``STORE`` (control.db, grants.db, audit.pub, ...) to a temporary
folder, serves it in-process (FastAPI ``TestClient``, audit off; no socket), and times,
INTERLEAVED in one process (A, B, C, A, B, C, ...), ``--rounds`` rounds of ``--n`` requests of
``GET /v1/campaigns/{id}`` (auditor key) and ``GET /v1/grants?relation=received&limit=100``
(Duoshan's key):

- ``unchecked``: the endpoint without the cross-check (the anchor: the code before fresh user
  12's M1 / M3, the guard replaced by one that checks nothing);
- ``checked, cached``: with :class:`~provguard.service.withheld.ChainGuard`, store unchanged
  (a few ``stat`` calls and one head ``SELECT`` per request);
- ``checked, store moved``: the cache key forced stale before every request (what follows any
  commit to control.db or grants.db: the tally reads the new entries, the tables are read and
  compared again); ``--n // 10`` requests per round.

Prints medians (ms per request), the ratio to ``unchecked``, the first (cold) check of the
whole log, and the load average.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from fastapi.testclient import TestClient

from provguard.service import ApiKeys, Client, ServiceSettings, create_app
from provguard.service.app import ServiceState
from provguard.service.withheld import ChainGuard

CAMPAIGN = "duoshan-no-platform-profile@2019-06-30"


class _NoCheck(ChainGuard):
    """The anchor: a guard that checks nothing (the endpoints as they were)."""

    def require(self, tables: Sequence[str], what: str, *, detail: bool = True) -> None:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=Path("out/demo"))
    ap.add_argument("--policy", type=Path, default=Path("policies"))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    n: int = int(args.n)
    tmp = Path(tempfile.mkdtemp(prefix="bench_withheld_"))
    try:
        folder = tmp / "out"
        shutil.copytree(args.store, folder)
        keys = ApiKeys()
        keys.add("k-auditor", Client("court", "", "auditor"))
        keys.add("k-duoshan", Client("ds", "duoshan", "app"))
        settings = ServiceSettings(
            store=folder, policy=args.policy, api_keys=keys, audit_mode="off"
        )
        with TestClient(create_app(settings)) as c:
            state: ServiceState = c.app.state.provguard  # type: ignore[attr-defined]
            requests: dict[str, tuple[str, dict[str, str]]] = {
                "campaign status": (f"/v1/campaigns/{CAMPAIGN}", {"X-API-Key": "k-auditor"}),
                "received grants": (
                    "/v1/grants?relation=received&limit=100",
                    {"X-API-Key": "k-duoshan"},
                ),
            }
            t0 = time.perf_counter()
            guard = state.chain_guard()
            guard.result()
            cold = time.perf_counter() - t0
            anchor = _NoCheck(state.reader, state.reader_lock)

            def run(
                path: str, headers: dict[str, str], count: int, before: Callable[[], None]
            ) -> float:
                t = 0.0
                for _ in range(count):
                    before()
                    s = time.perf_counter()
                    r = c.get(path, headers=headers)
                    t += time.perf_counter() - s
                    assert r.status_code == 200, r.text
                return t / count * 1e3

            def stale() -> None:
                guard._key = None  # what any commit to the stores does to the key

            variants: dict[str, tuple[ChainGuard, int, Callable[[], None]]] = {
                "unchecked": (anchor, n, lambda: None),
                "checked, cached": (guard, n, lambda: None),
                "checked, store moved": (guard, max(1, n // 10), stale),
            }
            times: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.rounds):
                for name, (path, headers) in requests.items():
                    for variant, (g, count, before) in variants.items():
                        state._guard = g
                        times.setdefault((name, variant), []).append(
                            run(path, headers, count, before)
                        )
            state._guard = guard
            hits: list[float] = []
            for _ in range(args.rounds):  # the guard alone, cache hit (no HTTP)
                s0 = time.perf_counter()
                for _ in range(n):
                    guard.require(("campaigns",), "campaign status")
                hits.append((time.perf_counter() - s0) / n * 1e6)
        entries = state.reader.tally.last_seq
        print(
            f"store {args.store} ({entries:,} audit entries); {args.rounds} rounds, "
            f"interleaved; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
        )
        print(f"first (cold) check of the whole log: {cold * 1e3:.0f} ms (once per process)")
        print(f"guard alone, cache hit (stat x2 + head SELECT): {statistics.median(hits):.0f} µs")
        print(
            f"{'endpoint':<18} {'variant':<22} {'ms/request':>11} {'vs unchecked':>13} {'added ms':>9}"
        )
        for name in requests:
            base = statistics.median(times[(name, "unchecked")])
            for variant in variants:
                m = statistics.median(times[(name, variant)])
                print(f"{name:<18} {variant:<22} {m:>11.3f} {m / base:>12.2f}x {m - base:>9.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Cost per request of the service applying the control store's instrument events (F8).

    .venv/bin/python bench/bench_service_events.py [--store out/demo] [--rounds 9] [--n 20000]

Copies ``STORE/control.db`` (and ``audit.pub``) to a temporary folder, records a final judgment
there with the store's own ``record_event`` (so the events are verified against the chain), and
opens the service state (audit off). Then, INTERLEAVED in one process (A, B, C, A, B, C, ...),
``--rounds`` rounds of ``--n`` memoised decisions each:

- ``plain``: ``ServiceState.decide`` without the events watch (the anchor: a memo hit);
- ``watched``: with the watch, store unchanged (one ``PRAGMA data_version`` per call);
- ``watched, store moved``: the watch forced to see a commit before every call (what follows
  every audit-writer commit: the ``instrument_events`` rows are read and compared; the events
  are NOT re-verified since the rows did not change).

and, once per round, the cost of a real change: ``StoreEvents.refresh`` after the event row
changed (the store's verified ``events()`` read and a new PolicySet + DecisionPoint).
Prints medians (µs per decision), the ratio to ``plain`` and the load average.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

from provguard.adapters.control_sqlite import SqlControlStore
from provguard.decide import Request
from provguard.service import ApiKeys, ServiceSettings
from provguard.service.app import open_state

INJ = "cn-tj-binhai-2019-douyin-duoshan"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=Path("out/demo"))
    ap.add_argument("--policy", type=Path, default=Path("policies"))
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--n", type=int, default=20_000)
    args = ap.parse_args()
    n: int = int(args.n)

    tmp = Path(tempfile.mkdtemp(prefix="bench_events_"))
    try:
        shutil.copy2(args.store / "control.db", tmp / "control.db")
        if (args.store / "audit.pub").is_file():
            shutil.copy2(args.store / "audit.pub", tmp / "audit.pub")
        control = SqlControlStore(tmp / "control.db")
        control.record_event(INJ, "final_judgment", date(2019, 5, 1))
        control.engine.dispose()
        state = open_state(
            ServiceSettings(store=tmp, policy=args.policy, api_keys=ApiKeys(), audit_mode="off")
        )
        ev = state.events
        assert ev is not None
        req = Request(
            "douyin",
            "use",
            "user.avatar",
            frozenset({"wechat"}),
            datetime(2019, 6, 30, tzinfo=UTC),
            purpose="social.friend_recommendation",
        )
        assert state.decide(req).effect == "not_applicable"  # the event is applied

        def plain() -> float:
            state.events = None
            t0 = time.perf_counter()
            for _ in range(n):
                state.decide(req)
            dt = time.perf_counter() - t0
            state.events = ev
            return dt / n * 1e6

        def watched() -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                state.decide(req)
            return (time.perf_counter() - t0) / n * 1e6

        def moved() -> float:
            total = 0.0
            for _ in range(n):
                ev._version = None  # as if another connection had committed
                t0 = time.perf_counter()
                state.decide(req)
                total += time.perf_counter() - t0
            return total / n * 1e6

        def changed() -> float:
            # a new event day: the rows differ, so the store's verified events() is read
            day = date(2019, 5, 1 + len(times["reload ms"]) % 20 + 1)
            control.record_event(INJ, "final_judgment", day)
            control.engine.dispose()
            t0 = time.perf_counter()
            state.decide(req)
            dt = time.perf_counter() - t0
            return dt * 1e3

        times: dict[str, list[float]] = {
            "plain": [],
            "watched": [],
            "watched, store moved": [],
            "reload ms": [],
        }
        for _ in range(args.rounds):
            times["plain"].append(plain())
            times["watched"].append(watched())
            times["watched, store moved"].append(moved())
            times["reload ms"].append(changed())
        state.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    base = statistics.median(times["plain"])
    print(
        f"store: {args.store} (control.db {os.path.getsize(args.store / 'control.db') >> 20} MiB)"
    )
    print(
        f"rounds {args.rounds} x {args.n} decisions, interleaved; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print()
    print("| variant | median µs / decision | min | ratio to plain |")
    print("|---|---|---|---|")
    for name in ("plain", "watched", "watched, store moved"):
        med = statistics.median(times[name])
        print(f"| {name} | {med:.2f} | {min(times[name]):.2f} | {med / base:.2f} |")
    reload = times["reload ms"]
    print()
    print(
        f"reload after the event row changed (one decision, store verified, new PDP): median "
        f"{statistics.median(reload):.1f} ms, min {min(reload):.1f} ms"
    )


if __name__ == "__main__":
    main()

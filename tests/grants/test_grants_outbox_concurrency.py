"""Concurrent outbox flushers (threads, each with its own store connection, as ``serve
--workers N`` processes have) append every grant event exactly once; a fresh claim is never
stolen, an expired one is recovered."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from provguard.adapters.grant_store import SqlGrantStore
from provguard.grants import GrantRecord, LabelledValue, TokenCipher, flush_outbox, generate_key
from provguard.grants.model import IssuedToken

T0 = datetime(2019, 7, 1, tzinfo=UTC)


class SlowAudit:
    """A thread-safe audit sink whose append takes a while, so flushers overlap."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, object]]] = []
        self.lock = threading.Lock()

    def append(self, kind: str, payload: Mapping[str, object]) -> object:
        time.sleep(0.002)
        with self.lock:
            self.items.append((kind, dict(payload)))
        return None

    def count(self) -> int:
        with self.lock:
            return len(self.items)


def _seed(store: SqlGrantStore, n: int) -> None:
    for k in range(n):
        gid = f"g{k}"
        g = GrantRecord(gid, "wechat", "douyin", f"o-{gid}", f"u-{gid}", "s", T0)
        v = LabelledValue(
            f"{gid}-v", "user.name.nickname", "nickname", "n", 4, frozenset({gid}), T0
        )
        store.record_login(
            g, [IssuedToken("access", f"tok-{gid}", T0 + timedelta(hours=2))], [v], T0
        )


def test_concurrent_flushers_append_each_event_once(store_url: str) -> None:
    key = generate_key()
    _seed(SqlGrantStore(store_url, TokenCipher(key)), 12)
    pending = SqlGrantStore(store_url, TokenCipher(key)).outbox()
    assert len(pending) >= 12
    audit = SlowAudit()
    barrier = threading.Barrier(4)
    sent: list[int] = []

    def worker() -> None:
        store = SqlGrantStore(store_url, TokenCipher(key))
        barrier.wait()
        sent.append(flush_outbox(store, audit))
        store.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    ids = Counter(str(p["event_id"]) for _, p in audit.items)
    assert sorted(ids) == sorted(str(r["event_id"]) for r in pending)
    assert set(ids.values()) == {1}
    assert sum(sent) == len(pending)
    assert SqlGrantStore(store_url, TokenCipher(key)).outbox() == []


def test_fresh_claim_is_not_stolen_and_expired_one_is_recovered(store_url: str) -> None:
    store = SqlGrantStore(store_url, TokenCipher(generate_key()))
    _seed(store, 1)
    row = store.outbox()[0]
    now = datetime.now(UTC)
    assert store.claim_outbox(row, 0, now)  # flusher A claims, then stalls before appending
    assert not store.claim_outbox(row, 0, now)  # a stale read of the same row loses the CAS
    audit = SlowAudit()
    # flusher B: the claim is fresh, so B leaves the row alone
    assert flush_outbox(store, audit, lease_seconds=60) == 0 and audit.items == []
    # A never came back: once the lease is over, B recovers and appends it once
    assert flush_outbox(store, audit, lease_seconds=0) == 1
    assert [p["event_id"] for _, p in audit.items] == [row["event_id"]]
    assert flush_outbox(store, audit, lease_seconds=0) == 0

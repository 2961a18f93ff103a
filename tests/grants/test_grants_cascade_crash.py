"""Kill the revocation cascade midway (SIGKILL from inside a batch hook); a rerun completes it
with nothing lost and nothing done twice."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.adapters.grant_store import SqlGrantStore
from provguard.clock import FixedClock
from provguard.grants import (
    GrantRecord,
    LabelledValue,
    RevocationCascade,
    TokenCipher,
    flush_outbox,
    generate_key,
)
from provguard.grants.model import IssuedToken

T0 = datetime(2019, 7, 1, tzinfo=UTC)

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from datetime import datetime, UTC
    from provguard.adapters.grant_store import SqlGrantStore
    from provguard.clock import FixedClock
    from provguard.grants import RevocationCascade, TokenCipher
    url, key, job, kill_after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    seen = []
    def on_batch(step, n):
        seen.append(step)
        if step == "derived" and seen.count("derived") == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    store = SqlGrantStore(url, TokenCipher(key))
    RevocationCascade(store, clock=FixedClock(datetime(2019, 7, 2, tzinfo=UTC)), batch_size=4,
                      on_batch=on_batch).purge(job)
    """
)


def _seed(store: SqlGrantStore, grant_id: str, n_values: int, n_derived: int) -> None:
    g = GrantRecord(grant_id, "wechat", "douyin", f"o-{grant_id}", f"u-{grant_id}", "s", T0)
    values = [
        LabelledValue(
            f"{grant_id}-v{i}",
            "user.name.nickname",
            "nickname",
            f"n{i}",
            4,
            frozenset({grant_id}),
            T0,
        )
        for i in range(n_values)
    ]
    tokens = [
        IssuedToken("access", f"tok-{grant_id}-{i}", T0 + timedelta(hours=2)) for i in range(3)
    ]
    store.record_login(g, tokens, values, T0)
    prev = values[0].value_id
    for i in range(n_derived):  # a chain: each derived value from the previous one
        prev, _, _ = store.add_derived("feature", str(i), [prev, values[i % n_values].value_id], T0)


def test_kill_midway_then_rerun(tmp_path: Path, repo_root: Path) -> None:
    key = generate_key()
    db = tmp_path / "grants.db"
    store = SqlGrantStore(db, TokenCipher(key))
    _seed(store, "g1", 10, 18)
    _seed(store, "g2", 5, 3)  # another user's grant: must survive
    clock = FixedClock(T0)
    cascade = RevocationCascade(store, clock=clock, batch_size=4)
    job = cascade.revoke("g1", reason="authorization_revoked", source="test")
    before = store.job(job)
    assert (before["expected_tokens"], before["expected_values"], before["expected_derived"]) == (
        3,
        10,
        18,
    )

    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(db), key, job, "2"],
        cwd=repo_root,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == -9, proc.stderr.decode()  # killed by SIGKILL
    mid = store.job(job)
    assert mid["state"] == "quarantined"
    assert mid["steps"] == ["quarantine", "tokens"]
    assert mid["purged_tokens"] == 3 and mid["purged_derived"] == 8  # two batches of 4 committed
    assert store.remaining("g1")["derived"] == 10

    # rerun: completes; counts equal what quarantine fixed (nothing lost, nothing twice)
    done = RevocationCascade(store, clock=clock, batch_size=4).purge(job)
    assert done["state"] == "purged"
    assert done["steps"] == ["quarantine", "tokens", "derived", "values", "grant"]
    assert (done["purged_tokens"], done["purged_values"], done["purged_derived"]) == (3, 10, 18)
    assert set(store.remaining("g1").values()) == {0}
    assert len(store.values("g2")) == 5 and len(store.derived()) == 3
    # a third run is a no-op
    assert RevocationCascade(store, clock=clock).purge(job) == done

    # the audit log gets each event exactly once, even if the flush itself is interrupted
    audit = SqliteAuditLog(tmp_path / "audit.db", clock=clock)
    pending = store.outbox()
    store.mark_outbox(pending[0]["event_id"], "sending", 0)
    audit.append(pending[0]["kind"], {**pending[0]["payload"], "event_id": pending[0]["event_id"]})
    flush_outbox(store, audit)  # the "crash" happened after the append, before "sent"
    flush_outbox(store, audit)
    kinds = [e.kind for e in audit.entries()]
    assert len(kinds) == len(pending)
    for kind in (
        "grant.quarantined",
        "grant.purged_tokens",
        "grant.purged_derived",
        "grant.purged_values",
        "grant.purged",
    ):
        assert kinds.count(kind) == 1
    assert audit.verify().ok

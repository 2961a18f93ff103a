"""What the session-7 registry evidence checks (findings F3 / G11) add to ``audit verify``.

Usage::

    .venv/bin/python bench/bench_registry_evidence.py OUT_DIR [--rounds 7]

``OUT_DIR`` is a ``provguard run`` output folder (``control.db``, ``audit.pub``,
``checkpoint.json``, ``grants.db``); it is only read. Arms, interleaved per round in rotating
order (medians over rounds, milliseconds):

* ``chain (anchor)`` -- ``assess()``: the chain re-hashed against every stored and exported
  checkpoint with signatures checked (what ``audit verify`` does first);
* ``registry, session 6`` -- the registry cross-check as it was: ``oauth_grants`` and
  ``revocation_jobs`` read, the chain read as session 6's ``read_chain_records`` read it
  (``instrument_event``, ``campaign``, the transfer-audit decisions and ``grant.login`` /
  ``grant.revocation_opened`` / ``grant.purged``), :func:`check_grants` +
  :func:`check_revocations`;
* ``registry, session 7`` -- ``check_registry`` now: those plus ``recipient_first_use``,
  ``separate_consents`` and ``oauth_tokens`` against ``grant.first_use``,
  ``grant.separate_consent`` / ``grant.consent_withdrawn`` and the token events (12 event kinds,
  ``grant.transfer`` included).

Prints one table (each arm's median and its ratio to the anchor), the rows compared and the
load average before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, or_, select

from provguard.adapters.audit_sqlite import SqliteAuditLog, _row_to_entry, audit_log_table
from provguard.adapters.control_sqlite import check_registry, read_registry_tables
from provguard.audit.coverage import assess
from provguard.audit.crosscheck import (
    GRANT_LOGIN_KIND,
    PURGED_KIND,
    REVOCATION_KIND,
    ChainRecords,
    CrossCheckResult,
    RegistryTables,
    VerifiedRange,
    check_grants,
    check_revocations,
)
from provguard.audit.signing import SignedCheckpoint, load_public_key

SESSION6_KINDS = (GRANT_LOGIN_KIND, REVOCATION_KIND, PURGED_KIND)


def session6(grant_db: Path, log: Path, verified: VerifiedRange) -> CrossCheckResult:
    """The session-6 registry cross-check, reproduced: two tables, three event kinds."""
    engine = create_engine(f"sqlite:///{grant_db}")
    with engine.connect() as conn:
        full = read_registry_tables(conn)
    engine.dispose()
    tables = RegistryTables(grants=full.grants, revocations=full.revocations)
    records = ChainRecords()
    engine = create_engine(f"sqlite:///{log}")
    with engine.connect() as conn:
        t = audit_log_table
        query = (
            select(t)
            .where(
                or_(
                    t.c.kind.in_(("instrument_event", "campaign", *SESSION6_KINDS)),
                    (t.c.kind == "decision") & t.c.payload.contains('"stage":"transfer_audit"'),
                )
            )
            .order_by(t.c.seq)
        )
        for row in conn.execute(query):
            records.add(_row_to_entry(row))
    engine.dispose()
    return CrossCheckResult(
        (
            check_grants(tables.grants, records, verified),
            check_revocations(tables.revocations, records, verified),
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    root: Path = args.out
    db = root / "control.db"
    grants = root / "grants.db"
    load_before = os.getloadavg()
    key = load_public_key(root / "audit.pub")
    exported = SignedCheckpoint.from_json((root / "checkpoint.json").read_text())
    log = SqliteAuditLog(db, create=False)
    n = log.count()
    covered = assess(log, public_key=key, exported=exported).covered
    verified = VerifiedRange(1, n, min(covered, n))

    def chain() -> object:
        return assess(log, public_key=key, exported=exported)

    def before() -> object:
        return session6(grants, db, verified)

    def after() -> object:
        return check_registry(grants, db, verified=verified)

    old, new = session6(grants, db, verified), check_registry(grants, db, verified=verified)
    assert old.ok and new.ok, (old.message(), new.message())
    arms: list[tuple[str, Callable[[], object]]] = [
        ("chain (anchor)", chain),
        ("registry, session 6 (2 tables)", before),
        ("registry, session 7 (5 tables)", after),
    ]
    times: dict[str, list[float]] = {name: [] for name, _ in arms}
    for r in range(args.rounds):
        for name, fn in arms[r % len(arms) :] + arms[: r % len(arms)]:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    log.close()
    base = statistics.median(times["chain (anchor)"])
    rows = ", ".join(f"{t.table} {t.rows}" for t in new.tables)
    print(f"registry evidence checks on {root} ({n:,} entries; rows: {rows})")
    print(f"{args.rounds} rounds, interleaved in rotating order")
    print("| arm | median ms | ratio to chain |")
    print("|---|---|---|")
    for name, _ in arms:
        m = statistics.median(times[name])
        print(f"| {name} | {m * 1000:.0f} | {m / base:.3f} |")
    added = statistics.median(times["registry, session 7 (5 tables)"]) - statistics.median(
        times["registry, session 6 (2 tables)"]
    )
    print(f"| added by session 7 | {added * 1000:.0f} | {added / base:.3f} |")
    after_load = os.getloadavg()
    print(
        "load average: before "
        + " ".join(f"{x:.2f}" for x in load_before)
        + ", after "
        + " ".join(f"{x:.2f}" for x in after_load)
    )


if __name__ == "__main__":
    main()

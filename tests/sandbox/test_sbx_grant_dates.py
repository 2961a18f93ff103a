"""The sandbox's grant dates are possible (job/grants.py signs each user in at the grant's own
``granted_at`` and records duoshan's first use at the transfer's ``first_used_at``; the transfer
gate refuses a first use before the grant or after the decision time, PG140): every transfer's
grant exists, belongs to the same subject and provider, and
``max(granted_at, duoshan launch) <= first_used_at <= snapshot``; checked with DuckDB SQL (an
independent join) on the real ego-Facebook platform and on small platforms for several seeds
and snapshots (hypothesis)."""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provguard.adapters.graph_files import EdgeList
from provguard.sandbox import Platform, build_platform
from provguard.sandbox.schema import DUOSHAN_LAUNCH, SNAPSHOT


def impossible_transfers(platform: Platform, snapshot: datetime) -> tuple[int, int]:
    """(transfers, transfers whose dates or links are impossible), by SQL over the tables."""
    con = duckdb.connect()
    con.register("transfers", platform.transfers)
    con.register("grants", platform.grants)
    row = con.execute(
        """
        SELECT count(*),
               count(*) FILTER (WHERE g.grant_id IS NULL
                   OR g.subject_id <> t.subject_id OR g.provider <> t.provider
                   OR g.app_id <> t.from_app
                   OR t.first_used_at < g.granted_at
                   OR t.first_used_at < $launch
                   OR t.first_used_at > $snap
                   OR g.granted_at > $snap)
        FROM transfers t LEFT JOIN grants g ON g.grant_id = t.grant_id
        """,
        {"launch": DUOSHAN_LAUNCH, "snap": snapshot},
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_demo_platform_grant_dates_are_possible(platform: Platform) -> None:
    n, bad = impossible_transfers(platform, SNAPSHOT)
    assert (n, bad) == (971, 0)  # the demo's 971 douyin -> duoshan transfers
    # the bound is tight: some first uses fall within a day of their grant
    granted = dict(
        zip(
            platform.grants["grant_id"].to_pylist(),
            platform.grants["granted_at"].to_pylist(),
            strict=True,
        )
    )
    gaps = [
        used - granted[gid]
        for gid, used in zip(
            platform.transfers["grant_id"].to_pylist(),
            platform.transfers["first_used_at"].to_pylist(),
            strict=True,
        )
    ]
    assert min(gaps) >= timedelta(0) and min(gaps) < timedelta(days=1)


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**16),
    days_after_launch=st.integers(0, 900),
)
def test_grant_dates_possible_for_any_seed_and_snapshot(
    small_graph: EdgeList, seed: int, days_after_launch: int
) -> None:
    snapshot = DUOSHAN_LAUNCH + timedelta(days=days_after_launch, hours=3)
    p = build_platform(small_graph, seed=seed, snapshot=snapshot)
    n, bad = impossible_transfers(p, snapshot)
    assert bad == 0
    assert n == p.transfers.num_rows

"""The job's transfer audit sends each grant's own recorded facts (when it was given, its
status): a transfer of a revoked grant is never grandfathered, whatever its first use, and the
audit agrees with the reference interpreter given the same facts (fresh-user finding F2: 17
revoked grants were counted as grandfathered on the demo)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from provguard.adapters.graph_files import read_edge_list
from provguard.decide import DecisionPoint, Request
from provguard.decide.reference import decide
from provguard.job.decisions import DecisionRecorder
from provguard.job.transfers import audit_transfers
from provguard.policy import load_policy_dir
from provguard.sandbox import Platform, build_platform
from provguard.sandbox.schema import ORDER_DATE

from .conftest import ROOT

AS_OF = datetime(2019, 6, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def platform() -> Platform:
    return build_platform(
        read_edge_list(ROOT / "data" / "graphs" / "snap-ego-facebook.txt"), seed=7
    )


def test_revoked_grants_are_never_grandfathered(platform: Platform) -> None:
    policy = load_policy_dir(ROOT / "policies")
    audited = audit_transfers(
        platform.transfers, DecisionPoint(policy), AS_OF, DecisionRecorder(), platform.grants
    ).to_pylist()
    grants = {g["grant_id"]: g for g in platform.grants.to_pylist()}
    revoked_before = [
        r for r in audited
        if grants[r["grant_id"]]["status"] == "revoked" and r["first_used_at"] < ORDER_DATE
    ]  # fmt: skip
    # the demo's world has such transfers, and none of them is a permit
    assert len(revoked_before) == 17
    assert all((r["decision"], r["excepted"]) == ("deny", False) for r in revoked_before)
    permits = [r for r in audited if r["decision"] == "permit"]
    assert permits and all(grants[r["grant_id"]]["status"] == "active" for r in permits)
    assert all(r["first_used_at"] < ORDER_DATE and r["excepted"] for r in permits)
    counts = (sum(r["decision"] == "deny" for r in audited), len(permits))
    assert counts == (660, 311)
    # without the facts the old split comes back: the 17 are exactly the difference
    blind = audit_transfers(platform.transfers, DecisionPoint(policy), AS_OF, DecisionRecorder())
    assert blind.column("decision").to_pylist().count("permit") == 311 + 17
    # differential: the reference interpreter, same facts, same answer on every row
    by_id = {t["transfer_id"]: t for t in platform.transfers.to_pylist()}
    for r in audited[::7]:
        t, g = by_id[r["transfer_id"]], grants[r["grant_id"]]
        ref = decide(
            policy,
            Request(
                app=t["from_app"],
                action="transfer",
                category="grant.login",
                origins=frozenset({t["provider"]}),
                at=AS_OF,
                recipient=t["to_app"],
                grant_first_used_by_recipient_at=t["first_used_at"],
                grant_granted_at=g["granted_at"],
                grant_status=g["status"],
            ),
        )
        assert (ref.effect, ref.excepted) == (r["decision"], r["excepted"])

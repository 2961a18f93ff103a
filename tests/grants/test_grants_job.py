"""The main job's grants stage (provguard.job.grants) on a sandbox platform built on a slice of
the real SNAP ego-Facebook graph: sign-ins over HTTP, duoshan's token exchanges decided as the
job's transfer audit decides them (differential), revocation at the platform, purge, proof."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.adapters.graph_files import read_edge_list
from provguard.clock import FixedClock
from provguard.decide import DecisionPoint
from provguard.job.decisions import DecisionRecorder
from provguard.job.grants import run_grants_stage
from provguard.job.transfers import audit_transfers
from provguard.policy import load_policy_dir
from provguard.sandbox import Platform, build_platform
from provguard.sandbox.schema import ORDER_DATE

from .conftest import ROOT

AS_OF = datetime(2019, 6, 30, tzinfo=UTC)
INJUNCTION = ("no-login-grant-transfer", "cn-tj-binhai-2019-douyin-duoshan")


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    lines = (ROOT / "data" / "graphs" / "snap-ego-facebook.txt").read_text().splitlines()
    path = tmp_path_factory.mktemp("graph") / "ego-facebook-slice.txt"
    path.write_text("\n".join(lines[:400]) + "\n")
    yield build_platform(read_edge_list(path), seed=7)


def test_grants_stage(platform: Platform, store_url: str, tmp_path: Path) -> None:
    pdp = DecisionPoint(load_policy_dir(ROOT / "policies"))
    result = run_grants_stage(platform, pdp, AS_OF, store_url, sample=8, revoke=2)

    # the sample: half grandfathered (duoshan first used the login before the order), half not
    first_used = {
        (r["subject_id"], r["provider"]): r["first_used_at"]
        for r in platform.transfers.to_pylist()
        if (r["from_app"], r["to_app"]) == ("douyin", "duoshan")
    }
    assert result.signed_in == 8 and len(result.exchanges) == 8
    before = [e for e in result.exchanges if first_used[(e[0], e[1])] < ORDER_DATE]
    assert len(before) == 4
    assert (result.exchanges_denied, result.exchanges_permitted) == (4, 4)
    assert result.exchanges_grandfathered == 4
    assert result.denied_by == (INJUNCTION,)
    for subject, provider, effect, excepted in result.exchanges:
        grandfathered = first_used[(subject, provider)] < ORDER_DATE
        assert (effect, excepted) == (("permit", True) if grandfathered else ("deny", False))

    # differential: the job's own transfer audit decides the same rows the same way
    audited = audit_transfers(
        platform.transfers, pdp, AS_OF, DecisionRecorder(), platform.grants
    ).to_pylist()
    by_key = {(r["subject_id"], r["provider"], r["from_app"], r["to_app"]): r for r in audited}
    for subject, provider, effect, excepted in result.exchanges:
        row = by_key[(subject, provider, "douyin", "duoshan")]
        assert (row["decision"], row["excepted"]) == (effect, excepted)

    # revocation at the platform reached the service; the cascade purged everything
    assert result.revoked == 2
    assert result.values_quarantined == result.values_purged > 0
    assert result.derived_quarantined == result.derived_purged == 2
    assert result.tokens_purged > 0
    assert result.nothing_remains and set(result.remaining.values()) == {0}
    assert set(result.remaining) >= {"tokens", "values", "derived", "label_links", "subject_ids"}

    # the audit entries: one transfer event per exchange, the cascade's steps, no secrets; they
    # append to the run's hash-chained log and verify
    kinds = [k for k, _ in result.audit_entries]
    assert kinds.count("grant.transfer") == 8 and kinds.count("grant.login") == 8
    assert kinds.count("grant.purged") == 2 and kinds.count("grant.quarantined") == 2
    text = json.dumps([p for _, p in result.audit_entries], default=str)
    assert "secret" not in text and "session_token" not in text
    log = SqliteAuditLog(tmp_path / "audit.db", clock=FixedClock(AS_OF))
    try:
        log.append_many(result.audit_entries)
        assert log.verify().ok
    finally:
        log.close()
    assert result.as_dict()["audit_entries"] == len(result.audit_entries)
    assert result.seconds < 30


def test_grants_stage_registry_dates_are_the_sandbox_grants(
    platform: Platform, store_url: str
) -> None:
    """Each subject is signed in at its sandbox grant's own ``granted_at`` and duoshan's first
    use is the transfer's ``first_used_at``: the registry's dates are the demo data's, and none
    is impossible (first use before the grant, or after the run)."""
    from provguard.adapters.grant_store import SqlGrantStore
    from provguard.grants import TokenCipher, generate_key

    pdp = DecisionPoint(load_policy_dir(ROOT / "policies"))
    result = run_grants_stage(platform, pdp, AS_OF, store_url, sample=8, revoke=0)
    granted = dict(
        zip(
            platform.grants["grant_id"].to_pylist(),
            platform.grants["granted_at"].to_pylist(),
            strict=True,
        )
    )
    sandbox = {
        (r["subject_id"], r["provider"]): (granted[r["grant_id"]], r["first_used_at"])
        for r in platform.transfers.to_pylist()
        if (r["from_app"], r["to_app"]) == ("douyin", "duoshan")
    }
    store = SqlGrantStore(store_url, TokenCipher(generate_key()))
    try:
        grants = store.grants()
        assert len(grants) == result.signed_in == 8
        seen = set()
        for g in grants:
            attempts = store.transfer_attempts(g.grant_id)
            assert len(attempts) == 1 and attempts[0].at == AS_OF  # decided at the run's time
            first = store.first_use(g.grant_id, "duoshan")
            assert first is not None and g.granted_at <= first <= AS_OF
            matches = [k for k, (ga, fu) in sandbox.items() if (ga, fu) == (g.granted_at, first)]
            assert len(matches) == 1, (g.granted_at, first)
            seen.add(matches[0])
            assert all(v.received_at == g.granted_at for v in store.values(g.grant_id))
        assert seen == {(e[0], e[1]) for e in result.exchanges}
        # at least one grant is months older than the run: its app session outlived the
        # provider's 2 h access token, and the exchange still went through the gate
        assert min(g.granted_at for g in grants) < AS_OF - timedelta(days=90)
    finally:
        store.close()

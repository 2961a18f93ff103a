"""The pure parts of fresh user 11's H3 / M2 checks (:func:`check_transfer_attempts`, the
"Now" rule of :func:`check_campaigns`) on hand-built chains: the cases the real folder of
``test_audit_exchanges_campaign_now.py`` does not reach (an earlier run's attempts, a chain
with a later snapshot, a store that did not read its target states)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from provguard.audit.chain import make_entry
from provguard.audit.crosscheck import (
    CampaignRow,
    ChainRecords,
    TransferAttemptRow,
    VerifiedRange,
    check_campaigns,
    check_transfer_attempts,
)

AT = datetime(2019, 6, 30, tzinfo=UTC)
ALL = VerifiedRange(1, 10_000)
INJ = "cn-tj-binhai-2019-douyin-duoshan"
RULE = "no-login-grant-transfer"


def _chain(items: list[tuple[str, dict[str, Any]]]) -> ChainRecords:
    prev = None
    out = []
    for i, (kind, payload) in enumerate(items):
        prev = make_entry(prev, kind, payload, AT + timedelta(seconds=i))
        out.append(prev)
    return ChainRecords.of(out)


def _transfer(attempt: str, effect: str, outcome: str) -> dict[str, Any]:
    """A ``grant.transfer`` payload as :class:`provguard.grants.transfer.TransferGate` writes
    it (``decision`` = ``Decision.as_dict()``)."""
    reason = {"rule": RULE, "instrument": INJ, "effect": effect, "outcome": outcome}
    return {
        "attempt": attempt,
        "kind": "token_exchange",
        "grant": f"g-{attempt}",
        "provider": "qq",
        "from": "douyin",
        "to": "duoshan",
        "decision": {
            "effect": effect,
            "request": {"at": AT.isoformat(), "app": "douyin", "recipient": "duoshan"},
            "reasons": [reason],
            "obligations": [],
        },
    }


def _row(attempt: str, effect: str, excepted: bool) -> TransferAttemptRow:
    return TransferAttemptRow(
        attempt, f"g-{attempt}", "token_exchange", "douyin", "duoshan",
        AT.replace(tzinfo=None), effect, excepted, RULE, INJ,
    )  # fmt: skip


def test_attempts_of_an_earlier_registry_are_not_missing_rows() -> None:
    """``provguard run`` recreates grants.db: the attempts chained before the previous run's
    end belong to an older registry; only the current one's missing rows count."""
    rec = _chain(
        [
            ("grant.transfer", _transfer("old", "deny", "applied")),
            ("campaign", {"campaign_id": "c"}),
            ("grant.transfer", _transfer("a1", "permit", "excepted")),
            ("grant.transfer", _transfer("a2", "deny", "applied")),
            ("campaign", {"campaign_id": "c"}),
        ]
    )
    ok = check_transfer_attempts([_row("a1", "permit", True), _row("a2", "deny", False)], rec, ALL)
    assert ok.ok and (ok.rows, ok.entries, ok.matched) == (2, 3, 2)
    gone = check_transfer_attempts([_row("a1", "permit", True)], rec, ALL)
    assert [str(d) for d in gone.discrepancies] == [
        "transfer_attempts[a2].effect: table has nothing, entry #4 has 'deny'"
    ]
    # a table the registry lacks: the current registry's attempts are all missing
    absent = check_transfer_attempts(None, rec, ALL)
    assert not absent.present and [d.key for d in absent.discrepancies] == ["a1", "a2"]


def test_an_attempt_outside_the_verified_or_signed_chain_vouches_for_nothing() -> None:
    rec = _chain([("grant.transfer", _transfer("a1", "deny", "applied"))])
    row = [_row("a1", "deny", False)]
    assert check_transfer_attempts(row, rec, VerifiedRange(1, 1)).ok
    outside = check_transfer_attempts(row, rec, VerifiedRange(0, 0))
    assert [d.field for d in outside.discrepancies] == ["chain"]
    unsigned = check_transfer_attempts(row, rec, VerifiedRange(1, 1, signed=0))
    assert [d.field for d in unsigned.discrepancies] == ["signature"]


def test_the_deciding_rule_of_a_deny_is_its_first_applied_deny_reason() -> None:
    body = _transfer("a1", "deny", "applied")
    permitting = {
        "rule": "pipl-note",
        "instrument": "pipl",
        "effect": "permit",
        "outcome": "applied",
    }
    body["decision"]["reasons"].insert(0, permitting)
    rec = _chain([("grant.transfer", body)])
    assert check_transfer_attempts([_row("a1", "deny", False)], rec, ALL).ok
    wrong = TransferAttemptRow(
        "a1", "g-a1", "token_exchange", "douyin", "duoshan", AT, "deny", False,
        "pipl-note", "pipl",
    )  # fmt: skip
    res = check_transfer_attempts([wrong], rec, ALL)
    assert [(d.field, d.table_value, d.chain_value) for d in res.discrepancies] == [
        ("rule_id", "pipl-note", RULE),
        ("instrument_id", "pipl", INJ),
    ]


STATES = {"pending": 0, "notified": 5, "changed": 0, "exempt": 2, "ignored": 0, "escalated": 0}
START = {**STATES, "pending": 5, "notified": 0}


def _campaign(now: dict[str, int] | None, *history: dict[str, int]) -> CampaignRow:
    return CampaignRow("c", "r", "i", 7, tuple(history), now)


def test_now_must_equal_the_chained_snapshot_while_none_follows() -> None:
    rec = _chain([("campaign", {"campaign_id": "c", "rule_id": "r", "instrument_id": "i",
                                "targets": 7, "states": STATES})])  # fmt: skip
    same = {"notified": 5, "exempt": 2}  # the targets table has no row for an empty state
    assert check_campaigns([_campaign(same, START, STATES)], rec.campaigns, ALL).ok
    edited = {"changed": 5, "exempt": 2}
    res = check_campaigns([_campaign(edited, START, STATES)], rec.campaigns, ALL)
    assert [str(d) for d in res.discrepancies] == [
        "campaigns[c].campaign_targets: table has 'changed 5, exempt 2', entry #1 has "
        "'exempt 2, notified 5'"
    ]
    # a later rescan snapshot without its chain entry (fresh user 11, M3): the newest
    # snapshot and the Now row are both named
    rescan = {**STATES, "notified": 0, "changed": 5}
    res = check_campaigns([_campaign(edited, START, STATES, rescan)], rec.campaigns, ALL)
    assert [d.field for d in res.discrepancies] == ["history", "campaign_targets"]
    # the same rescan chained (`provguard campaign rescan`): its entry is the newest, and agrees
    chained = _chain([("campaign", {"campaign_id": "c", "rule_id": "r", "instrument_id": "i",
                                    "targets": 7, "states": STATES}),
                      ("campaign.rescan", {"campaign_id": "c", "rule_id": "r",
                                           "instrument_id": "i", "targets": 7,
                                           "states": rescan})])  # fmt: skip
    assert chained.campaigns["c"].kind == "campaign.rescan" and chained.run_ends == [1]
    assert check_campaigns([_campaign(edited, START, STATES, rescan)], chained.campaigns, ALL).ok
    # a rescan that changed nothing leaves the chained snapshot the newest one: compared
    res = check_campaigns([_campaign(edited, START, STATES, STATES)], rec.campaigns, ALL)
    assert [d.field for d in res.discrepancies] == ["campaign_targets"]
    # a reader that did not read the target states (now=None): not compared
    assert check_campaigns([_campaign(None, START, STATES)], rec.campaigns, ALL).ok

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from provguard.adapters.campaign_sqlite import JsonlMailbox, SqlCampaignStore
from provguard.campaign import DeliveryError, TokenBucket, dispatch, select_targets
from provguard.campaign.model import OutboxMessage, Target
from provguard.errors import InputError
from provguard.similarity.scan import scan_profiles

from .conftest import Scanned

RULE = "duoshan-no-platform-profile"
T0 = datetime(2019, 7, 1, tzinfo=UTC)


def _targets(s: Scanned) -> tuple[str, list[Target]]:
    return select_targets(s.scan, s.platform.app_profiles, s.policy, RULE, T0)


def test_selection_matches_rule_and_ground_truth(scanned: Scanned) -> None:
    inst, found = _targets(scanned)
    assert inst == "cn-tj-binhai-2019-douyin-duoshan"
    assert found and {t.app_id for t in found} == {"duoshan"}  # the rule names duoshan only
    prof = {(r["app_id"], r["subject_id"]): r for r in scanned.platform.app_profiles.to_pylist()}
    for t in found:
        p = prof[(t.app_id, t.subject_id)]
        copied = {
            "handle": p["handle_edit"] != "user_input",
            "avatar": p["avatar_edit"] != "user_input",
        }
        # every selected field really is a copy in the sandbox ground truth (precision 1 here)
        assert any(copied[f] for f in t.fields.split(","))
        recorded = all(p[f"{f}_source"] == "provider" for f in t.fields.split(","))
        assert t.origin_kind == ("recorded" if recorded else "inferred")
        if t.exempt_reason:
            assert t.fields == "handle"
    # inferred copies exist (re-typed handles / re-uploaded pictures) and can be left out
    assert any(t.origin_kind == "inferred" for t in found)
    _, recorded_only = select_targets(
        scanned.scan, scanned.platform.app_profiles, scanned.policy, RULE, T0, recorded_only=True
    )
    assert all(t.origin_kind == "recorded" for t in recorded_only)
    assert len(recorded_only) < len(found)


def test_real_name_exemption_with_verified_names(scanned: Scanned) -> None:
    subj = scanned.platform.subjects
    names = dict(
        zip(
            subj.column("subject_id").to_pylist(), subj.column("real_name").to_pylist(), strict=True
        )
    )
    _, found = select_targets(
        scanned.scan, scanned.platform.app_profiles, scanned.policy, RULE, T0, real_names=names
    )
    truth = {
        (r["app_id"], r["subject_id"]): r["handle_is_real_name"]
        for r in scanned.platform.app_profiles.to_pylist()
    }
    exempt = [t for t in found if t.exempt_reason]
    assert exempt and all(t.exempt_reason == "verified_name" for t in exempt)
    handle = {
        (r["app_id"], r["subject_id"]): r["handle"]
        for r in scanned.platform.app_profiles.to_pylist()
    }
    for t in found:
        if t.fields == "handle":
            k = (t.app_id, t.subject_id)
            if (t.exempt_reason is not None) != truth[k]:
                # the sandbox's truth is strict string equality; a full-width (compatibility)
                # form of the name is the name for the exemption
                assert t.exempt_reason and handle[k] != names[t.subject_id]
                assert unicodedata.normalize("NFKC", handle[k]) == names[t.subject_id]


def test_unknown_rule(scanned: Scanned) -> None:
    with pytest.raises(InputError, match="unknown rule"):
        select_targets(scanned.scan, scanned.platform.app_profiles, scanned.policy, "nope", T0)


def test_start_is_idempotent_and_dispatch_notifies(scanned: Scanned, tmp_path: Path) -> None:
    inst, found = _targets(scanned)
    store = SqlCampaignStore(tmp_path / "c.db")
    first = store.start("c1", RULE, inst, found, T0)
    again = store.start("c1", RULE, inst, found, T0 + timedelta(hours=1))
    assert first == {"added": len(found), "already": 0}
    assert again == {"added": 0, "already": len(found)}
    exempt = sum(1 for t in found if t.exempt_reason)
    counts = store.counts("c1")
    assert counts["pending"] == len(found) - exempt and counts["exempt"] == exempt
    assert store.outbox_counts("c1") == {"pending": len(found) - exempt}
    with pytest.raises(InputError, match="enforces rule"):
        store.start("c1", "other-rule", inst, found, T0)

    mailbox = JsonlMailbox(tmp_path / "mail.jsonl")
    r = dispatch(store, "c1", mailbox, now=lambda: T0 + timedelta(hours=2))
    assert (r.sent, r.failed, r.dead) == (len(found) - exempt, 0, 0)
    assert store.counts("c1")["notified"] == len(found) - exempt
    ids = mailbox.message_ids()
    assert len(ids) == len(set(ids)) == len(found) - exempt
    # a second dispatch sends nothing
    assert dispatch(store, "c1", mailbox, now=lambda: T0 + timedelta(hours=3)).sent == 0
    assert len(mailbox.message_ids()) == len(ids)


class _Crash(BaseException):
    """Simulates the process dying (not an Exception: nothing catches it)."""


def test_crash_mid_outbox_loses_nothing_and_duplicates_nothing(
    scanned: Scanned, tmp_path: Path
) -> None:
    inst, found = _targets(scanned)
    store = SqlCampaignStore(tmp_path / "c.db")
    store.start("c1", RULE, inst, found, T0)
    expected = store.outbox_counts("c1")["pending"]
    mailbox = JsonlMailbox(tmp_path / "mail.jsonl")
    deliveries: list[str] = []

    def crashing(msg: OutboxMessage) -> None:
        mailbox(msg)
        deliveries.append(msg.message_id)
        if len(deliveries) == 3:
            raise _Crash  # delivered, but the process dies before recording it

    with pytest.raises(_Crash):
        dispatch(store, "c1", crashing, now=lambda: T0)
    assert store.counts("c1")["notified"] == 2  # 3rd delivered but not recorded
    # restart: a fresh store object and mailbox on the same files
    store2 = SqlCampaignStore(tmp_path / "c.db")
    mailbox2 = JsonlMailbox(tmp_path / "mail.jsonl")
    seen: list[str] = []

    def sender(msg: OutboxMessage) -> None:
        seen.append(msg.message_id)
        mailbox2(msg)

    r = dispatch(store2, "c1", sender, now=lambda: T0 + timedelta(minutes=1))
    assert r.sent == expected - 2
    assert seen[0] == deliveries[2]  # the in-flight notice is delivered again ...
    ids = mailbox2.message_ids()
    assert len(ids) == len(set(ids)) == expected  # ... and the receiver kept it once
    assert store2.counts("c1")["notified"] == expected


def test_retry_backoff_then_escalate(scanned: Scanned, tmp_path: Path) -> None:
    inst, found = _targets(scanned)
    found = [t for t in found if not t.exempt_reason][:3]
    store = SqlCampaignStore(tmp_path / "c.db")
    store.start("c1", RULE, inst, found, T0)

    def failing(msg: OutboxMessage) -> None:
        raise DeliveryError("gateway down")

    now = T0
    r = dispatch(
        store, "c1", failing, now=lambda: now, max_attempts=3, backoff=timedelta(minutes=5)
    )
    assert (r.sent, r.failed, r.dead) == (0, 3, 0)
    # not due again before the backoff
    assert dispatch(store, "c1", failing, now=lambda: now + timedelta(minutes=4)).failed == 0
    now = T0 + timedelta(minutes=5)
    assert dispatch(store, "c1", failing, now=lambda: now, max_attempts=3).failed == 3
    now = T0 + timedelta(minutes=5 + 10)  # second backoff is doubled
    r = dispatch(store, "c1", failing, now=lambda: now, max_attempts=3)
    assert r.dead == 3
    assert store.counts("c1")["escalated"] == 3
    assert store.outbox_counts("c1") == {"dead": 3}


def test_token_bucket_rate_limits() -> None:
    clock = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        clock[0] += s

    bucket = TokenBucket(rate=10.0, burst=2, monotonic=lambda: clock[0], sleep=sleep)
    for _ in range(12):
        bucket.acquire()
    # 2 from the burst, then 10 more at 10/s: one second of waiting
    assert clock[0] == pytest.approx(1.0)
    with pytest.raises(InputError):
        TokenBucket(rate=0, burst=1)


def test_rescan_moves_states_and_records_progress(scanned: Scanned, tmp_path: Path) -> None:
    inst, found = _targets(scanned)
    store = SqlCampaignStore(tmp_path / "c.db")
    store.start("c1", RULE, inst, found, T0)
    dispatch(store, "c1", lambda m: None, now=lambda: T0)
    notified = [t for t in found if not t.exempt_reason]
    # half of the notified users change their profile: rescan the edited platform
    changers = {t.key for t in notified[: len(notified) // 2]}
    app = scanned.platform.app_profiles
    rows = app.to_pylist()
    for r in rows:
        if any((r["app_id"], r["subject_id"]) == (k[0], k[1]) for k in changers):
            r["handle"] = f"changed-{r['account_id']}"
            r["avatar_key"] = None
    edited = pa.Table.from_pylist(rows, schema=app.schema)
    rescan = scan_profiles(edited, scanned.platform.provider_profiles, scanned.hashes)
    still = {
        (r["app_id"], r["subject_id"], r["provider"])
        for r in rescan.filter(pc.field("copy_match"))
        .select(["app_id", "subject_id", "provider"])
        .to_pylist()
    }
    moved = store.apply_rescan("c1", still, T0 + timedelta(days=1), ignore_after=timedelta(days=7))
    assert moved == {"notified->changed": len(changers)}
    moved = store.apply_rescan("c1", still, T0 + timedelta(days=8), ignore_after=timedelta(days=7))
    assert moved == {"notified->ignored": len(notified) - len(changers)}
    moved = store.apply_rescan("c1", still, T0 + timedelta(days=16), ignore_after=timedelta(days=7))
    assert moved == {"ignored->escalated": len(notified) - len(changers)}
    history = store.history("c1")
    assert [op for _, op, _ in history] == ["start", "dispatch", "rescan", "rescan", "rescan"]
    assert history[0][2]["pending"] == len(notified)
    assert history[-1][2]["changed"] == len(changers)
    assert history[-1][2]["escalated"] == len(notified) - len(changers)


def test_reverted_change_is_notified_again_with_history(scanned: Scanned, tmp_path: Path) -> None:
    inst, found = _targets(scanned)
    store = SqlCampaignStore(tmp_path / "c.db")
    store.start("c1", RULE, inst, found, T0)
    mailbox = JsonlMailbox(tmp_path / "mail.jsonl")
    dispatch(store, "c1", mailbox, now=lambda: T0)
    notified = [t for t in found if not t.exempt_reason]
    subject = notified[0]
    others = {t.key for t in notified[1:]}
    # rescan 1: the subject changed the copy; rescan 2 (a day later): reverted to it
    moved = store.apply_rescan("c1", others, T0 + timedelta(days=1), ignore_after=timedelta(days=7))
    assert moved == {"notified->changed": 1}
    moved = store.apply_rescan(
        "c1", others | {subject.key}, T0 + timedelta(days=2), ignore_after=timedelta(days=7)
    )
    assert moved == {"changed->pending": 1}
    row = next(r for r in store.targets("c1") if (r["app_id"], r["subject_id"]) == subject.key[:2])
    assert row["state"] == "pending" and row["notified_at"] is None
    assert store.outbox_counts("c1") == {"sent": len(notified), "pending": 1}
    # the new notice has its own id, so the idempotent receiver keeps both notices
    r = dispatch(store, "c1", mailbox, now=lambda: T0 + timedelta(days=2, hours=1))
    assert r.sent == 1
    ids = [i for i in mailbox.message_ids() if f":{subject.subject_id}:" in i]
    assert [i.rsplit(":", 1)[1] for i in ids] == ["1", "2"]
    assert store.counts("c1")["notified"] == len(notified)
    # the per-subject history keeps every step, oldest first
    path = [(e["from_state"], e["to_state"]) for e in store.events("c1", subject.key)]
    assert path == [
        (None, "pending"),
        ("pending", "notified"),
        ("notified", "changed"),
        ("changed", "pending"),
        ("pending", "notified"),
    ]
    assert store.events("c1", subject.key)[-1]["note"].endswith(":notice:2")
    # the ignore clock restarts at the second notice: 7 days after it, not after the first
    moved = store.apply_rescan(
        "c1", others | {subject.key}, T0 + timedelta(days=8), ignore_after=timedelta(days=7)
    )
    assert moved == {"notified->ignored": len(others)}
    moved = store.apply_rescan(
        "c1",
        others | {subject.key},
        T0 + timedelta(days=9, hours=2),
        ignore_after=timedelta(days=7),
    )
    assert moved == {"notified->ignored": 1}


def test_dispatch_is_rate_limited(scanned: Scanned, tmp_path: Path) -> None:
    inst, found = _targets(scanned)
    found = [t for t in found if not t.exempt_reason][:12]
    store = SqlCampaignStore(tmp_path / "c.db")
    store.start("c1", RULE, inst, found, T0)
    clock = [0.0]
    times: list[float] = []

    def sleep(s: float) -> None:
        clock[0] += s

    bucket = TokenBucket(rate=4.0, burst=2, monotonic=lambda: clock[0], sleep=sleep)
    r = dispatch(store, "c1", lambda m: times.append(clock[0]), now=lambda: T0, limiter=bucket)
    assert r.sent == 12
    # 2 at once (burst), then one every 0.25 s
    assert times[:2] == [0.0, 0.0]
    assert np.allclose(np.diff(times[1:]), 0.25)
    assert clock[0] == pytest.approx(10 * 0.25)

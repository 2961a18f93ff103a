"""End-to-end: the main job on the real ego-Facebook graph, counts checked against the sandbox's
ground truth (how each profile, grant and transfer was generated), not just "it ran"."""

from __future__ import annotations

import sqlite3
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.cli.main import app
from provguard.config import RunSettings
from provguard.job.run import RunResult, run_main_job

ORDER = datetime(2019, 3, 19, 16, tzinfo=UTC)  # 2019-03-20 00:00 in Asia/Shanghai
RULE1 = "no-platform-profile-in-friend-recommendation"
RULE2 = "no-login-grant-transfer"
RULE3 = "duoshan-no-platform-profile"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> RunResult:
    out = tmp_path_factory.mktemp("demo")
    settings = RunSettings(
        out=out,
        graph=repo_root / "data/graphs/snap-ego-facebook.txt",
        policy=repo_root / "policies",
    )
    stages: list[str] = []
    result = run_main_job(settings, progress=stages.append)
    assert stages[0] == "load policy" and stages[-1] == "write report"
    return result


def test_graph_is_the_real_one(run: RunResult) -> None:
    assert run.graph_stats["nodes"] == 4039
    assert run.graph_stats["edges"] == 88234
    assert run.platform.summary()["subjects"] == 4039


def _revoked_before_order(run: RunResult) -> int:
    """Transfers first used before the order whose grant the platform records as not active:
    never grandfathered (the job sends each grant's status, finding F2)."""
    status = {g["grant_id"]: g["status"] for g in run.platform.grants.to_pylist()}
    return sum(
        1
        for r in run.transfers.to_pylist()
        if r["first_used_at"] < ORDER and status[r["grant_id"]] != "active"
    )


def test_transfers_denied_after_the_order_grandfathered_before(run: RunResult) -> None:
    truth = run.platform.summary()
    status = {g["grant_id"]: g["status"] for g in run.platform.grants.to_pylist()}
    t = run.transfers.to_pylist()
    assert len(t) == truth["transfers"] > 0
    for row in t:
        if row["first_used_at"] < ORDER and status[row["grant_id"]] == "active":
            assert (row["decision"], row["excepted"], row["rule_id"]) == ("permit", True, RULE2)
        else:
            assert (row["decision"], row["excepted"], row["rule_id"]) == ("deny", False, RULE2)
    decisions = Counter(row["decision"] for row in t)
    revoked = _revoked_before_order(run)
    assert revoked == 17  # the demo's world (tests/grants/test_grants_job_facts.py)
    assert decisions["deny"] == truth["transfers.after_order"] + revoked > 0
    assert decisions["permit"] == truth["transfers.before_order"] - revoked > 0


def _scan_hits(run: RunResult, app_id: str) -> dict[int, tuple[bool, bool]]:
    """subject -> (handle matched, picture matched) by the run's scan, over every provider."""
    hits: dict[int, tuple[bool, bool]] = {}
    for r in run.scan.filter(pc.equal(run.scan.column("app_id"), app_id)).to_pylist():
        h, p = hits.get(r["subject_id"], (False, False))
        hits[r["subject_id"]] = (h or r["handle_match"], p or r["picture_match"])
    return hits


def test_duoshan_display_denied_exactly_for_platform_values(run: RunResult) -> None:
    """Denied: every value recorded from WeChat/QQ, and every value recorded as the user's own
    input that the scan flags as a copy of the provider's (an inferred origin, finding F1)."""
    truth = run.platform.summary()
    d = run.display.filter(pc.equal(run.display.column("app_id"), "duoshan"))
    hits = _scan_hits(run, "duoshan")
    profiles = [r for r in run.platform.app_profiles.to_pylist() if r["app_id"] == "duoshan"]
    copied = [
        sum(
            1
            for r in profiles
            if r[f"{field}_source"] != "provider" and hits.get(r["subject_id"], (0, 0))[i]
        )
        for i, field in enumerate(("handle", "avatar"))
    ]
    assert copied[0] > 50 and copied[1] > 50
    assert (
        Counter(d.column("handle_decision").to_pylist())["deny"]
        == truth["duoshan.handle_source.provider"] + copied[0]
    )
    assert (
        Counter(d.column("avatar_decision").to_pylist())["deny"]
        == truth["duoshan.avatar_source.provider"] + copied[1]
    )
    # no exact copy of the provider's nickname is shown (the finding counted 72 before)
    nick: dict[int, set[str]] = {}
    for r in run.platform.provider_profiles.to_pylist():
        nick.setdefault(r["subject_id"], set()).add(r["nickname"])
    assert not [
        r
        for r in d.to_pylist()
        if r["handle_decision"] != "deny" and r["shown_handle"] in nick.get(r["subject_id"], ())
    ]
    douyin = run.display.filter(pc.equal(run.display.column("app_id"), "douyin"))
    assert set(douyin.column("handle_decision").to_pylist()) == {"not_applicable"}
    # a denied handle is never shown
    for row in d.to_pylist():
        if row["handle_decision"] == "deny":
            assert row["shown_handle"].startswith("duoshan user ")


def test_recommendation_cards_never_show_platform_handles(run: RunResult) -> None:
    profiles = {
        r["subject_id"]: r
        for r in run.platform.app_profiles.filter(
            pc.equal(run.platform.app_profiles.column("app_id"), "douyin")
        ).to_pylist()
    }
    hits = _scan_hits(run, "douyin")
    cards = run.recommendations.cards.to_pylist()
    assert len(cards) > 4039 * 5
    exact_shown = 0
    for card in cards:
        prof = profiles[card["candidate"]]
        handle_hit, picture_hit = hits.get(card["candidate"], (False, False))
        # recorded from WeChat/QQ, or a copy of the provider's value by the run's own scan
        platform_handle = prof["handle_source"] == "provider" or handle_hit
        platform_avatar = prof["avatar_source"] == "provider" or picture_hit
        expect_handle = "deny" if platform_handle else "not_applicable"
        expect_avatar = "deny" if platform_avatar else "not_applicable"
        assert (card["handle_decision"], card["avatar_decision"]) == (expect_handle, expect_avatar)
        assert card["app_id"] == "douyin"
        if expect_handle == "deny":
            assert card["shown_handle"] != prof["handle"]
        else:
            assert card["shown_handle"] == prof["handle"]
            exact_shown += prof["handle_edit"] == "exact"
    # ground truth: no card shows a handle copied verbatim (the finding counted 1,382 before)
    assert exact_shown == 0
    # a re-typed WeChat nickname now carries wechat beside user_input: its pairs with QQ
    # handles form the class qq+user_input+wechat (removed with the other platform pairs)
    assert run.recommendations.removed_names == (
        "handle_similarity[qq+user_input+wechat]",
        "handle_similarity[qq+user_input]",
        "handle_similarity[qq+wechat]",
        "handle_similarity[qq]",
        "handle_similarity[user_input+wechat]",
        "handle_similarity[wechat]",
        "picture_similarity[qq+wechat]",
        "picture_similarity[user_input+wechat]",
        "picture_similarity[wechat]",
    )
    removed = run.recommendations.signals_removed[0]
    assert removed.rules == (RULE1,)


def test_each_rule_denies_in_the_audit_log(run: RunResult) -> None:
    log = SqliteAuditLog(run.settings.out / "control.db", create=False)
    try:
        denials: Counter[str] = Counter()
        excepted = 0
        n = 0
        for entry in log.entries():
            n += 1
            if entry.kind != "decision":
                continue
            if entry.payload["effect"] == "deny":
                denials.update(entry.payload["rules"])
            excepted += bool(entry.payload["excepted"])
        assert n == run.audit_appended + 1  # and the job.report entry anchoring the report
        assert denials[RULE1] > 0 and denials[RULE2] > 0 and denials[RULE3] > 0
        revoked = _revoked_before_order(run)
        assert denials[RULE2] == run.platform.summary()["transfers.after_order"] + revoked
        assert excepted == run.platform.summary()["transfers.before_order"] - revoked
        assert log.verify().ok
    finally:
        log.close()


def test_scan_finds_exact_and_normalised_copies(run: RunResult) -> None:
    truth = run.platform.summary()
    by_app = {s.app_id: s for s in run.scan_summaries}
    for app_id in ("douyin", "duoshan"):
        s = by_app[app_id]
        # every exact copy is found; full-width copies fold to the original under NFKC
        assert s.handle_exact >= truth[f"{app_id}.handle_edit.exact"]
        assert s.handle_normalized >= truth[f"{app_id}.handle_edit.fullwidth"]
        assert s.picture_equal >= truth[f"{app_id}.avatar_edit.exact"]
    # an independent recomputation of the exact-handle count
    nick = {(r["subject_id"]): r["nickname"] for r in run.platform.provider_profiles.to_pylist()}
    for app_id in ("douyin", "duoshan"):
        expected = sum(
            1
            for r in run.platform.app_profiles.to_pylist()
            if r["app_id"] == app_id
            and r["subject_id"] in nick
            and r["handle"] == nick[r["subject_id"]]
        )
        assert by_app[app_id].handle_exact == expected


def test_report_written(run: RunResult) -> None:
    html = (run.settings.out / "report.html").read_text(encoding="utf-8")
    for needle in (RULE1, RULE2, RULE3, "Tianjin Binhai New Area People", "McAuley"):
        assert needle in html
    assert (run.settings.out / "evidence.json").is_file()


def test_audit_verify_cli_detects_an_edited_entry(run: RunResult, tmp_path: Path) -> None:
    import shutil

    db = tmp_path / "control.db"
    shutil.copy(run.settings.out / "control.db", db)
    runner = CliRunner()
    ok = runner.invoke(app, ["audit", "verify", "--log", str(db)])
    assert ok.exit_code == 0, ok.output
    assert "intact" in ok.output
    con = sqlite3.connect(db)
    table = next(
        name
        for (name,) in con.execute("select name from sqlite_master where type='table'")
        if "audit" in name
    )
    cols = [r[1] for r in con.execute(f"pragma table_info({table})")]
    payload_col = next(c for c in cols if "payload" in c)
    seq_col = next(c for c in cols if c in ("seq", "id"))
    con.execute(
        f"update {table} set {payload_col} = replace({payload_col}, ?, ?) where {seq_col} = 42",
        ('"stage":"', '"stage":"x'),
    )
    con.commit()
    con.close()
    bad = runner.invoke(app, ["audit", "verify", "--log", str(db)])
    assert bad.exit_code == 1
    assert "#42" in bad.output


def test_campaign_targets_match_the_sandbox(run: RunResult) -> None:
    import json

    import pyarrow.parquet as pq

    c = run.campaign
    targets = pq.read_table(run.settings.out / "data" / "campaign_targets.parquet").to_pylist()
    assert len(targets) == c.targets > 0
    profiles = {
        r["subject_id"]: r
        for r in run.platform.app_profiles.to_pylist()
        if r["app_id"] == "duoshan"
    }
    for t in targets:
        assert t["app_id"] == "duoshan"
        prof = profiles[t["subject_id"]]
        fields = t["fields"].split(",")
        # a target's copied field really is a copy of the provider's value in the sandbox
        for f in fields:
            edit = prof["handle_edit"] if f == "handle" else prof["avatar_edit"]
            assert edit != "user_input", (t, edit)
        if t["origin_kind"] == "recorded":
            assert all(
                prof["handle_source" if f == "handle" else "avatar_source"] == "provider"
                for f in fields
            )
        if t["exempt_reason"]:
            assert fields == ["handle"]
    notices = [
        json.loads(line) for line in (run.settings.out / "outbox.jsonl").read_text().splitlines()
    ]
    assert len(notices) == c.notified == c.targets - c.exempt
    assert {n["subject_id"] for n in notices} == {
        t["subject_id"] for t in targets if not t["exempt_reason"]
    }


def test_rebuilt_report_agrees_with_the_job_report(run: RunResult) -> None:
    """`provguard report --store` must tell a court the same figures the job's report did."""
    import json

    from provguard.report.from_store import build_model_from_store

    job = json.loads((run.settings.out / "evidence.json").read_text(encoding="utf-8"))["report"]
    rebuilt = build_model_from_store(run.settings.out).model_dump(mode="json")
    fields = ("app", "profiles_scanned", "handle_exact", "handle_normalised", "picture", "either")
    assert [{f: r[f] for f in fields} for r in rebuilt["scan"]] == [
        {f: r[f] for f in fields} for r in job["scan"]
    ]
    by_app = {s.app_id: s for s in run.scan_summaries}
    for r in rebuilt["scan"]:
        assert r["either"] == by_app[r["app"]].copy_match
    assert rebuilt["transfers"]["denied"] == job["transfers"]["denied"]

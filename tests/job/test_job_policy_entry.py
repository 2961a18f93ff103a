"""Every run chains the policy it enforced (fresh user 10, H4), and a rerun under another policy
keeps the campaign consistent with its chained record (the H4 side effect).

The main job runs on the first 600 lines of the real ego-Facebook graph, first under the shipped
policy, then again in the same folder under a copy whose two profile rules keep the order's id
and wording but read ``origins: [apple]`` (the reproduction of finding H4).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sqlite3
from html import unescape
from pathlib import Path

import pytest

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.cli.query import policy_digest
from provguard.config import RunSettings
from provguard.job.run import POLICY_ENTRY_KIND, RunResult, policy_entry, run_main_job
from provguard.policy import load_policy_dir
from provguard.report.from_store import build_model_from_store

SHIPPED = "cn-tj-binhai-2019-douyin-duoshan.yaml"
INJ = "cn-tj-binhai-2019-douyin-duoshan"
PROFILE_RULES = ("no-platform-profile-in-friend-recommendation", "duoshan-no-platform-profile")


def lax_copy(repo_root: Path, folder: Path) -> Path:
    """The shipped bundle with ``origins: [wechat, qq]`` replaced by ``[apple]`` in the two
    profile rules only (ids, title and descriptions unchanged); returns the folder."""
    text = (repo_root / "policies" / SHIPPED).read_text(encoding="utf-8")
    out: list[str] = []
    rule = ""
    for line in text.splitlines(keepends=True):
        m = re.match(r"\s*- id: (\S+)", line)
        if m:
            rule = m.group(1)
        if rule in PROFILE_RULES and "origins: [wechat, qq]" in line:
            line = line.replace("origins: [wechat, qq]", "origins: [apple]")
        out.append(line)
    lax = "".join(out)
    assert lax.count("origins: [apple]") == 2 and lax.count("origins: [wechat, qq]") == 1
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cn.yaml").write_text(lax, encoding="utf-8")
    return folder


def _text(html: str) -> str:
    html = re.sub(r"<svg.*?</svg>", "", html, flags=re.S)
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def _section(html: str, name: str) -> str:
    start = html.index(f'aria-labelledby="{name}">')
    return html[start : html.index("</section>", start)]


@pytest.fixture(scope="module")
def reruns(
    tmp_path_factory: pytest.TempPathFactory, repo_root: Path
) -> tuple[Path, Path, Path, RunResult, RunResult]:
    """``(folder after both runs, snapshot after the first, lax policy folder, first, second)``."""
    work = tmp_path_factory.mktemp("policy-entry")
    lines = (repo_root / "data/graphs/snap-ego-facebook.txt").read_text().splitlines()
    graph = work / "ego-facebook-600.txt"
    graph.write_text("\n".join(lines[:600]) + "\n")
    out = work / "demo"
    first = run_main_job(RunSettings(out=out, graph=graph, policy=repo_root / "policies"))
    snapshot = work / "after-first"
    shutil.copytree(out, snapshot)
    lax = lax_copy(repo_root, work / "laxpol")
    second = run_main_job(RunSettings(out=out, graph=graph, policy=lax))
    return out, snapshot, lax, first, second


def _rules(payload: dict[str, object]) -> list[dict[str, str]]:
    rules = payload["rules"]
    assert isinstance(rules, list)
    return [dict(r) for r in rules]


def _entries(folder: Path, kind: str) -> list[tuple[int, dict[str, object]]]:
    log = SqliteAuditLog(folder / "control.db", create=False)
    try:
        return [(e.seq, dict(e.payload)) for e in log.entries(kind=kind)]
    finally:
        log.close()


def test_each_run_opens_with_its_policy_entry(
    reruns: tuple[Path, Path, Path, RunResult, RunResult], repo_root: Path
) -> None:
    out, _, lax, first, second = reruns
    found = _entries(out, POLICY_ENTRY_KIND)
    assert [seq for seq, _ in found] == [first.policy_entry_seq, second.policy_entry_seq]
    assert found[0][0] == 1  # the first run's first entry
    # the second run's comes right after the first run's last entry (its job.report)
    reports = _entries(out, "job.report")
    assert second.policy_entry_seq == reports[0][0] + 1
    shipped, edited = found[0][1], found[1][1]
    # the digest the query entries compute, and each file's own SHA-256
    assert shipped["policy_digest"] == policy_digest(load_policy_dir(repo_root / "policies"))
    assert edited["policy_digest"] == policy_digest(load_policy_dir(lax))
    assert shipped["policy_digest"] != edited["policy_digest"]
    sha = hashlib.sha256((repo_root / "policies" / SHIPPED).read_bytes()).hexdigest()
    assert shipped["files"] == {SHIPPED: sha}
    assert edited["files"] == {
        "cn.yaml": hashlib.sha256((lax / "cn.yaml").read_bytes()).hexdigest()
    }
    # both entries are under the signed checkpoint the run exported
    assert second.checkpoint is not None
    assert second.policy_entry_seq is not None
    assert second.checkpoint.count >= second.policy_entry_seq


def test_the_chained_scope_is_the_rules_table_text(
    reruns: tuple[Path, Path, Path, RunResult, RunResult],
) -> None:
    out, snapshot, _, _, _ = reruns
    for folder, entry in ((snapshot, 0), (out, 1)):
        rules = _rules(_entries(out, POLICY_ENTRY_KIND)[entry][1])
        con = sqlite3.connect(folder / "control.db")
        table = con.execute("SELECT instrument_id, rule_id, effect, summary FROM rules").fetchall()
        con.close()
        assert [(r["instrument"], r["id"], r["effect"], r["scope"]) for r in rules] == table
    scopes = {r["id"]: r["scope"] for r in _rules(_entries(out, POLICY_ENTRY_KIND)[1][1])}
    for rule in PROFILE_RULES:
        assert "origins: apple (and unknown: fail closed)" in scopes[rule]
    assert "origins: qq, wechat (and unknown: fail closed)" in scopes["no-login-grant-transfer"]


def test_shipped_report_shows_wechat_qq_scope_and_its_digest(
    reruns: tuple[Path, Path, Path, RunResult, RunResult], repo_root: Path
) -> None:
    _, snapshot, _, _, _ = reruns
    one = _text(_section((snapshot / "report.html").read_text(encoding="utf-8"), "s-instruments"))
    digest = policy_digest(load_policy_dir(repo_root / "policies"))
    assert f"Policy enforced: digest {digest[:12]}… " in one
    assert "recorded in audit entry #1." in one
    assert "Scope enforced (machine) Author's description" in one
    for rule in PROFILE_RULES:
        # the scope cell comes right after the effect, before the author's description
        assert re.search(
            rf"{rule} deny deny; [^ ]+; purposes: [^;]+; apps: [a-z]+; data: [^;]+; "
            r"origins: qq, wechat \(and unknown: fail closed\) \w",
            one,
        ), one
    assert "origins: apple" not in one


def test_rerun_under_another_policy_keeps_the_campaign_consistent(
    reruns: tuple[Path, Path, Path, RunResult, RunResult],
) -> None:
    out, _, _, first, second = reruns
    # the lax policy selects no target; the campaign keeps the first run's (notices were sent)
    assert first.campaign.selected == first.campaign.targets == first.campaign.added
    assert first.campaign.targets > 0
    assert second.campaign.selected == 0 and second.campaign.added == 0
    assert second.campaign.targets == first.campaign.targets
    assert second.campaign.notified == 0
    con = sqlite3.connect(out / "control.db")
    (rows,) = con.execute(
        "SELECT count(*) FROM campaign_targets WHERE campaign_id = ?",
        (second.campaign.campaign_id,),
    ).fetchone()
    con.close()
    chained = _entries(out, "campaign")
    assert [p["targets"] for _, p in chained] == [rows, rows]
    # so neither the job's own report nor the rebuilt one withholds section 3c
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "PG340" not in html
    three_c = _text(_section(html, "s-campaigns"))
    assert "Withheld" not in three_c
    model = build_model_from_store(out)
    assert model.chain_check is not None and model.chain_check.ok
    assert model.campaigns is not None and model.campaigns[0].targets == rows


def test_policy_entry_of_one_file(repo_root: Path) -> None:
    path = repo_root / "policies" / SHIPPED
    kind, payload = policy_entry(load_policy_dir(path), path)
    assert kind == "job.policy"
    assert payload["files"] == {SHIPPED: hashlib.sha256(path.read_bytes()).hexdigest()}
    assert payload["policy_digest"] == policy_digest(load_policy_dir(repo_root / "policies"))
    rules = _rules(payload)
    assert [r["id"] for r in rules] == [
        "no-platform-profile-in-friend-recommendation",
        "no-login-grant-transfer",
        "duoshan-no-platform-profile",
    ]
    assert {r["instrument"] for r in rules} == {INJ}

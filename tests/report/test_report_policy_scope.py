"""The report shows the scope that was enforced and the policy digest (fresh user 10, H4).

The main job runs once, on the first 600 lines of the real ego-Facebook graph, under a copy of
the shipped policy whose two profile rules keep the court order's id and wording but read
``origins: [apple]``. Its report must show ``apple`` in those rules' scope beside the order's
words, and a policy digest other than the shipped bundle's; ``report --store`` takes both from
the chained ``job.policy`` entry and names a ``rules`` table edited afterwards (PG340).
"""

from __future__ import annotations

import re
import shutil
import sqlite3
from datetime import UTC, datetime
from html import unescape
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from provguard.audit.chain import AuditEntry
from provguard.audit.crosscheck import (
    ChainRecords,
    RuleRow,
    StoreTables,
    VerifiedRange,
    check_rules,
    crosscheck,
)
from provguard.cli.query import policy_digest
from provguard.cli.report import report_cmd
from provguard.config import RunSettings
from provguard.job.run import RunResult, run_main_job
from provguard.policy import load_policy_dir
from provguard.report.from_store import (
    NO_POLICY_ENTRY,
    build_model_from_store,
    policy_view,
    with_rules_check,
    withhold,
)
from provguard.report.render import render_html

from .conftest import sample_model

INJ = "cn-tj-binhai-2019-douyin-duoshan"
PROFILE_RULES = ("no-platform-profile-in-friend-recommendation", "duoshan-no-platform-profile")
runner = CliRunner()
cli = typer.Typer()
cli.command("report")(report_cmd)


def _lax(repo_root: Path, folder: Path) -> Path:
    text = (repo_root / "policies/cn-tj-binhai-2019-douyin-duoshan.yaml").read_text("utf-8")
    out, rule = [], ""
    for line in text.splitlines(keepends=True):
        m = re.match(r"\s*- id: (\S+)", line)
        rule = m.group(1) if m else rule
        if rule in PROFILE_RULES:
            line = line.replace("origins: [wechat, qq]", "origins: [apple]")
        out.append(line)
    folder.mkdir()
    (folder / "cn.yaml").write_text("".join(out), encoding="utf-8")
    return folder


def _text(html: str) -> str:
    html = re.sub(r"<svg.*?</svg>", "", html, flags=re.S)
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def _section(html: str, name: str) -> str:
    start = html.index(f'aria-labelledby="{name}">')
    return html[start : html.index("</section>", start)]


@pytest.fixture(scope="module")
def lax_run(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> tuple[Path, RunResult]:
    work = tmp_path_factory.mktemp("lax-policy")
    lines = (repo_root / "data/graphs/snap-ego-facebook.txt").read_text().splitlines()
    graph = work / "ego-facebook-600.txt"
    graph.write_text("\n".join(lines[:600]) + "\n")
    out = work / "demo"
    policy = _lax(repo_root, work / "laxpol")
    return out, run_main_job(RunSettings(out=out, graph=graph, policy=policy))


def test_edited_policy_report_shows_apple_scope_and_another_digest(
    lax_run: tuple[Path, RunResult], repo_root: Path
) -> None:
    out, result = lax_run
    one = _text(_section((out / "report.html").read_text(encoding="utf-8"), "s-instruments"))
    shipped = policy_digest(load_policy_dir(repo_root / "policies"))
    edited = policy_digest(result.policy)
    assert edited != shipped
    assert f"Policy enforced: digest {edited[:12]}… " in one and shipped[:12] not in one
    assert f"recorded in audit entry #{result.policy_entry_seq}." in one
    for rule in PROFILE_RULES:
        row = re.search(rf"{rule} deny (deny; .*?) ((?:Douyin|Duoshan) must .*?\.)", one)
        assert row is not None, one
        scope, description = row.groups()
        # both shown, the scope first: the scope says apple, the order's words WeChat/QQ
        assert "origins: apple (and unknown: fail closed)" in scope and "wechat" not in scope
        assert "WeChat/QQ" in description
    # the summary's "what it forbids" leads with the enforced scope too
    summary = _text(_section((out / "report.html").read_text(encoding="utf-8"), "s-summary"))
    assert re.search(
        r"duoshan-no-platform-profile deny; .*?origins: apple .*?Duoshan must", summary
    )
    # the unedited transfer rule keeps its scope
    assert "no-login-grant-transfer deny deny; transfer; " in one
    assert "origins: qq, wechat (and unknown: fail closed)" in one


def test_rebuilt_report_takes_scope_and_digest_from_the_chain(
    lax_run: tuple[Path, RunResult],
) -> None:
    out, result = lax_run
    model = build_model_from_store(out)
    assert model.policy is not None and model.policy.recorded
    assert model.policy.seq == result.policy_entry_seq
    assert model.policy.digest == policy_digest(result.policy)
    check = model.chain_check
    assert check is not None and check.ok
    rules = next(t for t in check.tables if t.table == "rules")
    assert (rules.rows, rules.entries, rules.matched) == (3, 3, 3)
    scopes = {r.rule_id: r.scope for i in model.instruments for r in i.rules}
    assert all("origins: apple" in str(scopes[r]) for r in PROFILE_RULES)
    assert NO_POLICY_ENTRY not in check.not_in_chain


def test_edited_rules_table_is_a_named_discrepancy(
    lax_run: tuple[Path, RunResult], tmp_path: Path
) -> None:
    out, result = lax_run
    folder = tmp_path / "copy"
    shutil.copytree(out, folder)
    con = sqlite3.connect(folder / "control.db")
    # make the table claim the order's scope again
    con.execute(
        "UPDATE rules SET summary = replace(summary, 'origins: apple', 'origins: qq, wechat') "
        "WHERE rule_id = 'duoshan-no-platform-profile'"
    )
    con.commit()
    con.close()
    # `audit verify` (check_store) names it as the report does
    from provguard.adapters.control_sqlite import check_store

    checked = check_store(folder / "control.db")
    assert not checked.ok and checked.failed_tables() == ("rules",)
    (d,) = checked.discrepancies
    assert (d.key, d.field) == (f"{INJ}/duoshan-no-platform-profile", "summary")
    res = runner.invoke(cli, ["--store", str(folder)], env={"COLUMNS": "300"})
    assert res.exit_code == 1, res.output
    flat = " ".join(res.output.split())
    assert "error [PG340] 1 discrepancy" in flat and "(rules 1)" in flat
    assert f"rules[{INJ}/duoshan-no-platform-profile].summary" in flat
    html = (folder / "report.html").read_text(encoding="utf-8")
    one = _text(_section(html, "s-instruments"))
    assert "[PG340] Withheld: the control store's rules table disagrees" in one
    # the scope shown is the chained one; the descriptions are withheld
    row = re.search(r"duoshan-no-platform-profile deny (deny; .*?) withheld \(PG340", one)
    assert row is not None and "origins: apple" in row.group(1)
    assert "Duoshan must stop using" not in one
    six = _text(_section(html, "s-audit"))
    assert "rules 1. Legal instruments (the rules' enforced scope) 3 3 2 1 withheld" in six
    assert re.search(
        rf"rules {INJ}/duoshan-no-platform-profile summary deny; .*? origins: qq, wechat .*? "
        rf"origins: apple \(and unknown: fail closed\) #{result.policy_entry_seq} ",
        six,
    ), six


def _entry(seq: int, rules: list[dict[str, str]]) -> AuditEntry:
    return AuditEntry(
        seq=seq,
        at=datetime(2026, 1, 1, tzinfo=UTC),
        kind="job.policy",
        payload={"policy_digest": "a" * 64, "files": {"x.yaml": "b" * 64}, "rules": rules},
        prev_hash="0" * 64,
        hash="1" * 64,
    )


RULE = {"id": "r1", "instrument": "i", "effect": "deny", "scope": "deny; use; origins: apple"}


def test_check_rules_both_directions_and_the_signature() -> None:
    row = RuleRow("i", "r1", "deny", "deny; use; origins: apple")
    ok = check_rules([row], _entry(5, [RULE]), VerifiedRange(1, 9, 9))
    assert ok.ok and (ok.rows, ok.entries, ok.matched) == (1, 1, 1)
    # a rule dropped from the table, one added to it, one whose effect was flipped
    extra = RuleRow("i", "r2", "permit", "permit; use")
    flipped = RuleRow("i", "r1", "permit", "deny; use; origins: apple")
    got = check_rules([flipped, extra], _entry(5, [RULE]), VerifiedRange(1, 9, 9))
    assert [(d.key, d.field, d.table_value, d.chain_value) for d in got.discrepancies] == [
        ("i/r1", "effect", "permit", "deny"),
        ("i/r2", "summary", "permit; use", None),
    ]
    gone = check_rules([], _entry(5, [RULE]), VerifiedRange(1, 9, 9))
    assert [(d.key, d.table_value, d.chain_value) for d in gone.discrepancies] == [
        ("i/r1", None, "deny; use; origins: apple")
    ]
    # an entry after the signed cover vouches for nothing
    unsigned = check_rules([row], _entry(7, [RULE]), VerifiedRange(1, 9, 6))
    assert [d.field for d in unsigned.discrepancies] == ["signature"] and unsigned.matched == 0


def test_a_log_without_a_policy_entry_says_so() -> None:
    rows = (RuleRow("i", "r1", "deny", "deny; use; origins: apple"),)
    checked = crosscheck(StoreTables(rules=rows), ChainRecords(), VerifiedRange(1, 3))
    assert checked.table("rules") is None  # nothing to compare the rows with
    result = with_rules_check(checked, ChainRecords())
    assert result.ok and result.table("rules") is None
    assert "no job.policy entry" in result.not_in_chain[NO_POLICY_ENTRY]
    view = policy_view(None)
    assert not view.recorded and view.digest == ""
    model = withhold(sample_model().model_copy(update={"policy": view}), result)
    html = render_html(model)
    one = _text(_section(html, "s-instruments"))
    assert "not recorded The audit log has no job.policy entry" in one
    six = _text(_section(html, "s-audit"))
    assert "job.policy (no entry in this log) : 1. the policy digest and the rules' enforced" in six


def test_policy_digest_prints_what_the_run_chained(
    lax_run: tuple[Path, RunResult], repo_root: Path
) -> None:
    """`provguard policy digest DIR` gives a reader the values to compare with the chained
    job.policy entry: the edited folder's digest is the run's, the shipped one's is not."""
    import json

    from provguard.adapters.audit_sqlite import SqliteAuditLog
    from provguard.cli.policy import policy_app

    out, _ = lax_run
    with SqliteAuditLog(out / "control.db", create=False) as log:
        (entry,) = [dict(e.payload) for e in log.entries(kind="job.policy")]
    folder = Path(str(entry["folder"]))
    res = runner.invoke(policy_app, ["digest", "--policy", str(folder), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == entry
    res = runner.invoke(policy_app, ["digest", "--policy", str(repo_root / "policies")])
    assert res.exit_code == 0, res.output
    assert "policy digest: " in res.output and str(entry["policy_digest"]) not in res.output
    assert "origins: qq, wechat" in res.output

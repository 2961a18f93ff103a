"""The report shows the scope that was enforced and the policy digest (fresh user 10, H4).

The main job runs once, on the first 600 lines of the real ego-Facebook graph, under a copy of
the shipped policy whose two profile rules keep the court order's id and wording but read
``origins: [apple]``. Its report must show ``apple`` in those rules' scope beside the order's
words, and a policy digest other than the shipped bundle's; ``report --store`` takes both from
the chained ``job.policy`` entry and names a ``rules`` table edited afterwards (PG340).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sqlite3
from datetime import UTC, date, datetime
from html import unescape
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from provguard.audit.chain import AuditEntry
from provguard.audit.crosscheck import (
    INSTRUMENTS_SECTION,
    NOT_IN_CHAIN,
    ChainRecords,
    InstrumentRow,
    RuleRow,
    StoreTables,
    VerifiedRange,
    check_instruments,
    check_rules,
    crosscheck,
)
from provguard.audit.enforced import policy_digest
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
    # the instrument row agrees with the job.policy entry: its status is shown, chain-backed
    inst = next(t for t in check.tables if t.table == "instruments")
    assert (inst.rows, inst.entries, inst.matched, inst.discrepancies) == (1, 1, 1, 0)
    assert inst.section == INSTRUMENTS_SECTION
    assert "instruments, rules" not in check.not_in_chain
    assert [(i.id, i.in_force, i.effective_from) for i in model.instruments] == [
        (INJ, True, date(2019, 3, 20))
    ]
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
    assert "the instruments' title, dates and status" in six


def test_policy_digest_prints_what_the_run_chained(
    lax_run: tuple[Path, RunResult], repo_root: Path
) -> None:
    """`provguard policy digest DIR` gives a reader the values to compare with the chained
    job.policy entry: the edited folder's digest is the run's, the shipped one's is not."""
    from provguard.adapters.audit_sqlite import SqliteAuditLog
    from provguard.cli.policy import policy_app

    out, _ = lax_run
    with SqliteAuditLog(out / "control.db", create=False) as log:
        (entry,) = [dict(e.payload) for e in log.entries(kind="job.policy")]
    folder = Path(str(entry["folder"]))
    res = runner.invoke(policy_app, ["digest", "--policy", str(folder), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == entry
    # the entry records the instruments row as save_bundles wrote it (digest of the source text)
    con = sqlite3.connect(out / "control.db")
    stored = con.execute(
        "SELECT id, kind, issuer, effective_from, validity, source FROM instruments"
    ).fetchall()
    con.close()
    ((iid, kind, issuer, day, validity, source),) = stored
    assert entry["instruments"] == [
        {
            "id": iid,
            "kind": kind,
            "title": json.loads(source)["title"],
            "issuer": issuer,
            "effective_from": day,
            "validity": validity,
            "source_sha256": hashlib.sha256(source.encode("utf-8")).hexdigest(),
        }
    ]
    assert (iid, kind, day) == (INJ, "court_order.preliminary_injunction", "2019-03-20")
    res = runner.invoke(policy_app, ["digest", "--policy", str(repo_root / "policies")])
    assert res.exit_code == 0, res.output
    assert "policy digest: " in res.output and str(entry["policy_digest"]) not in res.output
    assert "origins: qq, wechat" in res.output


LIFTED = "Order (lifted on appeal; no restriction applied to Douyin friend recommendation)"


def _m1_edit(db: Path) -> None:
    """Findings I, M1: the instruments row (source JSON and column) claims the order took
    effect on 2019-07-01 under another title."""
    con = sqlite3.connect(db)
    (source,) = con.execute("SELECT source FROM instruments").fetchone()
    d = json.loads(source)
    d["effective_from"] = d["issued"] = "2019-07-01"
    d["title"] = LIFTED
    con.execute(
        "UPDATE instruments SET source = ?, effective_from = '2019-07-01'", (json.dumps(d),)
    )
    con.commit()
    con.close()


def test_edited_instrument_row_is_a_named_discrepancy(
    lax_run: tuple[Path, RunResult], tmp_path: Path
) -> None:
    out, result = lax_run
    folder = tmp_path / "m1"
    shutil.copytree(out, folder)
    _m1_edit(folder / "control.db")
    from provguard.adapters.control_sqlite import check_store

    checked = check_store(folder / "control.db")  # what `audit verify` runs
    assert not checked.ok and checked.failed_tables() == ("instruments",)
    seq = result.policy_entry_seq
    got = [(d.key, d.field, d.table_value, d.chain_value, d.seq) for d in checked.discrepancies]
    assert got[:2] == [
        (INJ, "title", LIFTED, result.policy.bundles[0].instrument.title, seq),
        (INJ, "effective_from", "2019-07-01", "2019-03-20", seq),
    ]
    assert [d.field for d in checked.discrepancies] == ["title", "effective_from", "source_sha256"]
    res = runner.invoke(cli, ["--store", str(folder)], env={"COLUMNS": "300"})
    assert res.exit_code == 1, res.output
    flat = " ".join(res.output.split())
    assert "error [PG340] 3 discrepancies" in flat and "(instruments 3)" in flat
    assert f"first: instruments[{INJ}].title table '{LIFTED}'" in flat
    html = (folder / "report.html").read_text(encoding="utf-8")
    one = _text(_section(html, "s-instruments"))
    assert "[PG340] Withheld: the control store's instruments table disagrees" in one
    assert "The instrument's title, dates and status are withheld" in one
    assert "not in force" not in one and "Status on 2019-06-30 withheld" in one
    assert "Issued — Effective from — " in one
    # the header and the summary: no "not in force", no edited title as the instrument's name
    header = _text(html[html.index("<header>") : html.index("</header>")])
    assert LIFTED not in header and "not in force" not in header
    assert "status withheld (PG340)" in header
    summary = _text(_section(html, "s-summary"))
    assert "(not in force)" not in summary and "(status withheld)" in summary
    six = _text(_section(html, "s-audit"))
    assert f"instruments {INSTRUMENTS_SECTION} 1 1 0 3 withheld" in six, six
    assert f"instruments {INJ} effective_from 2019-07-01 2019-03-20 #{seq}" in six, six


def _instrument_entry(seq: int, instruments: list[dict[str, str | None]] | None) -> AuditEntry:
    payload: dict[str, object] = {"policy_digest": "a" * 64, "files": {}, "rules": []}
    if instruments is not None:
        payload["instruments"] = instruments
    return AuditEntry(
        seq=seq,
        at=datetime(2026, 1, 1, tzinfo=UTC),
        kind="job.policy",
        payload=payload,
        prev_hash="0" * 64,
        hash="1" * 64,
    )


INST: dict[str, str | None] = {
    "id": "i",
    "kind": "court_order",
    "title": None,
    "issuer": "court",
    "effective_from": "2019-03-20",
    "validity": "from 2019-03-20",
    "source_sha256": "c" * 64,
}


def _irow(title: str | None, day: date, validity: str, sha: str, iid: str = "i") -> InstrumentRow:
    return InstrumentRow(iid, "court_order", title, "court", day, validity, sha)


def test_check_instruments_both_directions_and_the_signature() -> None:
    row = _irow(None, date(2019, 3, 20), "from 2019-03-20", "c" * 64)
    ok = check_instruments([row], _instrument_entry(5, [INST]), VerifiedRange(1, 9, 9))
    assert ok.ok and (ok.rows, ok.entries, ok.matched) == (1, 1, 1)
    moved = _irow("T", date(2019, 7, 1), "from 2019-07-01", "d" * 64)
    extra = _irow(None, date(2020, 1, 1), "from 2020-01-01", "e" * 64, "j")
    got = check_instruments([moved, extra], _instrument_entry(5, [INST]), VerifiedRange(1, 9, 9))
    assert [(d.key, d.field, d.table_value, d.chain_value) for d in got.discrepancies] == [
        ("i", "title", "T", None),
        ("i", "effective_from", "2019-07-01", "2019-03-20"),
        ("i", "validity", "from 2019-07-01", "from 2019-03-20"),
        ("i", "source_sha256", "d" * 64, "c" * 64),
        ("j", "source_sha256", "e" * 64, None),
    ]
    assert got.matched == 0
    gone = check_instruments([], _instrument_entry(5, [INST]), VerifiedRange(1, 9, 9))
    assert [(d.key, d.table_value, d.chain_value) for d in gone.discrepancies] == [
        ("i", None, "c" * 64)
    ]
    unsigned = check_instruments([row], _instrument_entry(7, [INST]), VerifiedRange(1, 9, 6))
    assert [d.field for d in unsigned.discrepancies] == ["signature"] and unsigned.matched == 0
    outside = check_instruments([row], _instrument_entry(7, [INST]), VerifiedRange(1, 6))
    assert [d.field for d in outside.discrepancies] == ["chain"]
    # through crosscheck: checked, and no longer listed as not chain-backed
    res = crosscheck(
        StoreTables(instruments=(moved,)), [_instrument_entry(1, [INST])], VerifiedRange(1, 1)
    )
    assert res.failed_tables() == ("instruments",)
    assert "instruments, rules" not in res.not_in_chain and "rules" in res.not_in_chain


def test_a_policy_entry_without_instruments_leaves_them_not_chain_backed() -> None:
    """A run from before job.policy recorded its instruments: no check, and section 6 keeps
    the instruments among the sources that are not chain-backed."""
    row = _irow(None, date(2019, 7, 1), "x", "d" * 64)
    res = crosscheck(
        StoreTables(instruments=(row,)), [_instrument_entry(1, None)], VerifiedRange(1, 1)
    )
    assert res.ok and res.table("instruments") is None and res.table("rules") is not None
    assert dict(res.not_in_chain) == dict(NOT_IN_CHAIN)
    alone = check_instruments([row], _instrument_entry(1, None), VerifiedRange(1, 1))
    assert alone.ok and alone.unchained == ("i",) and alone.entries == 0

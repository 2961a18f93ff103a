"""The policy CLI gaps a fresh user found: staged `check` errors, an unreadable and misleading
`diff`, naive CLI times the HTTP API refuses, `instrument event` repeats and date errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import typer
from rich.console import Console
from typer.testing import CliRunner

from provguard.cli.policy import decide_cmd, instrument_app, policy_app, render_diff
from provguard.decide.analysis import DiffResult, diff
from provguard.policy import PolicySet, load_bundle_text, load_policy_dir, load_policy_dirs

app = typer.Typer()
app.command("decide")(decide_cmd)
app.add_typer(policy_app, name="policy")
app.add_typer(instrument_app, name="instrument")
runner = CliRunner()
INJ = "cn-tj-binhai-2019-douyin-duoshan"


def run(*args: str | Path, columns: int = 80) -> tuple[int, str]:
    res = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": str(columns)})
    return res.exit_code, res.output


def test_check_reports_dates_effects_and_taxonomy_at_once(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "instrument: {id: x, kind: court_order, issuer: c, effective_from: 2019-02-30}\n"
        "rules:\n"
        "  - {id: r, effect: dney, actions: [use], purposes: [social.friend_recomendation]}\n",
        encoding="utf-8",
    )
    code, out = run("policy", "check", "--policy", bad, columns=250)
    assert code == 2
    lines = [line for line in out.splitlines() if "PG110" in line]
    assert [line.split(f"{bad}:")[1].split(":")[0] for line in lines] == ["1", "3", "3"], out
    assert "day is out of range for month" in lines[0]
    assert "'deny' or 'permit'" in lines[1]
    assert "did you mean 'social.friend_recommendation'?" in lines[2]


def test_check_warns_when_effective_from_is_before_issued(tmp_path: Path) -> None:
    p = tmp_path / "x.yaml"
    p.write_text(
        "instrument:\n  id: x\n  kind: statute\n  issuer: x\n  issued: 2021-08-20\n"
        "  effective_from: 2021-08-01\nrules: [{id: r, effect: deny, actions: [use]}]\n",
        encoding="utf-8",
    )
    code, out = run("policy", "check", "--policy", p, columns=250)
    assert code == 0
    assert f"{p}:6:19: effective_before_issued" in out
    code, _ = run("policy", "check", "--policy", p, "--strict", columns=250)
    assert code == 1


def _render(result: DiffResult, width: int, **kw: bool) -> str:
    buf = io.StringIO()
    render_diff(result, Console(width=width, file=buf, color_system=None), **kw)
    return buf.getvalue()


def test_diff_fits_80_columns(repo_root: Path) -> None:
    a = load_policy_dir(repo_root / "policies")
    b = load_policy_dirs([repo_root / "policies", repo_root / "policies" / "extra"])
    text = _render(diff(a, b), 80)
    lines = text.splitlines()
    assert lines and max(len(line) for line in lines) <= 80, max(lines, key=len)
    assert "Outcome changes" in text and "Same outcome, different rule" in text
    assert "from     2019-03-20 Asia/Shanghai" in text
    assert "…" not in text  # nothing is cut off
    # --full (one row per class) on a small diff: the injunction read in UTC vs Beijing days
    twin = (repo_root / "policies" / f"{INJ}.yaml").read_text(encoding="utf-8")
    utc = PolicySet.of([load_bundle_text(twin.replace("timezone: Asia/Shanghai", ""))])
    small = diff(utc, a)
    assert 0 < small.changed < 2000
    full = _render(small, 80, full=True)
    assert max(len(line) for line in full.splitlines()) <= 80 and "…" not in full
    assert "before 2019-03-20 Asia/Shanghai" in full or "2019-03-20 Asia/Shanghai" in full
    # --wide keeps the one-table layout (wider than 80 columns)
    wide = _render(small, 400, wide=True)
    assert max(len(line) for line in wide.splitlines()) > 80


def test_diff_plus_means_adding_and_the_old_form_warns(repo_root: Path) -> None:
    pol, extra = repo_root / "policies", repo_root / "policies" / "extra"
    code, plus = run("policy", "diff", pol, "--plus", extra, "--json")
    assert code == 0
    doc = json.loads(plus)
    assert doc["before_bundles"] == [INJ]
    assert INJ in doc["after_bundles"] and len(doc["after_bundles"]) == 4
    assert doc["changed"] == doc["changed_outcome"] + doc["changed_rule_only"]
    code, several = run("policy", "diff", pol, pol, extra, "--json")
    assert code == 0 and json.loads(several)["changed"] == doc["changed"]
    # the old form is kept: the extras alone replace the injunction; a note says so
    code, out = run("policy", "diff", pol, extra)
    assert code == 0
    flat = " ".join(out.split())
    assert "compares them as replacements" in flat and "--plus" in flat
    assert "before: " in out and "after: " in out
    assert max(len(line) for line in out.splitlines()) <= 80
    code, out = run("policy", "diff", pol)
    assert code == 2 and "--plus" in out


def test_naive_cli_time_is_refused_like_the_http_api(repo_root: Path) -> None:
    base = [
        "decide", "--app", "douyin", "--action", "transfer", "--category", "grant.login",
        "--origin", "wechat", "--recipient", "duoshan", "--policy", repo_root / "policies",
    ]  # fmt: skip
    code, out = run(*base, "--at", "2019-06-30T10:00:00", columns=250)
    assert code == 2 and "PG140" in out and "has no UTC offset" in out
    code, out = run(*base, "--at", "2019-06-30", "--first-used-at", "2019-03-20T07:00", columns=250)
    assert code == 2 and "--first-used-at '2019-03-20T07:00' has no UTC offset" in out
    code, out = run(*base, "--at", "2020-13-01", columns=250)
    assert code == 2 and "month must be in 1..12" in out
    # with an offset: the defining case is denied (Beijing day of the order), before it permitted
    code, out = run(
        *base, "--at", "2019-06-30", "--first-used-at", "2019-03-20T07:00+08:00", columns=250
    )
    assert code == 1 and "DENY" in out
    code, out = run(
        *base, "--at", "2019-06-30", "--first-used-at", "2019-03-19T23:59+08:00", columns=250
    )
    assert code == 0 and "PERMIT (by exception)" in out


def test_instrument_event_repeat_and_date_errors(tmp_path: Path, repo_root: Path) -> None:
    from provguard.adapters.audit_sqlite import SqliteAuditLog
    from provguard.adapters.control_sqlite import SqlControlStore

    store = tmp_path / "control.db"
    SqlControlStore(store).engine.dispose()
    ev = [
        "instrument", "event", "final_judgment", "--instrument", INJ, "--store", store,
        "--policy", repo_root / "policies",
    ]  # fmt: skip
    code, out = run(*ev, "--date", "2020-13-01", columns=250)
    assert code == 2 and "month must be in 1..12" in out and "YYYY-MM-DD" not in out
    code, out = run(*ev, "--date", "2020-02-30", columns=250)
    assert code == 2 and "day is out of range for month" in out
    code, out = run(*ev, "--date", "01/02/2020", columns=250)
    assert code == 2 and "must be YYYY-MM-DD" in out
    # a judgment that has not happened is not a fact to record (fresh user 10, L1)
    code, out = run(*ev, "--date", "2099-01-01", columns=250)
    assert code == 2 and "2099-01-01 has not happened yet" in out
    cs = SqlControlStore(store)
    assert cs.events() == {}  # nothing recorded
    cs.engine.dispose()
    code, out = run(*ev, "--date", "2020-01-01", columns=250)
    assert code == 0 and out.startswith("recorded final_judgment")
    assert "before 2020-01-01 Asia/Shanghai" in out
    code, out = run(*ev, "--date", "2020-01-01", columns=250)
    assert code == 0 and "already recorded" in out and "nothing changed" in out
    with SqliteAuditLog(store, create=False) as log:  # the repeat appended nothing
        assert len(list(log.entries(kind="instrument_event"))) == 1
        assert log.verify().ok

"""The CLI as a user meets it: decisions with reasons, located errors, no tracebacks."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from provguard.cli.main import app

runner = CliRunner()


def test_decide_prints_decision_rule_and_instrument(repo_root: Path) -> None:
    args = [
        "decide",
        "--app",
        "douyin",
        "--action",
        "use",
        "--purpose",
        "social.friend_recommendation",
        "--category",
        "user.avatar",
        "--origin",
        "wechat",
        "--at",
        "2019-06-30",
        "--policy",
        str(repo_root / "policies"),
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 1  # deny
    assert "DENY" in r.output
    assert "no-platform-profile-in-friend-recommendation" in r.output
    assert "cn-tj-binhai-2019-douyin-duoshan" in r.output
    assert "Tianjin Binhai New Area People's Court" in " ".join(r.output.split())


def test_decide_grandfathered_transfer(repo_root: Path) -> None:
    args = [
        "decide",
        "--app",
        "douyin",
        "--action",
        "transfer",
        "--category",
        "grant.login",
        "--origin",
        "qq",
        "--recipient",
        "duoshan",
        "--at",
        "2019-06-30",
        "--first-used-at",
        "2019-02-01",
        "--policy",
        str(repo_root / "policies"),
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "PERMIT (by exception)" in r.output
    assert "before 2019-03-20" in r.output


def test_decide_json_and_before_the_order(repo_root: Path) -> None:
    args = [
        "decide",
        "--app",
        "douyin",
        "--action",
        "use",
        "--purpose",
        "social.friend_recommendation",
        "--category",
        "user.avatar",
        "--origin",
        "wechat",
        "--at",
        "2019-03-19",
        "--json",
        "--policy",
        str(repo_root / "policies"),
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 0
    assert '"effect": "not_applicable"' in r.output


def test_bad_request_is_a_clear_error(repo_root: Path) -> None:
    args = [
        "decide",
        "--app",
        "douyin",
        "--action",
        "use",
        "--category",
        "user.avatar",
        "--origin",
        "wechat",
        "--policy",
        str(repo_root / "policies"),
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 2
    assert "PG140" in r.output and "needs a purpose" in r.output
    assert "Traceback" not in r.output


def test_malformed_policy_file_names_file_line_col(tmp_path: Path, injunction_path: Path) -> None:
    text = injunction_path.read_text().replace(
        "origins: [wechat, qq]\n    unless:", "origins: [wechat, qq]\n    unles:"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    line = text[: text.index("unles:")].count("\n") + 1
    r = runner.invoke(app, ["policy", "check", "--policy", str(bad)])
    assert r.exit_code == 2
    flat = " ".join(r.output.split())
    assert f"{bad}:{line}:5: unknown key 'unles'" in flat
    assert "rule 'no-login-grant-transfer'" in flat
    assert "Traceback" not in r.output


def test_malformed_graph_file_names_line_and_column(tmp_path: Path, repo_root: Path) -> None:
    graph = tmp_path / "graph.txt"
    graph.write_text("0 1\n1 2\n2 x3\n")
    r = runner.invoke(
        app,
        [
            "run",
            "--out",
            str(tmp_path / "out"),
            "--graph",
            str(graph),
            "--policy",
            str(repo_root / "policies"),
        ],
    )
    assert r.exit_code == 2
    flat = " ".join(r.output.split())
    assert f"{graph}:3:3" in flat and "PG130" in flat
    assert "Traceback" not in r.output


def test_policy_check_ok(repo_root: Path) -> None:
    r = runner.invoke(app, ["policy", "check", "--policy", str(repo_root / "policies")])
    assert r.exit_code == 0
    assert "1 bundle(s), 3 rule(s)" in r.output


def test_misspelt_origin_is_an_error_not_a_silent_permit(repo_root: Path, tmp_path: Path) -> None:
    args = ["decide", "--app", "douyin", "--action", "use", "--purpose",
            "social.friend_recommendation", "--category", "user.avatar", "--origin", "wechatt",
            "--policy", str(repo_root / "policies")]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "PG140" in r.output and "unknown origin" in r.output
    bad = tmp_path / "o.yaml"
    bad.write_text(
        "instrument: {id: i, kind: internal_policy, issuer: me, effective_from: 2019-01-01}\n"
        "rules:\n  - {id: r, effect: deny, actions: [use], data: {origins: [qqq]}}\n"
    )
    r = runner.invoke(app, ["policy", "check", "--policy", str(bad)])
    flat = " ".join(r.output.split())
    assert r.exit_code == 2 and f"{bad}:3:" in flat and "unknown origin 'qqq'" in flat


def test_impossible_date_is_located(tmp_path: Path) -> None:
    bad = tmp_path / "d.yaml"
    bad.write_text(
        "instrument: {id: i, kind: internal_policy, issuer: me, effective_from: 2019-02-30}\n"
        "rules:\n  - {id: r, effect: deny, actions: [use]}\n"
    )
    r = runner.invoke(app, ["policy", "check", "--policy", str(bad)])
    flat = " ".join(r.output.split())
    assert r.exit_code == 2 and f"{bad}:1:72" in flat and "out of range" in flat
    assert "Traceback" not in r.output


def test_audit_verify_never_writes_to_what_it_checks(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    r = runner.invoke(app, ["audit", "verify", "--log", str(empty)])
    assert r.exit_code == 2 and "not a provguard audit log" in " ".join(r.output.split())
    assert empty.stat().st_size == 0 or b"audit_log" not in empty.read_bytes()


def test_output_folder_that_is_a_file(tmp_path: Path, repo_root: Path) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    r = runner.invoke(app, ["run", "--out", str(f), "--policy", str(repo_root / "policies")])
    assert r.exit_code == 2 and "is not a folder" in " ".join(r.output.split())


def test_version() -> None:
    from provguard import __version__

    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"provguard {__version__}"


def test_small_changes_keep_their_sign_in_the_report() -> None:
    from provguard.report.render import _fmt_delta

    assert _fmt_delta(-0.0003) == "-0.0003"
    assert _fmt_delta(-0.00003) == "-3.0e-05"
    assert _fmt_delta(0.0) == "+0.0000"
    assert _fmt_delta(0.25) == "+0.2500"

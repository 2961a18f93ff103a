"""Leak L7 through the policy CLI: `decide`, `policy explain` and `policy can` with the broader
purpose `social` or the broader category `user.name` are denied under the injunction."""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer
from typer.testing import CliRunner

from provguard.cli.policy import decide_cmd, policy_app

app = typer.Typer()
app.command("decide")(decide_cmd)
app.add_typer(policy_app, name="policy")
runner = CliRunner()
RULE1 = "no-platform-profile-in-friend-recommendation"
BASE = ["--app", "douyin", "--action", "use", "--origin", "wechat", "--at", "2019-06-01"]


def run(*args: str | Path) -> tuple[int, str]:
    res = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "400"})  # no wrapping
    return res.exit_code, res.output


def test_decide_denies_the_broader_purpose_and_category(injunction_path: Path) -> None:
    for category, purpose in [
        ("user.name.nickname", "social"),
        ("user.name", "social.friend_recommendation"),
        ("user", "social"),
    ]:
        code, out = run(
            "decide", *BASE, "--category", category, "--purpose", purpose,
            "--policy", injunction_path, "--json",
        )  # fmt: skip
        assert code == 1, out  # deny
        data = json.loads(out)
        assert data["effect"] == "deny"
        assert [r["rule"] for r in data["reasons"]] == [RULE1]
    # a sibling purpose is still not the injunction's business
    code, out = run(
        "decide", *BASE, "--category", "user.name.nickname", "--purpose", "social.messaging",
        "--policy", injunction_path, "--json",
    )  # fmt: skip
    assert code == 0 and json.loads(out)["effect"] == "not_applicable"


def test_explain_and_can_for_social(injunction_path: Path) -> None:
    code, out = run(
        "policy", "explain", *BASE, "--category", "user.name", "--purpose", "social",
        "--policy", injunction_path,
    )  # fmt: skip
    text = " ".join(out.split())
    assert code == 0 and "DENY" in text and RULE1 in text
    code, out = run(
        "policy", "explain", *BASE, "--category", "user.name", "--purpose", "social.messaging",
        "--policy", injunction_path,
    )  # fmt: skip
    text = " ".join(out.split())
    assert "is not covered by social.friend_recommendation and is not above" in text
    code, out = run(
        "policy", "can", "--app", "douyin", "--category", "user.name", "--origin", "qq",
        "--purpose", "social", "--policy", injunction_path,
    )  # fmt: skip
    assert code == 0, out
    assert re.search(rf"2019-03-20 .*deny \[{RULE1}\]", out)

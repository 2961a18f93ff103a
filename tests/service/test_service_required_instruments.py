"""A store's recorded instruments bind ``decide --store`` and ``serve --store`` as they bind
``provguard query`` (session 5's fresh user, I-5): pointing ``--policy`` at another valid bundle
answered ``not_applicable`` where the court order says deny."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from provguard.cli.policy import decide_cmd
from provguard.errors import InputError
from provguard.service.app import ServiceSettings, create_app

from .conftest import api_keys

REPO = Path(__file__).parents[2]
EXTRA = REPO / "policies" / "extra" / "pipl-art-15-withdrawal-of-consent.yaml"
cli = typer.Typer()
cli.command("decide")(decide_cmd)


@cli.command("version")
def _version() -> None:  # a second command keeps "decide" a subcommand
    """Nothing."""


ASK = [
    "decide", "--app", "douyin", "--action", "use", "--purpose",
    "social.friend_recommendation", "--category", "user.avatar", "--origin", "wechat",
    "--at", "2019-06-30",
]  # fmt: skip


def test_decide_store_refuses_a_policy_that_drops_a_recorded_instrument(store: Path) -> None:
    db = str(store / "control.db")
    dropped = CliRunner().invoke(cli, [*ASK, "--store", db, "--policy", str(EXTRA)])
    assert dropped.exit_code == 2, dropped.output
    flat = " ".join(dropped.output.split())
    assert "PG100" in flat and "cn-tj-binhai-2019-douyin-duoshan" in flat
    assert "NOT_APPLICABLE" not in dropped.output
    # the shipped folder (which holds it) decides as before
    kept = CliRunner().invoke(cli, [*ASK, "--store", db, "--policy", str(REPO / "policies")])
    assert kept.exit_code == 1 and "DENY" in kept.output  # exit 1: deny


def test_serve_refuses_a_policy_that_drops_a_recorded_instrument(store: Path) -> None:
    with pytest.raises(InputError, match="cn-tj-binhai-2019-douyin-duoshan"):
        create_app(ServiceSettings(store=store, policy=EXTRA, api_keys=api_keys()))

"""``provguard campaign``: start, dispatch, rescan after a revert, history of one target."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from provguard.adapters.platform_files import write_platform
from provguard.cli.campaign import campaign_app

from .conftest import Scanned

RULE = "duoshan-no-platform-profile"


def test_cli_start_dispatch_history(scanned: Scanned, tmp_path: Path) -> None:
    folder = tmp_path / "platform"
    write_platform(scanned.platform, folder)
    db, mail = tmp_path / "c.db", tmp_path / "mail.jsonl"
    run = CliRunner().invoke
    common = ["--store", str(db), "--campaign", "c1"]
    at = ["--at", "2019-07-01T00:00:00+00:00"]
    r = run(campaign_app, ["start", "--rule", RULE, "--platform", str(folder), *at, *common])
    assert r.exit_code == 0, r.output
    assert "added" in r.output
    r = run(campaign_app, ["dispatch", "--mailbox", str(mail), "--rate", "1000", *common])
    assert r.exit_code == 0, r.output
    first = json.loads(mail.read_text(encoding="utf-8").splitlines()[0])
    key = (first["app_id"], first["subject_id"], first["payload"]["provider"])
    args = ["--app", key[0], "--subject", str(key[1]), "--provider", key[2]]
    r = run(campaign_app, ["history", *args, *common])
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 2
    assert "-> pending" in lines[0] and "pending   -> notified" in lines[1]
    assert lines[1].rstrip().endswith(":notice:1")
    unknown = ["--app", "nope", "--subject", "1", "--provider", "x"]
    r = run(campaign_app, ["history", *unknown, *common])
    assert r.exit_code != 0 and "no target" in r.output

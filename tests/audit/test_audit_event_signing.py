"""Findings I-1: a writer of ``control.db`` without the signing key cannot end an instrument.

1. ``provguard query`` signs a checkpoint only over its own entry, never over entries someone
   else appended (they stay uncovered and are named on stderr).
2. With ``audit.pub`` beside the control store, an instrument event is applied only when its
   chained entry is covered by a signed checkpoint (else PG340); ``provguard instrument event``
   signs its own entry when the key is available."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import typer
from tests.cli.test_cli_query_audit import demo_like_store
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.adapters.control_sqlite import SqlControlStore
from provguard.audit.crosscheck import StoreChainMismatchError
from provguard.audit.folder import (
    PRIVATE_KEY_FILE,
    cover_own_entry,
    export_checkpoint,
    folder_signing_key,
)
from provguard.audit.signing import SignedCheckpoint, load_public_key, verify_signed_checkpoint
from provguard.cli.audit import audit_app
from provguard.cli.policy import decide_cmd, instrument_app
from provguard.cli.query import query_app
from provguard.policy import load_policy_dir

POLICIES = Path(__file__).parents[2] / "policies"
INJ = "cn-tj-binhai-2019-douyin-duoshan"
cli = typer.Typer()
cli.command("decide")(decide_cmd)
cli.add_typer(instrument_app, name="instrument")
runner = CliRunner()
DECIDE = [
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
    "2020-06-30T00:00:00Z",
    "--policy",
    str(POLICIES),
]


@pytest.fixture()
def job_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A job output folder in miniature, with the instruments saved in ``control.db`` and what
    ``provguard run`` leaves: ``audit-key.pem``, ``audit.pub`` and a checkpoint over the log."""
    monkeypatch.delenv("PROVGUARD_AUDIT_KEY", raising=False)
    demo_like_store(tmp_path)
    SqlControlStore(tmp_path / "control.db").save_bundles(load_policy_dir(POLICIES).bundles)
    key, _ = folder_signing_key(tmp_path)
    with SqliteAuditLog(tmp_path / "control.db", create=False) as log:
        export_checkpoint(log.sign_checkpoint(key), tmp_path)
    return tmp_path


def _forge(root: Path) -> int:
    """Findings I-1: the library, no key, a backdated final judgment; returns its entry's seq."""
    entry = SqlControlStore(root / "control.db").record_event(
        INJ, "final_judgment", date(2019, 4, 1), at=datetime(2019, 4, 1, 9, tzinfo=UTC)
    )
    return entry.seq


def _checkpoints(root: Path) -> list[SignedCheckpoint]:
    public = load_public_key(root / "audit.pub")
    with SqliteAuditLog(root / "control.db", create=False) as log:
        stored = log.signed_checkpoints()
    for signed in stored:
        verify_signed_checkpoint(signed, public)
    return stored


def _query(root: Path) -> tuple[int, str]:
    res = CliRunner().invoke(
        query_app,
        [
            "--app",
            "douyin",
            "--purpose",
            "profile.display",
            "--store",
            str(root / "data"),
            "--at",
            "2019-06-01",
            "--policy",
            str(POLICIES),
            "SELECT count(*) AS n FROM profiles",
        ],
    )
    return res.exit_code, " ".join(res.output.split())


def test_a_query_does_not_sign_a_forged_entry(job_folder: Path) -> None:
    before = max(c.count for c in _checkpoints(job_folder))
    forged = _forge(job_folder)
    assert forged == before + 1
    code, out = _query(job_folder)
    # the query runs, is recorded as the entry after the forged one, and nothing is signed
    assert f"audit entry #{forged} was written by someone else" in out, out
    assert f"entry #{forged + 1} is recorded but NOT signed" in out
    assert max(c.count for c in _checkpoints(job_folder)) == before
    exported = SignedCheckpoint.from_json((job_folder / "checkpoint.json").read_text("utf-8"))
    assert exported.count == before
    with SqliteAuditLog(job_folder / "control.db", create=False) as log:
        kinds = [e.kind for e in log.entries(start=forged)]
    assert kinds == ["instrument_event", "query"]
    # and the forged event itself is not applied (item 2): the query is refused
    assert code != 0 and "PG340" in out, out


def test_a_query_does_not_sign_any_foreign_entry(job_folder: Path) -> None:
    before = max(c.count for c in _checkpoints(job_folder))
    with SqliteAuditLog(job_folder / "control.db", create=False) as log:  # no key needed
        log.append_many([("transfer_audit", {"effect": "permit"})] * 2)
    code, out = _query(job_folder)
    assert code == 0, out
    assert f"audit entries #{before + 1}–#{before + 2} were written by someone else" in out
    assert max(c.count for c in _checkpoints(job_folder)) == before
    strict = CliRunner().invoke(
        audit_app, ["verify", "--log", str(job_folder / "control.db"), "--require-signed"]
    )
    assert strict.exit_code != 0, strict.output


def test_a_query_signs_its_own_entry_when_all_before_is_covered(job_folder: Path) -> None:
    before = max(c.count for c in _checkpoints(job_folder))
    code, out = _query(job_folder)
    assert code == 0, out
    assert f"audit: signed checkpoint at entry #{before + 1}" in out
    code, out = _query(job_folder)
    assert f"audit: signed checkpoint at entry #{before + 2}" in out
    assert max(c.count for c in _checkpoints(job_folder)) == before + 2


def test_cover_own_entry_signs_only_up_to_its_entry_and_names_the_span(
    job_folder: Path,
) -> None:
    with SqliteAuditLog(job_folder / "control.db", create=False) as log:
        start = log.count()
        own = log.append("query", {"outcome": "rows"})
        log.append("query", {"outcome": "rows"})  # appended after ours, by someone else
        cov = cover_own_entry(log, job_folder, own)
        assert cov.signed is not None and cov.signed.count == own.seq == start + 1
        assert cov.signed.head_hash == own.hash
        a = log.append("job", {"stage": "x"})
        b = log.append("job", {"stage": "y"})
        mine = log.append("query", {"outcome": "rows"})
        cov = cover_own_entry(log, job_folder, mine)
    # #start+2 (appended after our first entry) and a, b are all someone else's
    assert cov.signed is None and cov.foreign == (start + 2, b.seq)
    assert a.seq == start + 3
    assert f"audit entries #{start + 2}–#{b.seq} were written by someone else" in cov.message()


def test_the_forged_event_is_refused_with_pg340(job_folder: Path) -> None:
    forged = _forge(job_folder)
    with pytest.raises(StoreChainMismatchError) as info:
        SqlControlStore(job_folder / "control.db").events()
    assert info.value.code == "PG340"
    text = str(info.value)
    assert f"{INJ}/final_judgment on 2019-04-01 (audit entry #{forged})" in text
    assert "not covered by a signed checkpoint" in text
    res = runner.invoke(cli, [*DECIDE, "--store", str(job_folder / "control.db")])
    assert res.exit_code != 0 and "PG340" in res.output, res.output
    # the next query does not launder it
    _query(job_folder)
    with pytest.raises(StoreChainMismatchError):
        SqlControlStore(job_folder / "control.db").events()


def test_without_audit_pub_behaviour_is_unchanged(tmp_path: Path) -> None:
    db = tmp_path / "control.db"
    SqlControlStore(db).save_bundles(load_policy_dir(POLICIES).bundles)
    SqlControlStore(db).record_event(INJ, "final_judgment", date(2020, 1, 1))
    assert SqlControlStore(db).events() == {(INJ, "final_judgment"): date(2020, 1, 1)}


def test_the_cli_event_is_signed_and_ends_the_order(job_folder: Path) -> None:
    db = job_folder / "control.db"
    assert runner.invoke(cli, [*DECIDE, "--store", str(db)]).output.split()[0] == "DENY"
    res = runner.invoke(
        cli,
        [
            "instrument",
            "event",
            "final_judgment",
            "--instrument",
            INJ,
            "--date",
            "2020-01-01",
            "--store",
            str(db),
            "--policy",
            str(POLICIES),
        ],
    )
    assert res.exit_code == 0, res.output
    with SqliteAuditLog(db, create=False) as log:
        head = log.count()
    assert f"audit: signed checkpoint at entry #{head}" in res.output
    assert SqlControlStore(db).events() == {(INJ, "final_judgment"): date(2020, 1, 1)}
    out = runner.invoke(cli, [*DECIDE, "--store", str(db)])
    assert out.exit_code == 0 and out.output.split()[0] == "NOT_APPLICABLE", out.output


def test_the_cli_event_without_the_key_is_recorded_but_not_applied(job_folder: Path) -> None:
    (job_folder / PRIVATE_KEY_FILE).unlink()
    db = job_folder / "control.db"
    res = runner.invoke(
        cli,
        [
            "instrument",
            "event",
            "final_judgment",
            "--instrument",
            INJ,
            "--date",
            "2020-01-01",
            "--store",
            str(db),
            "--policy",
            str(POLICIES),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "no signing key" in " ".join(res.output.split())
    with pytest.raises(StoreChainMismatchError, match="not covered by a signed checkpoint"):
        SqlControlStore(db).events()

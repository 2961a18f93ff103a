"""``campaign start`` on a job store refuses a ``--policy-dir`` that lacks or edits the bundle
files the job enforced (PG103, as ``query`` / ``serve``), and records the policy's digest in its
``campaign.start`` entry (fresh user 12, L4: an edited bundle, ``origins: [apple]``, gave a
chained, signed 0-target campaign of the order's Duoshan rule)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.audit.enforced import policy_digest
from provguard.cli.campaign import campaign_app
from provguard.policy import load_policy_dir

RULE = "duoshan-no-platform-profile"
BUNDLE = "cn-tj-binhai-2019-douyin-duoshan.yaml"
runner = CliRunner()


def _count(db: Path) -> tuple[int, int]:
    with sqlite3.connect(db) as con:
        entries = con.execute("SELECT count(*) FROM audit_log").fetchone()[0]
        camps = con.execute("SELECT count(*) FROM campaigns").fetchone()[0]
    return int(entries), int(camps)


def _start(folder: Path, policy_dir: Path, campaign: str) -> tuple[int, str]:
    r = runner.invoke(
        campaign_app,
        [
            "start",
            "--rule",
            RULE,
            "--store",
            str(folder / "control.db"),
            "--platform",
            str(folder / "platform"),
            "--campaign",
            campaign,
            "--policy-dir",
            str(policy_dir),
            "--at",
            "2019-06-30",
        ],
    )
    return r.exit_code, r.output


def test_an_edited_bundle_is_refused_and_nothing_written(
    folder: Path, tmp_path: Path, repo_root: Path
) -> None:
    lax = tmp_path / "lax"
    lax.mkdir()
    text = (repo_root / "policies" / BUNDLE).read_text(encoding="utf-8")
    assert "origins: [wechat, qq]" in text
    (lax / "cn.yaml").write_text(
        text.replace("origins: [wechat, qq]", "origins: [apple]"), encoding="utf-8"
    )
    before = _count(folder / "control.db")
    code, out = _start(folder, lax, "lax1")
    assert code != 0 and "[PG103]" in out, out
    assert BUNDLE in out or "missing or edited" in out
    assert _count(folder / "control.db") == before


def test_a_bundle_folder_lacking_the_order_is_refused(
    folder: Path, tmp_path: Path, repo_root: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "internal.yaml").write_text(
        "instrument: {id: acme-internal, kind: internal_policy, issuer: acme,"
        " effective_from: 2019-01-01}\n"
        "rules:\n"
        "  - id: no-apple-in-ads\n"
        "    effect: deny\n"
        "    actions: [use]\n"
        "    purposes: [marketing.advertising]\n"
        "    apps: [douyin, duoshan]\n"
        "    data: {categories: [user.avatar], origins: [apple]}\n",
        encoding="utf-8",
    )
    before = _count(folder / "control.db")
    code, out = _start(folder, other, "other1")
    assert code != 0 and "[PG103]" in out, out
    assert _count(folder / "control.db") == before


def test_the_enforced_policy_is_accepted_and_its_digest_recorded(
    folder: Path, repo_root: Path
) -> None:
    policies = repo_root / "policies"
    code, out = _start(folder, policies, "again")
    assert code == 0, out
    with SqliteAuditLog(folder / "control.db", create=False) as log:
        entry = max(log.entries(kind="campaign.start"), key=lambda e: e.seq)
    assert entry.payload["campaign_id"] == "again"
    assert entry.payload["policy_digest"] == policy_digest(load_policy_dir(policies))
    assert entry.payload["targets"] > 0

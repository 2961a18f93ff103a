"""Session 6: the grant registry (``grants.db``) against the audit chain's ``grant.*`` events.

The registry writes each change and its outbox event in one transaction; the outbox is appended
to the audit chain (``flush_outbox``). ``provguard audit verify`` now compares
``oauth_grants`` with the chained ``grant.login`` (provider, app, scopes, and the status with
the chained revocation) and ``revocation_jobs`` with ``grant.revocation_opened`` /
``grant.purged``: a hand edit of the registry (a purged grant made active again, a deadline
moved to hide a late purge, a revocation deleted) fails with PG340.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.adapters.control_sqlite import check_registry
from provguard.adapters.grant_store import SqlGrantStore
from provguard.audit.crosscheck import VerifiedRange
from provguard.audit.folder import export_checkpoint, folder_signing_key
from provguard.cli.audit import audit_app
from provguard.clock import FixedClock
from provguard.grants.crypto import TokenCipher, generate_key
from provguard.grants.model import GrantRecord, IssuedToken
from provguard.grants.revocation import RevocationCascade
from provguard.grants.service import flush_outbox

T0 = datetime(2019, 6, 1, tzinfo=UTC)
runner = CliRunner()


def _build_registry(root: Path, prefix: str = "g") -> None:
    """(Re)create ``root/grants.db`` as the job does on every run: three sign-ins and three
    revocations (purged on time, purged late, still quarantined), the outbox appended to the
    chain in ``root/control.db``, then the run's closing ``campaign`` entry."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{root / 'grants.db'}{suffix}").unlink(missing_ok=True)
    clock = FixedClock(T0)
    store = SqlGrantStore(root / "grants.db", TokenCipher(generate_key()))
    for i in range(3):
        g = GrantRecord(f"{prefix}{i}", "wechat", "douyin", f"o{i}", f"u{i}", "snsapi_userinfo", T0)
        store.record_login(
            g, [IssuedToken("app_session", f"tok-{i}", T0 + timedelta(days=1))], [], T0
        )
    cascade = RevocationCascade(store, clock=clock, purge_within=timedelta(days=15))
    on_time = cascade.revoke(
        f"{prefix}0", reason="authorization_revoked", source="wechat.notification"
    )
    late = cascade.revoke(f"{prefix}1", reason="client_revoked", source="rfc7009")
    cascade.revoke(f"{prefix}2", reason="account_deleted", source="wechat.notification")
    clock.advance(3 * 86400)
    cascade.purge(on_time)
    clock.advance(20 * 86400)
    cascade.purge(late)
    with SqliteAuditLog(root / "control.db", clock=FixedClock(T0)) as log:
        assert flush_outbox(store, log) > 0
        # the run's closing entry (no campaign id: no campaigns row to cross-check here)
        log.append("campaign", {"run": prefix})
    store.close()


@pytest.fixture()
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder after one job run's grants stage."""
    monkeypatch.delenv("PROVGUARD_AUDIT_KEY", raising=False)
    root = tmp_path / "out"
    root.mkdir()
    _build_registry(root)
    return root


def _verify(root: Path, *args: str) -> tuple[int, str]:
    r = runner.invoke(audit_app, ["verify", "--log", str(root / "control.db"), *args])
    return r.exit_code, " ".join(r.output.split())


def _sql(db: Path, statement: str) -> None:
    con = sqlite3.connect(db)
    con.execute(statement)
    con.commit()
    con.close()


def test_an_untampered_registry_matches_the_chain(folder: Path) -> None:
    code, out = _verify(folder)
    assert code == 0, out
    assert "cross-check oauth_grants: 3 rows, 3 match the chain, 0 discrepancies" in out
    assert "cross-check revocation_jobs: 3 rows, 3 match the chain, 0 discrepancies" in out
    n = SqliteAuditLog(folder / "control.db", create=False).count()
    assert n == 18  # the registry's 17 outbox events and the run's closing entry
    res = check_registry(folder / "grants.db", folder / "control.db", verified=VerifiedRange(1, n))
    assert res.ok and [t.table for t in res.tables] == [
        "oauth_grants",
        "revocation_jobs",
        "recipient_first_use",
        "separate_consents",
        "oauth_tokens",
        "transfer_attempts",
    ]
    # with the folder's key and a signed checkpoint, every entry compared is signed
    key, _ = folder_signing_key(folder)
    with SqliteAuditLog(folder / "control.db", create=False) as log:
        export_checkpoint(log.sign_checkpoint(key), folder)
    code, out = _verify(folder, "--require-signed")
    assert code == 0, out
    assert "oauth_grants: 3 rows, 3 match the chain, 0 discrepancies; every chained" in out


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        # a purged grant made usable again
        (
            "UPDATE oauth_grants SET status='active' WHERE grant_id='g0'",
            "oauth_grants[g0].status: table has 'active'",
        ),
        # the purge deadline of the late purge moved to hide the lateness
        (
            "UPDATE revocation_jobs SET purge_by='2019-07-30 00:00:00.000000+00:00' "
            "WHERE grant_id='g1'",
            ".purge_by: table has '2019-07-30T00:00:00+00:00', entry #",
        ),
        # a revocation deleted from the registry
        ("DELETE FROM revocation_jobs WHERE grant_id='g2'", ".grant_id: table has nothing"),
        # scopes widened by hand
        (
            "UPDATE oauth_grants SET scopes='snsapi_userinfo snsapi_friends' WHERE grant_id='g2'",
            "oauth_grants[g2].scopes",
        ),
        # a grant inserted without a sign-in
        (
            "INSERT INTO oauth_grants VALUES ('g9','qq','douyin','o9','u9','get_user_info',"
            "'2019-06-01 00:00:00.000000+00:00','active')",
            "oauth_grants[g9].provider: table has 'qq', the chain has nothing",
        ),
        # a quarantined job marked purged with no purge in the chain
        (
            "UPDATE revocation_jobs SET state='purged' WHERE grant_id='g2'",
            ".state: table has 'purged', the chain has nothing",
        ),
    ],
)
def test_a_hand_edit_of_the_registry_fails(folder: Path, statement: str, expected: str) -> None:
    _sql(folder / "grants.db", statement)
    code, out = _verify(folder)
    assert code == 1, out
    assert "[PG340]" in out and expected in out
    assert "chain intact" in out  # the chain itself is untouched


def test_the_registry_named_elsewhere_and_left_out(folder: Path, tmp_path: Path) -> None:
    moved = tmp_path / "registry.db"
    (folder / "grants.db").rename(moved)
    code, out = _verify(folder)
    assert code == 0 and "oauth_grants" not in out  # no registry beside the log: not checked
    _sql(moved, "UPDATE oauth_grants SET status='active' WHERE grant_id='g1'")
    code, out = _verify(folder, "--grant-db", str(moved))
    assert code == 1 and "oauth_grants[g1].status" in out
    # a registry path with no file: PG200, exit 2, and no empty database is created
    missing = tmp_path / "nowhere.db"
    r = runner.invoke(
        audit_app, ["verify", "--log", str(folder / "control.db"), "--grant-db", str(missing)]
    )
    assert r.exit_code == 2 and "[PG200] no grant registry at" in " ".join(r.output.split())
    assert not missing.exists()


def test_a_rerun_recreates_the_registry_and_still_verifies(folder: Path) -> None:
    """``provguard run`` over the same folder recreates grants.db (new ids): the first run's
    grant events have no rows any more and are not discrepancies; the current registry's are
    still checked both ways."""
    key, _ = folder_signing_key(folder)
    with SqliteAuditLog(folder / "control.db", create=False) as log:
        export_checkpoint(log.sign_checkpoint(key), folder)
    _build_registry(folder, prefix="h")
    with SqliteAuditLog(folder / "control.db", create=False) as log:
        export_checkpoint(log.sign_checkpoint(key), folder)
    code, out = _verify(folder)
    assert code == 0, out
    assert "cross-check oauth_grants: 3 rows, 3 match the chain, 0 discrepancies" in out
    # a row of the current registry deleted: caught
    _sql(folder / "grants.db", "DELETE FROM oauth_grants WHERE grant_id='h2'")
    code, out = _verify(folder)
    assert code == 1 and "oauth_grants[h2].provider: table has nothing, entry #" in out
    # a forged run boundary appended without the key does not hide it
    with SqliteAuditLog(folder / "control.db", create=False) as log:
        log.append("campaign", {"run": "forged"})
    code, out = _verify(folder)
    assert code == 1 and "oauth_grants[h2].provider: table has nothing" in out

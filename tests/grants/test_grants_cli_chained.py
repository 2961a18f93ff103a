"""``provguard grants consent`` / ``withdraw`` / ``purge-due`` / ``relay`` chain the registry's
events into the control store beside ``--db`` (fresh user 12, M5: the README's consent made
``audit verify`` fail with PG340 and ``report --store`` withhold section 3a).

Every test runs on a copy of a real job folder (the main job on 600 lines of ego-Facebook)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.adapters.control_sqlite import check_registry
from provguard.adapters.grant_store import SqlGrantStore
from provguard.audit.crosscheck import CrossCheckResult, VerifiedRange
from provguard.cli.audit import audit_app
from provguard.cli.grants import grants_app
from provguard.grants import TokenCipher
from provguard.grants.relay import control_store_for
from provguard.report.from_store import build_model_from_store

runner = CliRunner()
#: the README's consent command, after GRANT_ID RECIPIENT
README_CONSENT = [
    "--purpose",
    "account",
    "--method",
    "account_link",
    "--category",
    "user",
    "--evidence",
    "consent screen v3",
]


def _copy_db(src: Path, dst: Path) -> None:
    """Copy a SQLite database with what its write-ahead log holds (the backup API)."""
    for suffix in ("-wal", "-shm"):
        Path(f"{dst}{suffix}").unlink(missing_ok=True)
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    a.close()
    b.close()


def _registry(folder: Path) -> SqlGrantStore:
    return SqlGrantStore(folder / "grants.db", TokenCipher.from_env_or_file(folder / "token.key"))


def _active_grant(folder: Path) -> str:
    return sorted(g.grant_id for g in _registry(folder).grants("active"))[0]


def _grants(folder: Path, *args: str, db: Path | None = None) -> tuple[int, str]:
    r = runner.invoke(
        grants_app,
        [*args, "--db", str(db or folder / "grants.db"), "--key-file", str(folder / "token.key")],
    )
    return r.exit_code, " ".join(r.output.split())


def _verify(folder: Path) -> tuple[int, str]:
    r = runner.invoke(audit_app, ["verify", "--log", str(folder / "control.db")])
    return r.exit_code, " ".join(r.output.split())


def _check(folder: Path) -> CrossCheckResult:
    n = SqliteAuditLog(folder / "control.db", create=False).count()
    return check_registry(folder / "grants.db", folder / "control.db", verified=VerifiedRange(1, n))


def _consents(res: CrossCheckResult) -> tuple[int, int, int]:
    (t,) = [t for t in res.tables if t.table == "separate_consents"]
    return t.rows, t.matched, len(t.discrepancies)


def _outbox_states(folder: Path) -> list[tuple[str, str]]:
    con = sqlite3.connect(folder / "grants.db")
    rows = con.execute(
        "SELECT kind, state FROM grant_outbox WHERE kind LIKE 'grant.%consent%' ORDER BY seq"
    ).fetchall()
    con.close()
    return [(str(k), str(s)) for k, s in rows]


def _last(folder: Path) -> tuple[int, str, dict[str, object]]:
    log = SqliteAuditLog(folder / "control.db", create=False)
    try:
        head = log.head()
        assert head is not None
        signed = max(c.count for c in log.signed_checkpoints())
        return signed, head.kind, dict(head.payload) | {"seq": head.seq}
    finally:
        log.close()


def test_readme_consent_and_withdraw_are_chained_signed_and_verify_clean(folder: Path) -> None:
    gid = _active_grant(folder)
    before = SqliteAuditLog(folder / "control.db", create=False).count()
    code, out = _grants(folder, "consent", gid, "duoshan", *README_CONSENT)
    assert code == 0, out
    assert f"chained into {folder / 'control.db'}: #{before + 1} grant.separate_consent" in out
    assert f"signed checkpoint at entry #{before + 1}" in out
    signed, kind, payload = _last(folder)
    (consent,) = _registry(folder).consent_records(gid)
    assert (kind, payload["seq"], signed) == ("grant.separate_consent", before + 1, before + 1)
    assert payload["consent"] == consent.consent_id and payload["evidence"] == "consent screen v3"
    assert _outbox_states(folder) == [("grant.separate_consent", "sent")]
    assert _consents(_check(folder)) == (1, 1, 0)
    code, out = _verify(folder)
    assert code == 0, out
    assert "cross-check separate_consents: 1 rows, 1 match the chain, 0 discrepancies" in out
    assert build_model_from_store(folder).sign_ins is not None  # section 3a is kept

    code, out = _grants(folder, "withdraw", gid, "duoshan")
    assert code == 0, out
    assert f"#{before + 2} grant.consent_withdrawn" in out
    signed, kind, payload = _last(folder)
    assert (kind, payload["seq"], signed) == ("grant.consent_withdrawn", before + 2, before + 2)
    assert _outbox_states(folder)[-1] == ("grant.consent_withdrawn", "sent")
    assert _consents(_check(folder)) == (1, 1, 0)
    code, out = _verify(folder)
    assert code == 0, out
    assert build_model_from_store(folder).sign_ins is not None


def test_a_consent_row_inserted_by_hand_is_still_a_discrepancy(folder: Path) -> None:
    gid = _active_grant(folder)
    con = sqlite3.connect(folder / "grants.db")
    con.execute(
        "INSERT INTO separate_consents (grant_id, recipient, given_at, evidence, consent_id, "
        "purposes, method, categories) VALUES (?, 'duoshan', '2022-01-05 00:00:00.000000', "
        "'forged', 'c-forged', '[\"account\"]', 'account_link', '[\"user\"]')",
        (gid,),
    )
    con.commit()
    con.close()
    # a relay chains pending registry events only: the forged row has none
    code, out = _grants(folder, "relay")
    assert code == 0 and "no pending registry event" in out, out
    assert _consents(_check(folder)) == (1, 0, 1)
    code, out = _verify(folder)
    assert code == 1 and "PG340" in out and f"separate_consents[{gid}/duoshan].given_at" in out


def test_an_outbox_row_inserted_by_hand_is_chained_as_rejected(folder: Path) -> None:
    gid = _active_grant(folder)
    con = sqlite3.connect(folder / "grants.db")
    cols = [r[1] for r in con.execute("PRAGMA table_info(grant_outbox)")]
    seq = con.execute("SELECT max(seq) FROM grant_outbox").fetchone()[0] or 0
    values = {
        "seq": seq + 1,
        "event_id": "evt-forged",
        "kind": "grant.separate_consent",
        "payload": f'{{"grant": "{gid}", "recipient": "duoshan", "consent": "c-x"}}',
        "state": "new",
        "created_at": "2026-01-01 00:00:00.000000",
    }
    con.execute(
        f"INSERT INTO grant_outbox ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
        list(values.values()),
    )
    con.commit()
    con.close()
    assert {"seq", "event_id", "kind", "payload", "state"} <= set(cols)
    code, out = _grants(folder, "consent", gid, "duoshan", *README_CONSENT)
    assert code == 0, out
    assert "grant.outbox_rejected" in out and "grant.separate_consent" in out
    assert _consents(_check(folder)) == (1, 1, 0)  # the genuine consent, not the forged event


def test_a_registry_without_its_control_store_says_so_and_relay_chains_later(
    folder: Path, tmp_path: Path
) -> None:
    gid = _active_grant(folder)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _copy_db(folder / "grants.db", elsewhere / "grants.db")
    assert control_store_for(str(elsewhere / "grants.db")) is None
    code, out = _grants(
        folder, "consent", gid, "duoshan", *README_CONSENT, db=elsewhere / "grants.db"
    )
    assert code == 0, out
    assert "warning: no control store (control.db) beside" in out
    assert "1 registry event(s) stay unchained" in out and "grants relay" in out
    # the finding's state: the registry back in its folder, its consent event unchained
    _copy_db(elsewhere / "grants.db", folder / "grants.db")
    assert _outbox_states(folder) == [("grant.separate_consent", "new")]
    code, out = _verify(folder)
    assert code == 1 and "PG340" in out and "the chain has nothing" in out
    code, out = _grants(folder, "relay", db=elsewhere / "grants.db")
    assert code == 2 and "PG200" in out and "--store" in out  # no control store there
    code, out = _grants(folder, "relay")
    assert code == 0 and "grant.separate_consent" in out, out
    code, out = _verify(folder)
    assert code == 0, out
    # relaying twice appends nothing (each event once)
    n = SqliteAuditLog(folder / "control.db", create=False).count()
    code, out = _grants(folder, "relay")
    assert code == 0 and "no pending registry event" in out
    assert SqliteAuditLog(folder / "control.db", create=False).count() == n


def test_store_option_names_the_control_store_and_is_checked_before_writing(
    folder: Path, tmp_path: Path
) -> None:
    gid = _active_grant(folder)
    empty = tmp_path / "no-store"
    empty.mkdir()
    code, out = _grants(folder, "consent", gid, "duoshan", *README_CONSENT, "--store", str(empty))
    assert code == 2 and "PG200" in out and "no control store" in out
    assert _registry(folder).consent_records(gid) == []  # nothing recorded
    # a registry elsewhere may not chain into this folder's control store (PG101, fresh user
    # 13 M3): its events belong to the registry's own folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _copy_db(folder / "grants.db", elsewhere / "grants.db")
    store = ["--store", str(folder / "control.db")]
    code, out = _grants(
        folder, "consent", gid, "duoshan", *README_CONSENT, *store, db=elsewhere / "grants.db"
    )
    assert code == 2 and "PG101" in out, out
    # the registry's own folder, named explicitly (as a file)
    code, out = _grants(folder, "consent", gid, "duoshan", *README_CONSENT, *store)
    assert code == 0 and "grant.separate_consent" in out, out
    code, out = _verify(folder)
    assert code == 0, out


def test_without_the_signing_key_the_entry_is_chained_and_the_command_says_unsigned(
    folder: Path,
) -> None:
    (folder / "audit-key.pem").unlink()
    gid = _active_grant(folder)
    code, out = _grants(folder, "consent", gid, "duoshan", *README_CONSENT)
    assert code == 0, out
    assert "grant.separate_consent" in out and "no signing key" in out
    code, out = _verify(folder)
    # the consent is in the chain; only its signature is missing
    assert code == 1 and "the chain has nothing" not in out


def test_purge_due_chains_its_purge_events(folder: Path) -> None:
    registry = _registry(folder)
    gid = _active_grant(folder)
    from datetime import timedelta

    from provguard.grants import RevocationCascade

    before = SqliteAuditLog(folder / "control.db", create=False).count()
    # a revocation with an immediate deadline, recorded by the cascade (its events: outbox)
    RevocationCascade(registry, purge_within=timedelta(0)).revoke(gid, reason="r", source="cli")
    code, out = _grants(folder, "purge-due")
    assert code == 0 and "jobs purged or resumed: 1" in out, out
    assert "chained into" in out
    log = SqliteAuditLog(folder / "control.db", create=False)
    kinds = [e.kind for e in log.entries(start=before + 1)]
    log.close()
    # the revocation's events (written in-process, still pending) and the purge's, in order
    assert kinds[0] == "grant.revocation_opened" and kinds[-1] == "grant.purged", kinds
    assert "grant.quarantined" in kinds
    assert not [s for s in _all_outbox_states(folder) if s == "new"]
    code, out = _verify(folder)
    assert code == 0, out


def _all_outbox_states(folder: Path) -> list[str]:
    con = sqlite3.connect(folder / "grants.db")
    rows = con.execute("SELECT state FROM grant_outbox").fetchall()
    con.close()
    return [str(r[0]) for r in rows]

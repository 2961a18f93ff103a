"""Fresh user 13, M3: ``grants consent / withdraw / purge-due --store`` accept only the grant
registry's own folder (the folder holding ``--db``); a foreign control store is refused with
PG101 before anything is written, in the registry or in either audit log.

Runs on copies of a real job folder (the main job on 600 lines of ego-Facebook)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.adapters.grant_store import SqlGrantStore
from provguard.cli.audit import audit_app
from provguard.cli.grants import grants_app
from provguard.errors import ControlStoreMismatchError
from provguard.grants import TokenCipher
from provguard.grants.crypto import KEY_ENV
from provguard.grants.relay import owned_control_store

runner = CliRunner()
CONSENT = [
    "--purpose",
    "account",
    "--method",
    "account_link",
    "--category",
    "user",
    "--evidence",
    "consent screen v3",
]


@pytest.fixture
def folders(
    small_job_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, Path]:
    """Two copies: the registry's own folder and a foreign one (its own control store)."""
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv("PROVGUARD_AUDIT_KEY", raising=False)
    own, foreign = tmp_path / "own", tmp_path / "foreign"
    shutil.copytree(small_job_folder, own)
    shutil.copytree(small_job_folder, foreign)
    return own, foreign


def _registry(folder: Path) -> SqlGrantStore:
    return SqlGrantStore(folder / "grants.db", TokenCipher.from_env_or_file(folder / "token.key"))


def _grants(folder: Path, *args: str) -> tuple[int, str]:
    r = runner.invoke(
        grants_app,
        [*args, "--db", str(folder / "grants.db"), "--key-file", str(folder / "token.key")],
    )
    return r.exit_code, " ".join(r.output.split())


def _count(folder: Path) -> int:
    with SqliteAuditLog(folder / "control.db", create=False) as log:
        return log.count()


def _outbox(folder: Path) -> list[tuple[int, str, str]]:
    con = sqlite3.connect(folder / "grants.db")
    rows = con.execute("SELECT seq, kind, state FROM grant_outbox ORDER BY seq").fetchall()
    con.close()
    return [(int(a), str(b), str(c)) for a, b, c in rows]


def test_foreign_store_is_refused_before_anything_is_written(folders: tuple[Path, Path]) -> None:
    own, foreign = folders
    gid = sorted(g.grant_id for g in _registry(own).grants("active"))[0]
    counts, outbox = (_count(own), _count(foreign)), _outbox(own)
    for store in (foreign, foreign / "control.db"):
        code, out = _grants(own, "consent", gid, "duoshan", *CONSENT, "--store", str(store))
        assert code == 2, out
        assert "[PG101]" in out and "is not the control store of the registry" in out
    assert _registry(own).consent_records(gid) == []
    code, out = _grants(own, "withdraw", gid, "duoshan", "--store", str(foreign))
    assert code == 2 and "[PG101]" in out
    code, out = _grants(own, "purge-due", "--store", str(foreign))
    assert code == 2 and "[PG101]" in out
    assert (_count(own), _count(foreign)) == counts and _outbox(own) == outbox
    # the registry's own folder, named as the folder, its control.db, or a path through ..
    through = foreign / ".." / own.name
    code, out = _grants(own, "consent", gid, "duoshan", *CONSENT, "--store", str(through))
    assert code == 0 and "grant.separate_consent" in out, out
    assert _count(own) == counts[0] + 1 and _count(foreign) == counts[1]
    code, out = _grants(own, "withdraw", gid, "duoshan", "--store", str(own / "control.db"))
    assert code == 0, out
    r = runner.invoke(audit_app, ["verify", "--log", str(own / "control.db")])
    assert r.exit_code == 0, r.output


def test_owned_control_store_rules(folders: tuple[Path, Path]) -> None:
    own, foreign = folders
    db = str(own / "grants.db")
    assert owned_control_store(db) == own / "control.db"
    assert owned_control_store(db, own) == own / "control.db"
    assert owned_control_store(f"sqlite:///{db}", own / "control.db") == own / "control.db"
    with pytest.raises(ControlStoreMismatchError) as info:
        owned_control_store(db, foreign)
    assert info.value.code == "PG101"
    assert info.value.given == str((foreign / "control.db").resolve())
    with pytest.raises(ControlStoreMismatchError, match="not a SQLite file"):
        owned_control_store("postgresql+psycopg://postgres@127.0.0.1:55432/x", own)

"""Session 6: the service and ``keys revoke --store`` sign their own entries, and only those.

* ``provguard serve`` without ``--signing-key`` on a job folder signs its own entries with the
  folder's key (``audit-key.pem`` / ``$PROVGUARD_AUDIT_KEY``, matching ``audit.pub``): at
  shutdown, and on ``POST /v1/audit/checkpoints``; so ``audit verify --require-signed`` passes
  after it without an explicit ``audit checkpoint export``.
* The endpoint and the writer never sign over entries someone else appended that no signed
  checkpoint covers: 409 PG331 (before: the whole head was signed).
* ``provguard keys revoke --store`` signs its own ``api_key.revoked`` entry the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.audit.folder import (
    CHECKPOINT_FILE,
    PRIVATE_KEY_FILE,
    export_checkpoint,
    folder_signing_key,
)
from provguard.audit.signing import SignedCheckpoint, key_id
from provguard.cli.audit import audit_app
from provguard.cli.serve import keys_app
from provguard.service import ServiceSettings, create_app
from provguard.service.auth import ApiKeys, Client

from .conftest import DENY_BODY, api_keys, build_small_store, hdr

ROOT = Path(__file__).parents[2]
runner = CliRunner()


@pytest.fixture()
def job_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A small output folder as ``provguard run`` leaves it: key, audit.pub, a checkpoint over
    the whole log, stored and exported."""
    monkeypatch.delenv("PROVGUARD_AUDIT_KEY", raising=False)
    root = tmp_path / "out"
    build_small_store(root, ROOT / "policies")
    key, _ = folder_signing_key(root)
    with SqliteAuditLog(root / "control.db", create=False) as log:
        export_checkpoint(log.sign_checkpoint(key), root)
    yield root


def _verify(root: Path, *args: str) -> tuple[int, str]:
    r = runner.invoke(audit_app, ["verify", "--log", str(root / "control.db"), *args])
    return r.exit_code, " ".join(r.output.split())


def _settings(root: Path, **kw: object) -> ServiceSettings:
    return ServiceSettings(store=root, policy=ROOT / "policies", api_keys=api_keys(), **kw)  # type: ignore[arg-type]


def test_serve_signs_its_own_entries_with_the_folder_key(job_folder: Path) -> None:
    head_before = SqliteAuditLog(job_folder / "control.db", create=False).count()
    with TestClient(create_app(_settings(job_folder))) as c:
        for _ in range(3):
            assert c.post("/v1/decisions", json=DENY_BODY, headers=hdr("douyin")).status_code == 200
        r = c.post("/v1/audit/checkpoints", headers=hdr("auditor"))
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["count"] == head_before + 3
        folder_key, _ = folder_signing_key(job_folder)
        assert doc["key_id"] == key_id(folder_key.public_key())
        # exported too: checkpoint.json now names the service's entry
        exported = SignedCheckpoint.from_json((job_folder / CHECKPOINT_FILE).read_text())
        assert exported.count == head_before + 3
        c.post("/v1/decisions", json=DENY_BODY, headers=hdr("douyin"))
    # the shutdown signed the last one: every entry is covered, without an explicit export
    code, out = _verify(job_folder, "--require-signed")
    assert code == 0, out
    assert f"every entry (#1–#{head_before + 4}) is covered" in out


def test_the_endpoint_refuses_to_sign_over_someone_elses_entries(job_folder: Path) -> None:
    db = job_folder / "control.db"
    with SqliteAuditLog(db, create=False) as log:  # the library, no key: I-1's forger
        forged = log.append("instrument_event", {"forged": True})
    folder_key = job_folder / PRIVATE_KEY_FILE
    # with the key given explicitly as well as found beside the store: the same refusal
    for settings in (_settings(job_folder), _settings(job_folder, signing_key=folder_key)):
        with TestClient(create_app(settings)) as c:
            assert c.post("/v1/decisions", json=DENY_BODY, headers=hdr("douyin")).status_code == 200
            r = c.post("/v1/audit/checkpoints", headers=hdr("auditor"))
            assert r.status_code == 409, r.text
            err = r.json()["error"]
            assert err["code"] == "PG331"
            # the forged entry first (on the second run, the first run's unsigned entry too)
            assert (
                f" #{forged.seq}" in err["message"]
                and "written by someone else" in (err["message"])
            )
            health = c.get("/healthz").json()["audit"]
            assert health["checkpoints"] == 0
    with SqliteAuditLog(db, create=False) as log:
        assert max(cp.count for cp in log.signed_checkpoints()) == forged.seq - 1
    code, out = _verify(job_folder, "--require-signed")
    assert code == 1 and "[PG330]" in out and f"#{forged.seq}" in out


def test_no_key_at_hand_means_nothing_is_signed(job_folder: Path) -> None:
    with TestClient(create_app(_settings(job_folder, sign_with_folder_key=False))) as c:
        c.post("/v1/decisions", json=DENY_BODY, headers=hdr("douyin"))
        r = c.post("/v1/audit/checkpoints", headers=hdr("auditor"))
        assert r.status_code == 409 and r.json()["error"]["code"] == "PG540"
    code, out = _verify(job_folder, "--require-signed")
    assert code == 1 and "[PG330]" in out


def test_the_endpoint_before_any_entry_of_its_own(job_folder: Path) -> None:
    keys = ApiKeys()
    keys.add("key-auditor", Client("court-auditor", "", "auditor"))
    settings = ServiceSettings(store=job_folder, policy=ROOT / "policies", api_keys=keys)
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/audit/checkpoints", headers={"X-API-Key": "key-auditor"})
        assert r.status_code == 409 and "written no audit entry" in r.json()["error"]["message"]


def _revoke(root: Path, keyfile: Path) -> tuple[int, str, str]:
    from provguard.service.auth import add_key

    add_key(keyfile, name="douyin-prod", app="douyin", role="app", known_apps=None)
    r = runner.invoke(
        keys_app, ["revoke", "douyin-prod", "--file", str(keyfile), "--store", str(root)]
    )
    return r.exit_code, r.stdout, r.stderr


def test_keys_revoke_signs_its_own_entry(job_folder: Path, tmp_path: Path) -> None:
    code, out, err = _revoke(job_folder, tmp_path / "keys.json")
    assert code == 0, out + err
    with SqliteAuditLog(job_folder / "control.db", create=False) as log:
        (entry,) = list(log.entries(kind="api_key.revoked"))
    assert f"audit entry #{entry.seq}" in out
    assert f"audit: signed checkpoint at entry #{entry.seq}" in err
    code, out = _verify(job_folder, "--require-signed")
    assert code == 0, out


def test_keys_revoke_without_the_key_leaves_its_entry_uncovered(
    job_folder: Path, tmp_path: Path
) -> None:
    (job_folder / PRIVATE_KEY_FILE).rename(tmp_path / "kept-elsewhere.pem")
    code, out, err = _revoke(job_folder, tmp_path / "keys.json")
    assert code == 0, out + err
    assert "not yet covered by a signed checkpoint: no signing key" in " ".join(err.split())
    code, out = _verify(job_folder, "--require-signed")
    assert code == 1 and "[PG330]" in out

"""``audit verify`` compares the log with its stored checkpoints even without a public key, says
which entries a signed checkpoint covers, and words a checkpoint under another key as such
(fresh-user findings A and B of session 4)."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.audit.chain import GENESIS_HASH, Checkpoint, VerifyResult
from provguard.audit.coverage import Assessment, CheckpointKeyMismatchError, assess
from provguard.audit.folder import (
    AUDIT_KEY_ENV,
    CHECKPOINT_FILE,
    PUBLIC_KEY_FILE,
    folder_signing_key,
)
from provguard.audit.signing import (
    CheckpointSignatureError,
    SignedCheckpoint,
    key_id,
    load_public_key,
    write_keypair,
)
from provguard.cli.audit import audit_app
from provguard.job.run import write_audit_evidence

runner = CliRunner()
ERRORS = re.compile(r"error \[(PG\d{3})\]")
AT = datetime(2019, 6, 30, tzinfo=UTC)


class FixedClock:
    def now(self) -> datetime:
        return AT


def _entries(n: int) -> list[tuple[str, dict[str, object]]]:
    return [
        (
            "decision",
            {
                "stage": "recommendation",
                "effect": "deny",
                "rules": ["no-platform-profile-in-friend-recommendation"],
                "request": {"app": "douyin", "origins": ["wechat" if i % 2 else "qq"]},
                "context": {"viewer": i},
            },
        )
        for i in range(n)
    ]


@pytest.fixture
def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder as ``provguard run`` leaves it: 110 entries, checkpoints signed every 25
    (stored: 25, 50, 75, 100, 110), audit.pub and checkpoint.json (110) beside the log."""
    monkeypatch.delenv(AUDIT_KEY_ENV, raising=False)
    out = tmp_path / "demo"
    key, _public = folder_signing_key(out)
    log = SqliteAuditLog(out / "control.db", clock=FixedClock(), synchronous="NORMAL")
    write_audit_evidence(log, out, _entries(110), key, every=25)
    log.close()
    return out


def _verify(*args: str) -> tuple[int, str, list[str]]:
    r = runner.invoke(audit_app, ["verify", *args])
    return r.exit_code, " ".join(r.output.split()), ERRORS.findall(r.output)


def _sql(db: Path, *statements: str) -> None:
    con = sqlite3.connect(db)
    for s in statements:
        con.execute(s)
    con.commit()
    con.close()


def _alone(demo: Path, tmp_path: Path) -> Path:
    """control.db copied into a folder of its own (no audit.pub, no checkpoint.json)."""
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(demo / "control.db", alone / "control.db")
    return alone / "control.db"


def test_a_log_alone_is_compared_with_its_stored_checkpoints(demo: Path, tmp_path: Path) -> None:
    db = _alone(demo, tmp_path)
    code, out, errors = _verify("--log", str(db))
    assert (code, errors) == (0, []), out
    kid = key_id(load_public_key(demo / PUBLIC_KEY_FILE))
    assert "public key: none given or found beside the log" in out
    assert f"compared unsigned: 5 (signed by key {kid}; no public key" in out
    assert "newest: 110 entries" in out and "chain intact: 110 entries" in out
    assert "coverage: no signed checkpoint covers this log: no public key" in out
    # finding A: cut off after #90 with no key beside it -- the stored checkpoint of 110 says so
    _sql(db, "DELETE FROM audit_log WHERE seq > 90")
    code, out, errors = _verify("--log", str(db))
    assert (code, errors) == (1, ["PG310"]), out
    assert "chain broken at entry #91" in out and "entries #91–#110 are missing" in out
    assert (
        f"[checkpoint: stored in the log, 110 entries, signed by key {kid}: signature not "
        "checked (no public key)]" in out
    )
    assert "coverage:" not in out  # nothing is claimed for a broken chain


def test_a_stored_head_that_differs_fails_without_a_key(demo: Path, tmp_path: Path) -> None:
    db = _alone(demo, tmp_path)
    con = sqlite3.connect(db)
    (doc,) = con.execute("SELECT document FROM audit_checkpoints WHERE count = 50").fetchone()
    con.close()
    forged = json.loads(doc) | {"head_hash": "ab" * 32}
    _sql(db, f"UPDATE audit_checkpoints SET document = '{json.dumps(forged)}' WHERE count = 50")
    code, out, errors = _verify("--log", str(db))
    assert (code, errors) == (1, ["PG310"]), out
    assert "chain broken at entry #50: entry #50 does not match the checkpoint" in out
    assert "[checkpoint: stored in the log, 50 entries" in out
    # with the signer's key the same forgery is a bad signature
    code, out, errors = _verify("--log", str(db), "--public-key", str(demo / PUBLIC_KEY_FILE))
    assert (code, errors) == (1, ["PG320"]), out
    assert "the stored checkpoint of 50 entries" in out


def test_truncation_with_its_checkpoints_dropped_is_reported_as_uncovered(demo: Path) -> None:
    # finding A, second half: entries after #90 cut, the stored checkpoints above 75 and
    # checkpoint.json deleted (no key needed); audit.pub is still beside the log
    db = demo / "control.db"
    _sql(
        db, "DELETE FROM audit_log WHERE seq > 90", "DELETE FROM audit_checkpoints WHERE count > 75"
    )
    (demo / CHECKPOINT_FILE).unlink()
    code, out, errors = _verify("--log", str(db))
    assert (code, errors) == (0, []), out  # nothing left can show the cut...
    assert "exported checkpoint: none given or found beside the log" in out
    assert "chain intact: 90 entries" in out
    # ...but the reader is told what is proven and what is not
    assert (
        "entries #1–#75 are covered by a checkpoint signed by key" in out
        and "(stored in the log, up to #75; a checkpoint stored in the same file proves nothing "
        "against someone who can rewrite the file"
        in out
        and "entries after #75 (#76–#90) are not covered by any signed checkpoint" in out
    )
    code, out, errors = _verify("--log", str(db), "--require-signed")
    assert (code, errors) == (1, ["PG330"]), out
    assert "--require-signed: entries #1–#75 are covered" in out


def test_an_intact_demo_is_covered_entirely_by_the_exported_checkpoint(demo: Path) -> None:
    code, out, errors = _verify("--log", str(demo / "control.db"), "--require-signed")
    assert (code, errors) == (0, []), out
    kid = key_id(load_public_key(demo / PUBLIC_KEY_FILE))
    assert (
        f"coverage: every entry (#1–#110) is covered by a checkpoint signed by key {kid} "
        "(exported, up to #110, stored in the log, up to #110)" in out
    )
    # appended after the last checkpoint (e.g. by the HTTP service): the tail is named
    log = SqliteAuditLog(demo / "control.db", clock=FixedClock())
    log.append_many(_entries(3))
    log.close()
    code, out, errors = _verify("--log", str(demo / "control.db"))
    assert (code, errors) == (0, []), out
    assert "entries after #110 (#111–#113) are not covered by any signed checkpoint" in out


def test_a_checkpoint_under_another_key_is_its_own_case(demo: Path, tmp_path: Path) -> None:
    # finding B: the demo folder checked with the user's own key
    mine = key_id(load_public_key(demo / PUBLIC_KEY_FILE))
    theirs = write_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    db = demo / "control.db"
    code, out, errors = _verify("--log", str(db), "--public-key", str(tmp_path / "k.pub"))
    assert (code, errors) == (1, ["PG321"]), out
    assert "bad checkpoint" not in out  # not worded as tampering
    assert "chain intact: 110 entries" in out
    assert (
        f"error [PG321] {demo / CHECKPOINT_FILE} was signed by key {mine}, not by the key you "
        f"gave ({theirs})" in out
    )
    assert f"compared unsigned: 5 (signed by key {mine}, not by the key given ({theirs}))" in out
    # still compared unsigned: a cut below it is found, and both errors are printed
    _sql(db, "DELETE FROM audit_log WHERE seq > 100", "DELETE FROM audit_checkpoints")
    code, out, errors = _verify("--log", str(db), "--public-key", str(tmp_path / "k.pub"))
    assert (code, errors) == (1, ["PG310", "PG321"]), out
    assert "(entries #101–#110 are missing) [checkpoint: exported" in out


def test_assess_reports_coverage_per_kind(demo: Path) -> None:
    key = load_public_key(demo / PUBLIC_KEY_FILE)
    exported = SignedCheckpoint.from_json((demo / CHECKPOINT_FILE).read_text())
    with SqliteAuditLog(demo / "control.db", create=False) as log:
        found = assess(log, public_key=key, exported=exported)
        assert found.result.ok and found.result.count == 110
        assert (found.covered_stored, found.covered_exported, found.covered) == (110, 110, 110)
        assert found.fully_covered and found.key_mismatch is None
        assert [c.checkpoint.count for c in found.checkpoints if c.source == "stored"] == [
            25,
            50,
            75,
            100,
            110,
        ]
        bare = assess(log)
        assert bare.key_id is None and bare.covered == 0 and not bare.fully_covered
        assert bare.stored_by_key == {key_id(key): 5}
        wrong = assess(log, expected=Checkpoint(111, "0" * 64))
        assert not wrong.result.ok and wrong.result.first_bad_seq == 111
        assert wrong.result.reason is not None
        assert wrong.result.reason.endswith(
            "[checkpoint: --expect-count 111 --expect-head 000000000000…]"
        )


def test_an_exported_checkpoint_with_a_bad_signature_raises(demo: Path, tmp_path: Path) -> None:
    key = load_public_key(demo / PUBLIC_KEY_FILE)
    doc = json.loads((demo / CHECKPOINT_FILE).read_text()) | {"count": 109}
    forged = SignedCheckpoint.from_dict(doc)
    with (
        SqliteAuditLog(demo / "control.db", create=False) as log,
        pytest.raises(CheckpointSignatureError) as info,
    ):
        assess(log, public_key=key, exported=forged, exported_path=Path("cp.json"))
    assert info.value.code == "PG320" and "cp.json: the checkpoint's signature" in str(info.value)
    assert not isinstance(info.value, CheckpointKeyMismatchError)


def test_coverage_of_an_empty_log() -> None:
    empty = Assessment(VerifyResult(True, 0, GENESIS_HASH), (), None, {})
    assert empty.coverage_line() == "the log is empty: there is nothing for a checkpoint to cover"
    assert not empty.fully_covered


def test_checkpoint_verify_words_another_key_the_same_way(demo: Path, tmp_path: Path) -> None:
    mine = key_id(load_public_key(demo / PUBLIC_KEY_FILE))
    theirs = write_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    r = runner.invoke(
        audit_app,
        ["checkpoint", "verify", "--public-key", str(tmp_path / "k.pub"), "--checkpoint",
         str(demo / CHECKPOINT_FILE), "--log", str(demo / "control.db")],
    )  # fmt: skip
    out = " ".join(r.output.split())
    assert r.exit_code == 1 and ERRORS.findall(r.output) == ["PG321"], out
    assert f"was signed by key {mine}, not by the key you gave ({theirs})" in out

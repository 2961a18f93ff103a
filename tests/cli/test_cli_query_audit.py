"""``provguard query`` on a demo-like store, as the fourth fresh user attacked it: every run is
audited (no literals in the log, ``audit verify`` passes), the job's unlabelled tables cannot be
declared by ``--schema``, a query is always a ``use`` (and CREATE TABLE AS a ``store``), and
functions that read the host are refused."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.adapters.control_sqlite import SqlControlStore
from provguard.cli.audit import audit_app
from provguard.cli.query import query_app
from provguard.dataplane import LabelledStore
from provguard.provenance import default_registry

ROOT = Path(__file__).resolve().parents[2]
INJUNCTION = ROOT / "policies"
REG = default_registry()
WECHAT, QQ, USER = REG.mask(["wechat"]), REG.mask(["qq"]), REG.mask(["user_input"])
SECRET = "温柔月亮"  # a WeChat handle somebody searches for: it must not reach the audit log

# the fresh user's evil_schema.yaml, verbatim
EVIL_SCHEMA = """\
tables:
  picture_hashes:
    columns:
      avatar_key: {categories: []}
      pdq: {categories: []}
  profile_scan:
    columns:
      app_id: {categories: []}
      subject_id: {categories: []}
      provider: {categories: []}
      handle_exact: {categories: []}
      handle_similarity: {categories: []}
      picture_distance_min: {categories: []}
"""


def _profiles() -> pa.Table:
    rows = [
        # a douyin picture that is a copy of a WeChat one: same PDQ as the WeChat picture
        ("douyin", 0, SECRET, WECHAT, "douyin/avatars/a.jpg", WECHAT),
        ("douyin", 1, "海风", USER, "douyin/avatars/b.jpg", USER),
        ("douyin", 2, "小明", QQ, "douyin/avatars/c.jpg", QQ),
    ]
    return pa.table(
        {
            "app_id": [r[0] for r in rows],
            "subject_id": pa.array([r[1] for r in rows], pa.int64()),
            "account_id": [f"dy{r[1]:06d}" for r in rows],
            "handle": [r[2] for r in rows],
            "handle_origins": pa.array([r[3] for r in rows], pa.uint64()),
            "handle_grant": [None, None, None],
            "avatar_key": [r[4] for r in rows],
            "avatar_origins": pa.array([r[5] for r in rows], pa.uint64()),
            "avatar_grant": [None, None, None],
            "grant_id": [None, None, None],
            "created_at": pa.array([None, None, None], pa.timestamp("us", tz="UTC")),
        }
    )


def demo_like_store(root: Path) -> Path:
    """A job output folder in miniature: ``data/`` with the job's tables (same Arrow types as
    ``provguard run`` writes, including the 32-byte PDQ hashes) and ``control.db`` whose audit
    log already holds entries."""
    data = root / "data"
    ls = LabelledStore(data)
    ls.data.write_table("profiles", _profiles())
    ls.data.write_table(
        "edges", pa.table({"src": pa.array([0, 1], pa.int64()), "dst": pa.array([1, 2])})
    )
    pdq = pa.array([b"\x01" * 32, b"\x01" * 32, b"\x02" * 32], pa.binary(32))
    ls.data.write_table(
        "picture_hashes",
        pa.table(
            {
                "avatar_key": ["wechat/avatars/w.jpg", "douyin/avatars/a.jpg", "qq/x.jpg"],
                "pdq": pdq,
                "quality": pa.array([100, 100, 90], pa.int32()),
                "chroma": pa.array([[0.1, 0.2, 0.7]] * 3, pa.list_(pa.float32(), 3)),
            }
        ),
    )
    ls.data.write_table(
        "profile_scan",
        pa.table(
            {
                "app_id": ["douyin"],
                "subject_id": pa.array([0], pa.int64()),
                "provider": ["wechat"],
                "handle_exact": [True],
                "handle_similarity": [1.0],
                "picture_distance_min": pa.array([0], pa.int32()),
            }
        ),
    )
    SqlControlStore(root / "control.db")
    with SqliteAuditLog(root / "control.db") as log:
        log.append_many([("job", {"stage": "ingest"}), ("job", {"stage": "report"})])
    return data


@pytest.fixture()
def demo(tmp_path: Path) -> Path:
    return demo_like_store(tmp_path)


def _args(store: Path, purpose: str = "social.friend_recommendation") -> list[str]:
    return ["--app", "douyin", "--purpose", purpose, "--store", str(store), "--at", "2019-06-01"]


def _run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(query_app, [*args, "--policy", str(INJUNCTION)])
    return res.exit_code, res.output


def _entries(store: Path) -> list[dict[str, object]]:
    with SqliteAuditLog(store.parent / "control.db", create=False) as log:
        return [dict(e.payload) for e in log.entries(kind="query")]


def test_every_run_is_audited_without_literals_and_the_chain_verifies(demo: Path) -> None:
    ok_sql = f"SELECT subject_id FROM profiles WHERE account_id <> '{SECRET}'"
    refused_sql = f"SELECT subject_id FROM profiles WHERE handle = '{SECRET}'"
    ctas_sql = "CREATE TABLE ids AS SELECT subject_id FROM profiles WHERE subject_id > 0"
    host_sql = "SELECT current_setting('home_directory') AS h"
    runs = [
        (_args(demo), ok_sql),
        (_args(demo), refused_sql),
        (_args(demo, "profile.display"), ctas_sql),
        (_args(demo, "profile.display"), host_sql),
    ]
    codes = [_run(*a, sql)[0] for a, sql in runs]
    assert codes[0] == 0 and codes[2] == 0
    assert codes[1] != 0 and codes[3] != 0
    got = _entries(demo)
    assert len(got) == 4  # one entry per run, refusals included
    for entry, (_, sql) in zip(got, runs, strict=True):
        assert entry["sql_sha256"] == hashlib.sha256(sql.encode()).hexdigest()
        assert entry["app"] == "douyin" and entry["engine"] == "duckdb"
    ok, refused, ctas, host = got
    assert ok["outcome"] == "rows" and ok["rows"] == 3 and ok["tables_read"] == ["profiles"]
    assert ok["statement"] == "SELECT subject_id FROM profiles WHERE account_id <> ?"
    assert ok["actions_checked"] == ["use"]
    # the state of every instrument the answer was evaluated under: no event recorded yet
    assert ok["controller_filters"] == {"profiles": "douyin"}
    assert ok["instrument_state"] == {
        "cn-tj-binhai-2019-douyin-duoshan": {"in_force": True, "events": {}}
    }
    assert refused["outcome"] == "refused" and refused["error_code"] == "PG162"
    assert refused["rule_ids"] == ["no-platform-profile-in-friend-recommendation"]
    assert refused["clause"] == "WHERE"
    assert ctas["statement_kind"] == "create_table_as" and ctas["tables_created"] == ["ids"]
    assert ctas["rows"] == 2 and ctas["actions_checked"] == ["use", "store"]
    assert host["outcome"] == "refused" and host["error_code"] == "PG160"
    assert host["statement"] == "SELECT CURRENT_SETTING(?) AS h"
    # the searched handle and the probed setting are nowhere in the log
    with SqliteAuditLog(demo.parent / "control.db", create=False) as log:
        text = json.dumps([e.payload for e in log.entries()], ensure_ascii=False)
        assert log.count() == 2 + 4
    assert SECRET not in text and "home_directory" not in text
    verify = CliRunner().invoke(audit_app, ["verify", "--log", str(demo.parent / "control.db")])
    assert verify.exit_code == 0, verify.output
    assert "chain intact: 6 entries" in verify.output


def test_a_store_without_a_control_store_gets_one(tmp_path: Path) -> None:
    """A bare data store: ``control.db`` is made beside it, so the query is still audited; a
    ``--control-store`` that does not exist is an error (a typo must not start a new log)."""
    data = demo_like_store(tmp_path)
    (tmp_path / "control.db").unlink()
    code, out = _run(*_args(data), "SELECT subject_id FROM profiles")
    assert code == 0 and "created control store" in out
    assert [e["outcome"] for e in _entries(data)] == ["rows"]
    missing = tmp_path / "nope.db"
    code, out = _run(*_args(data), "--control-store", str(missing), "SELECT 1 AS x")
    # the data has its control store now: another one is refused, and none is made
    assert code != 0 and "PG100" in out and "may not name another" in " ".join(out.split())
    assert not missing.exists()
    bare = demo_like_store(tmp_path / "bare")
    (tmp_path / "bare" / "control.db").unlink()
    code, out = _run(*_args(bare), "--control-store", str(missing), "SELECT 1 AS x")
    assert code != 0 and "PG100" in out and "no control store" in out
    assert not missing.exists()


def test_a_read_only_control_store_is_a_clear_error() -> None:
    """Run as ``nobody`` (the tests run as root, which may write any file): the control store
    is read-only for it, so the query is refused before anything is read, and nothing is
    appended."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch the effective user")
    root = Path(tempfile.mkdtemp(prefix="pg_ro_"))
    try:
        data = demo_like_store(root)
        for folder, _dirs, files in os.walk(root):
            os.chmod(folder, 0o755)
            for f in files:
                os.chmod(Path(folder) / f, 0o644)
        before = _entries(data)
        os.seteuid(65534)
        try:
            code, out = _run(*_args(data), "SELECT subject_id FROM profiles")
        finally:
            os.seteuid(0)
        assert code != 0 and "PG200" in out and "read-only" in out
        assert _entries(data) == before
    finally:
        shutil.rmtree(root)


def test_schema_file_cannot_declare_the_jobs_unlabelled_tables(demo: Path, tmp_path: Path) -> None:
    evil = tmp_path / "evil_schema.yaml"
    evil.write_text(EVIL_SCHEMA, encoding="utf-8")
    pair = (
        "SELECT a.avatar_key, b.avatar_key FROM picture_hashes a JOIN picture_hashes b"
        " ON a.pdq = b.pdq WHERE a.avatar_key LIKE 'douyin/%' AND b.avatar_key LIKE 'wechat/%'"
    )
    scores = "SELECT subject_id, provider, handle_exact, handle_similarity FROM profile_scan"
    for sql in (pair, scores):
        code, out = _run(*_args(demo), "--schema", str(evil), "--json", sql)
        assert code != 0 and "PG160" in out, out
        assert "'picture_hashes', 'profile_scan'" in out and "no provenance schema" in out
        assert "wechat/avatars" not in out and "douyin/avatars" not in out
    one = tmp_path / "one.yaml"
    one.write_text("tables:\n  campaign_targets:\n    columns:\n      score: {}\n")
    code, out = _run(*_args(demo), "--schema", str(one), "SELECT 1 AS x")
    assert code != 0 and "'campaign_targets'" in out
    assert [e["error_code"] for e in _entries(demo)] == ["PG160"] * 3
    # without a schema file the tables are still refused, with the list of queryable ones
    code, out = _run(*_args(demo), scores)
    assert code != 0 and "profile_scan" in out and "no provenance schema" in out


@pytest.mark.parametrize("action", ["display", "store", "use"])
def test_every_declared_action_is_also_a_use(demo: Path, action: str) -> None:
    """The injunction's rule names use/derive: displaying or storing WeChat handles for friend
    recommendation reads them, so it is refused and the refusal names the rule."""
    code, out = _run(*_args(demo), "--action", action, "--json", "SELECT handle FROM profiles")
    assert code != 0 and "PG162" in out
    assert "no-platform-profile-in-friend-recommendation" in out and SECRET not in out
    (entry,) = _entries(demo)
    assert entry["action"] == action and entry["rule_ids"] == [
        "no-platform-profile-in-friend-recommendation"
    ]
    assert entry["actions_checked"] == list(dict.fromkeys(["use", action]))


STORE_ONLY = """\
instrument:
  id: test-no-store
  kind: internal_policy
  issuer: provguard tests
  effective_from: 2019-03-20
rules:
  - id: no-storing-platform-handles
    effect: deny
    actions: [store]
    apps: [douyin]
    data: {categories: [user.name.nickname], origins: [wechat, qq]}
"""


def test_create_table_as_is_also_a_store(demo: Path, tmp_path: Path) -> None:
    policy = tmp_path / "no-store.yaml"
    policy.write_text(STORE_ONLY, encoding="utf-8")
    args = [*_args(demo, "profile.display"), "--policy", str(policy), "--json"]
    read = CliRunner().invoke(query_app, [*args, "SELECT handle FROM profiles"])
    assert read.exit_code == 0, read.output  # reading (a use) is not forbidden by this rule
    assert SECRET in read.output
    made = CliRunner().invoke(query_app, [*args, "CREATE TABLE h AS SELECT handle FROM profiles"])
    assert made.exit_code != 0 and "no-storing-platform-handles" in made.output
    assert not (demo / "h.parquet").exists()
    ids = CliRunner().invoke(
        query_app, [*args, "CREATE TABLE s AS SELECT subject_id FROM profiles"]
    )
    assert ids.exit_code == 0, ids.output
    assert (demo / "s.parquet").exists()
    entries = _entries(demo)
    assert [e["actions_checked"] for e in entries] == [["use"], ["use", "store"], ["use", "store"]]
    assert entries[1]["rule_ids"] == ["no-storing-platform-handles"]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT current_setting('home_directory') AS h",
        "SELECT getenv('HOME') AS h",
        "SELECT * FROM duckdb_settings()",
        "SELECT * FROM pragma_version()",
        "SELECT * FROM glob('/etc/*')",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_parquet('x.parquet')",
        "SELECT * FROM sniff_csv('/etc/passwd')",
        "SELECT * FROM query_table('profiles')",
        "SELECT * FROM duckdb_tables()",
        "SELECT subject_id FROM profiles WHERE handle = current_setting('home_directory')",
    ],
)
def test_functions_that_read_the_host_are_refused(demo: Path, sql: str) -> None:
    code, out = _run(*_args(demo, "profile.display"), sql)
    assert code != 0 and "PG160" in out and "allowlist" in out
    assert "/root" not in out


# --- the query's entry is covered by a signed checkpoint (session-5 item 4) ---------------------


def _job_signed(root: Path) -> None:
    """What ``provguard run`` leaves: ``audit-key.pem``, ``audit.pub`` and a ``checkpoint.json``
    covering the log as it is."""
    from provguard.audit.folder import export_checkpoint, folder_signing_key

    key, _ = folder_signing_key(root)
    with SqliteAuditLog(root / "control.db", create=False) as log:
        export_checkpoint(log.sign_checkpoint(key), root)


def _verify(root: Path) -> tuple[int, str]:
    res = CliRunner().invoke(audit_app, ["verify", "--log", str(root / "control.db")])
    return res.exit_code, " ".join(res.output.split())


def _exported_count(root: Path) -> int:
    from provguard.audit.signing import SignedCheckpoint

    return SignedCheckpoint.from_json((root / "checkpoint.json").read_text("utf-8")).count


def test_query_entries_are_signed_with_the_key_beside_the_store(
    demo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROVGUARD_AUDIT_KEY", raising=False)
    root = demo.parent
    _job_signed(root)
    assert _exported_count(root) == 2
    code, out = _run(*_args(demo), "SELECT subject_id FROM profiles")
    assert code == 0, out
    assert "audit: signed checkpoint at entry #3" in out and "checkpoint.json" in out
    code, out = _run(*_args(demo), "SELECT handle FROM profiles")  # refused: still signed
    assert code != 0 and "PG162" in out
    assert "signed checkpoint at entry #4" in out
    assert _exported_count(root) == 4
    code, text = _verify(root)
    assert code == 0, text
    assert "chain intact: 4 entries" in text
    assert "coverage: every entry (#1–#4) is covered by a checkpoint signed by key" in text
    assert "(exported, up to #4, stored in the log, up to #4)" in text
    strict = CliRunner().invoke(
        audit_app, ["verify", "--log", str(root / "control.db"), "--require-signed"]
    )
    assert strict.exit_code == 0, strict.output
    assert not list(root.glob(".checkpoint.json.tmp*"))


def test_query_entries_are_signed_with_the_key_named_by_the_environment(
    demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from provguard.audit.signing import write_keypair

    root = demo.parent
    secret = tmp_path / "vault"
    secret.mkdir()
    key_file = secret / "audit-key.pem"
    write_keypair(key_file, secret / "audit.pub")
    monkeypatch.setenv("PROVGUARD_AUDIT_KEY", str(key_file))
    _job_signed(root)  # the job with the key outside: no private key in the folder
    assert not (root / "audit-key.pem").exists()
    code, out = _run(*_args(demo, "profile.display"), "SELECT subject_id FROM profiles")
    assert code == 0 and "signed checkpoint at entry #3" in out
    code, text = _verify(root)
    assert code == 0 and "coverage: every entry (#1–#3) is covered" in text


def test_without_a_key_the_entry_is_said_to_be_uncovered(
    demo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROVGUARD_AUDIT_KEY", raising=False)
    root = demo.parent
    _job_signed(root)
    (root / "audit-key.pem").unlink()  # the operator moved the private key somewhere safer
    code, out = _run(*_args(demo), "SELECT subject_id FROM profiles")
    assert code == 0
    text = " ".join(out.split())
    assert "not yet covered by a signed checkpoint: no signing key" in text
    assert "PROVGUARD_AUDIT_KEY is not set" in text
    assert _exported_count(root) == 2 and not (root / "audit-key.pem").exists()
    code, text = _verify(root)
    assert code == 0 and "chain intact: 3 entries" in text
    assert "entries after #2 (#3) are not covered by any signed checkpoint" in text
    strict = CliRunner().invoke(
        audit_app, ["verify", "--log", str(root / "control.db"), "--require-signed"]
    )
    assert strict.exit_code != 0 and "PG330" in strict.output


def test_a_key_that_is_not_the_folders_does_not_sign(
    demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from provguard.audit.signing import write_keypair

    monkeypatch.delenv("PROVGUARD_AUDIT_KEY", raising=False)
    root = demo.parent
    _job_signed(root)
    before = (root / "checkpoint.json").read_bytes()
    other = tmp_path / "other.pem"
    write_keypair(other, tmp_path / "other.pub")
    monkeypatch.setenv("PROVGUARD_AUDIT_KEY", str(other))
    code, out = _run(*_args(demo), "SELECT subject_id FROM profiles")
    assert code == 0
    assert "is not the key of" in " ".join(out.split())
    assert (root / "checkpoint.json").read_bytes() == before
    with SqliteAuditLog(root / "control.db", create=False) as log:
        assert len(log.signed_checkpoints()) == 1  # the job's only


def test_export_is_crash_safe_and_never_goes_back(
    demo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import UTC, datetime

    from provguard.audit import folder as folder_mod
    from provguard.audit.chain import Checkpoint
    from provguard.audit.signing import load_private_key, sign_checkpoint

    monkeypatch.delenv("PROVGUARD_AUDIT_KEY", raising=False)
    root = demo.parent
    _job_signed(root)
    good = (root / "checkpoint.json").read_bytes()

    def crash(src: object, dst: object) -> None:
        raise OSError("power cut during rename")

    monkeypatch.setattr(folder_mod.os, "replace", crash)
    with SqliteAuditLog(root / "control.db", create=False) as log:
        log.append("query", {"outcome": "rows"})
        with pytest.raises(OSError, match="power cut"):
            folder_mod.cover_tail(log, root)
    monkeypatch.undo()
    monkeypatch.delenv("PROVGUARD_AUDIT_KEY", raising=False)
    assert (root / "checkpoint.json").read_bytes() == good  # the old one, whole
    assert not list(root.glob(".checkpoint.json.tmp*"))
    # a newer export (another process signed a longer log meanwhile) is never replaced
    key = load_private_key(root / "audit-key.pem")
    newer = sign_checkpoint(Checkpoint(100, "ab" * 32), key, datetime.now(UTC))
    (root / "checkpoint.json").write_text(newer.to_json(), encoding="utf-8")
    with SqliteAuditLog(root / "control.db", create=False) as log:
        cov = folder_mod.cover_tail(log, root)
    assert cov.signed is not None and cov.signed.count == 3 and cov.exported is None
    assert _exported_count(root) == 100
    # a checkpoint.json that no longer parses is replaced
    (root / "checkpoint.json").write_text("{not json", encoding="utf-8")
    with SqliteAuditLog(root / "control.db", create=False) as log:
        cov = folder_mod.cover_tail(log, root)
    assert cov.exported == root / "checkpoint.json" and _exported_count(root) == 3

"""Base tables and ``--schema`` tables attested by the audit log (session 8, issue 4).

1. Someone who can write ``profiles.parquet`` set every ``handle_origins`` to ``user_input`` with
   pyarrow and put the mtime back: ``provguard query`` served WeChat/QQ handles raw. Now the job
   (``job.data``), ``data load`` and the ``data`` commands record each base table's file SHA-256
   and labels-spec digest, and ``query`` / ``data`` refuse a table that differs (PG210).
2. ``ln -s ../platform/provider_profiles.parquet data/pp.parquet`` plus a schema declaring ``pp``
   with ``categories: []`` let Douyin match WeChat/QQ nicknames for friend recommendation (fresh
   user 11, H2 variant). Now a link is refused (PG160) and a declared table is read only as a
   ``provguard data register`` entry recorded it (PG210 otherwise).

Each attack is first shown to work where the check is absent (the Python API without the
attestation), then refused through the CLI. The job runs once (module fixture, 600 lines of
ego-Facebook); each test edits its own copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import provguard.cli.data_load  # noqa: F401  (mounts `data load` on data_app)
from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.audit.chain import canonical_json
from provguard.cli.data import data_app
from provguard.cli.query import extend_schema, query_app
from provguard.config import RunSettings
from provguard.dataplane import LabelledStore
from provguard.dataplane.attest import (
    BASE_TABLES_KEY,
    JOB_DATA_KIND,
    NO_SIDECAR,
    REGISTERED_KEY,
)
from provguard.grants.crypto import KEY_ENV
from provguard.job.run import run_main_job
from provguard.policy import PolicySet, load_policy_dir
from provguard.provenance import default_registry
from provguard.sqlgen import QueryPolicy, SchemaRegistry
from provguard.sqlgen.schema import job_schema

REG = default_registry()
SELF_JOIN = (
    "SELECT a.subject_id AS x, b.subject_id AS y FROM profiles a JOIN profiles b"
    " ON a.handle = b.handle AND a.subject_id < b.subject_id"
)
PP_MATCH = (
    "SELECT p.subject_id AS viewer, q.subject_id AS candidate FROM pp p JOIN pp q"
    " ON p.nickname = q.nickname AND p.subject_id < q.subject_id"
)
PP_SCHEMA = (
    "tables:\n  pp:\n    columns:\n"
    "      subject_id: {origins: [douyin]}\n"
    "      nickname: {categories: [], origins: [douyin]}\n"
    "      provider: {origins: [douyin]}\n"
)
NOW = datetime.now(UTC)
#: a company rule with a mask obligation: Douyin's ads may not use platform handles (redacted)
ADS = """instrument:
  id: douyin-ads-internal
  kind: internal_policy
  issuer: Douyin privacy office
  effective_from: 2019-03-20
rules:
  - id: ads-no-platform-handles
    effect: deny
    actions: [use, derive]
    purposes: [marketing.advertising]
    apps: [douyin]
    data: {categories: [user.name.nickname], origins: [wechat, qq]}
    obligations: [{kind: mask, strategy: redact}]
"""
ADS_SQL = "SELECT subject_id, handle FROM profiles"
PLATFORM_BITS = (1 << REG.bit("wechat")) | (1 << REG.bit("qq"))


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> Path:
    """The main job on the first 600 lines of ego-Facebook (read only: tests copy it)."""
    work = tmp_path_factory.mktemp("base-attest")
    lines = (repo_root / "data/graphs/snap-ego-facebook.txt").read_text().splitlines()
    graph = work / "g.txt"
    graph.write_text("\n".join(lines[:600]) + "\n")
    out = work / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(KEY_ENV, raising=False)
        mp.delenv("PROVGUARD_AUDIT_KEY", raising=False)
        mp.delenv("PROVGUARD_HASH_KEY", raising=False)
        run_main_job(RunSettings(out=out, graph=graph, policy=repo_root / "policies"))
    return out


@pytest.fixture
def out(job: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv("PROVGUARD_AUDIT_KEY", raising=False)
    monkeypatch.delenv("PROVGUARD_HASH_KEY", raising=False)
    copy = tmp_path / "out"
    shutil.copytree(job, copy)
    return copy


def _query(out: Path, repo_root: Path, sql: str, *extra: str, purpose: str = "") -> Any:
    args = [
        "--app",
        "douyin",
        "--purpose",
        purpose or "social.friend_recommendation",
        "--store",
        str(out / "data"),
        "--policy",
        str(repo_root / "policies"),
        "--json",
        *extra,
        sql,
    ]
    return CliRunner().invoke(query_app, args)


def _flat(text: str) -> str:
    return " ".join(text.split())


def _entries(out: Path, kind: str) -> list[dict[str, Any]]:
    con = sqlite3.connect(out / "control.db")
    try:
        rows = con.execute(
            "SELECT seq, payload FROM audit_log WHERE kind = ? ORDER BY seq", (kind,)
        ).fetchall()
    finally:
        con.close()
    return [{"seq": s, **json.loads(p)} for s, p in rows]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _relabel(path: Path, column: str, origin: str) -> None:
    """The attack: every label of ``column`` set to ``origin`` with pyarrow, mtime put back."""
    st = os.stat(path)
    table = pq.read_table(path)
    i = table.schema.get_field_index(column)
    bit = 1 << REG.bit(origin)
    table = table.set_column(
        i, column, pa.array([bit] * table.num_rows, table.schema.field(i).type)
    )
    pq.write_table(table, path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _policy(repo_root: Path, purpose: str = "social.friend_recommendation") -> QueryPolicy:
    return QueryPolicy(
        load_policy_dir(repo_root / "policies"), REG, app="douyin", purpose=purpose, at=NOW
    )


# ---------------------------------------------------------------------------- base tables
def test_the_job_records_every_table_it_wrote(job: Path) -> None:
    """The run's last data entry records each table's file SHA-256 and labels-spec digest:
    recomputed here with hashlib and the canonical JSON of the sidecar's spec."""
    (entry,) = _entries(job, JOB_DATA_KIND)
    recorded = entry[BASE_TABLES_KEY]
    data = job / "data"
    on_disk = sorted(p.stem for p in data.glob("*.parquet"))
    assert sorted(recorded) == on_disk == sorted(entry["tables"])
    assert {"profiles", "edges", "profile_display", "recommendations"} <= set(recorded)
    for table, digests in recorded.items():
        assert digests["file_sha256"] == _sha(data / f"{table}.parquet"), table
        assert digests["data_root"] == str(data.resolve())
    spec = json.loads((data / "_labels" / "profiles.json").read_text())["spec"]
    want = hashlib.sha256(canonical_json(spec).encode()).hexdigest()
    assert recorded["profiles"]["spec_sha256"] == want
    assert recorded["edges"]["spec_sha256"] == NO_SIDECAR
    # the entry follows every other data entry of the run (the newest record wins)
    masks = _entries(job, "data.store_masks") + _entries(job, "data.normalise_labels")
    assert all(e["seq"] < entry["seq"] for e in masks)


def _ads_policy(tmp_path: Path) -> Path:
    path = tmp_path / "ads.yaml"
    path.write_text(ADS, encoding="utf-8")
    return path


def test_relabelled_profiles_are_refused(out: Path, tmp_path: Path, repo_root: Path) -> None:
    """Every handle label set to user_input. Without the check (the Python API) a mask policy
    then returns the WeChat/QQ handles it redacts as they are stored; through the CLI the
    query is PG210, audited as refused, and a data command does not launder the file."""
    data = out / "data"
    path = data / "profiles.parquet"
    ads = _ads_policy(tmp_path)
    policy = PolicySet(
        load_policy_dir(repo_root / "policies").bundles + load_policy_dir(ads).bundles
    )
    qp = QueryPolicy(policy, REG, app="douyin", purpose="marketing.advertising", at=NOW)
    truth = pq.read_table(path).to_pylist()
    platform = {
        r["subject_id"]: r["handle"]
        for r in truth
        if r["app_id"] == "douyin" and r["handle_origins"] & PLATFORM_BITS
    }
    assert len(platform) > 10

    def raw_platform_handles() -> int:
        rows = LabelledStore(data, base=job_schema()).query(ADS_SQL, qp).table.to_pylist()
        return sum(1 for r in rows if platform.get(r["subject_id"]) == r["handle"])

    assert raw_platform_handles() == 0  # redacted while the labels are genuine
    _relabel(path, "handle_origins", "user_input")
    assert raw_platform_handles() == len(platform)  # the attack works where nothing checks

    before = _sha(path)
    res = _query(out, repo_root, ADS_SQL, "--policy", str(ads), purpose="marketing.advertising")
    text = _flat(res.output)
    assert res.exit_code != 0
    assert "[PG210] table 'profiles' does not match audit entry #" in text
    assert "(job.data), the newest that wrote it: its Parquet file's SHA-256 is" in text
    assert "provguard run into this folder" in text
    assert not any(h in res.output for h in platform.values())
    (*_, last) = _entries(out, "query")
    assert (last["outcome"], last["error_code"]) == ("refused", "PG210")
    # a harmless-looking count is refused too (the whole table is untrusted), however the
    # statement spells the table: DuckDB resolves names case-insensitively, and a CTE named
    # like the table reads it in its own body
    for sql in (
        "SELECT count(*) AS n FROM profiles",
        "SELECT count(*) AS n FROM PROFILES",
        'SELECT count(*) AS n FROM "Profiles"',
        "WITH profiles AS (SELECT * FROM profiles) SELECT count(*) AS n FROM profiles",
    ):
        res = _query(out, repo_root, sql, purpose="profile.display")
        assert res.exit_code != 0 and "PG210" in res.output, sql
    # the data commands refuse to rewrite it (their entry would record the forgery)
    res = CliRunner().invoke(data_app, ["normalise-labels", "--store", str(data)])
    assert res.exit_code != 0 and "PG210" in res.output
    assert _sha(path) == before
    assert not [e for e in _entries(out, "data.normalise_labels") if e["seq"] > last["seq"]]


def test_honest_mask_query_on_the_job_folder(out: Path, tmp_path: Path, repo_root: Path) -> None:
    """The same mask query on the untouched folder runs and redacts the platform handles."""
    ads = _ads_policy(tmp_path)
    res = _query(out, repo_root, ADS_SQL, "--policy", str(ads), purpose="marketing.advertising")
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.splitlines() if line.startswith("{")]
    assert rows and any(r["handle__origins"] in ("wechat", "qq") for r in rows)
    truth = {
        r["subject_id"]: r["handle"]
        for r in pq.read_table(out / "data" / "profiles.parquet").to_pylist()
        if r["app_id"] == "douyin"
    }
    for r in rows:
        if r["handle__origins"] in ("wechat", "qq"):
            assert r["handle"] != truth[r["subject_id"]]


def test_a_derived_table_is_checked_however_it_is_spelled(out: Path, repo_root: Path) -> None:
    """Session 8 found the derived-table check (session 6) skipped ``FROM H`` and ``WITH h AS
    (SELECT * FROM h)``: both read a rewritten ``h`` unchecked. Now they are refused as ``FROM
    h`` is, and read as it is while the file is the one provguard wrote."""
    made = _query(
        out,
        repo_root,
        "CREATE TABLE h AS SELECT subject_id, handle FROM profiles",
        purpose="profile.display",
    )
    assert made.exit_code == 0, made.output
    spellings = (
        "SELECT count(*) AS n FROM h",
        "SELECT count(*) AS n FROM H",
        "WITH h AS (SELECT * FROM h) SELECT count(*) AS n FROM h",
    )
    counts = set()
    for sql in spellings:
        res = _query(out, repo_root, sql, purpose="profile.display")
        assert res.exit_code == 0, res.output
        counts.add(res.output.strip().splitlines()[-1])
    assert len(counts) == 1  # the same answer, {"n": ...}
    path = out / "data" / "h.parquet"
    pq.write_table(pq.read_table(path).slice(0, 5), path)
    for sql in spellings:
        res = _query(out, repo_root, sql, purpose="profile.display")
        assert res.exit_code != 0, (sql, res.output)
        assert "PG160" in res.output or "PG210" in res.output
        assert '{"n": 5' not in res.output


def test_an_edited_base_sidecar_is_refused(out: Path, repo_root: Path) -> None:
    """The labels sidecar of ``profiles`` is recorded too (spec digest)."""
    sidecar = out / "data" / "_labels" / "profiles.json"
    raw = json.loads(sidecar.read_text())
    raw["spec"]["labels_normalised"] = not raw["spec"].get("labels_normalised", False)
    sidecar.write_text(json.dumps(raw))
    res = _query(out, repo_root, "SELECT count(*) AS n FROM profiles", purpose="profile.display")
    assert res.exit_code != 0
    assert "its labels sidecar's spec digest is" in _flat(res.output)


def test_a_forged_record_without_the_signing_key_is_refused(out: Path, repo_root: Path) -> None:
    """Whoever writes the folder and appends a job.data entry recording the forged file (without
    the signing key, which the job keeps beside the log here only for the test's own runs)
    gets no more than before: an entry no signed checkpoint covers vouches for nothing."""
    path = out / "data" / "profiles.parquet"
    _relabel(path, "handle_origins", "user_input")
    (entry,) = _entries(out, JOB_DATA_KIND)
    forged = dict(entry[BASE_TABLES_KEY])
    forged["profiles"] = {**forged["profiles"], "file_sha256": _sha(path)}
    with SqliteAuditLog(out / "control.db") as log:
        log.append(JOB_DATA_KIND, {"tables": sorted(forged), BASE_TABLES_KEY: forged})
    res = _query(out, repo_root, SELF_JOIN)
    text = _flat(res.output)
    assert res.exit_code != 0 and "PG210" in text
    assert "is not covered by a checkpoint signed with the key of" in text


def test_honest_queries_and_data_commands_keep_working(out: Path, repo_root: Path) -> None:
    """The README's queries on a fresh job folder; a data command rewrites ``profiles`` and
    records the new file, which later queries accept; the query's entry says what vouched."""
    res = _query(
        out, repo_root, "SELECT subject_id, handle FROM profiles LIMIT 3", purpose="profile.display"
    )
    assert res.exit_code == 0, res.output
    (*_, last) = _entries(out, "query")
    job_seq = _entries(out, JOB_DATA_KIND)[0]["seq"]
    assert last["tables_attested"] == {
        "profiles": {"status": "recorded", "seq": job_seq, "kind": JOB_DATA_KIND}
    }
    res = _query(out, repo_root, SELF_JOIN)
    assert res.exit_code == 2 and "PG162" in res.output  # refused by the policy, as before
    for sql in ("SELECT count(*) AS n FROM edges", "SELECT count(*) AS n FROM recommendations"):
        assert _query(out, repo_root, sql, purpose="profile.display").exit_code == 0

    data = out / "data"
    res = CliRunner().invoke(data_app, ["normalise-labels", "--store", str(data)])
    assert res.exit_code == 0, res.output
    (*_, step) = _entries(out, "data.normalise_labels")
    assert step[BASE_TABLES_KEY]["profiles"]["file_sha256"] == _sha(data / "profiles.parquet")
    res = _query(out, repo_root, "SELECT count(*) AS n FROM profiles", purpose="profile.display")
    assert res.exit_code == 0, res.output
    (*_, last) = _entries(out, "query")
    assert last["tables_attested"]["profiles"]["seq"] == step["seq"]


def test_data_load_records_the_table_it_leaves(out: Path, repo_root: Path) -> None:
    """``data load`` into a new folder: the data.load entry records the file as loaded, the last
    finishing step the file as left; a query reads it; a relabelled copy is refused."""
    store = out.parent / "loaded" / "data"
    store.mkdir(parents=True)
    res = CliRunner().invoke(
        data_app,
        [
            "load",
            "--profiles",
            str(out / "platform" / "app_profiles.parquet"),
            "--grants",
            str(out / "platform" / "grants.parquet"),
            "--store",
            str(store),
            "--policy",
            str(repo_root / "policies"),
        ],
    )
    assert res.exit_code == 0, res.output
    control = store.parent
    (load,) = _entries(control, "data.load")
    assert load[BASE_TABLES_KEY]["profiles"]["file_sha256"] == load["written"]["sha256"]
    (*_, last) = _entries(control, "data.normalise_labels") + _entries(control, "data.store_masks")
    assert last[BASE_TABLES_KEY]["profiles"]["file_sha256"] == _sha(store / "profiles.parquet")
    base = ["--app", "douyin", "--store", str(store), "--policy", str(repo_root / "policies")]
    ok = CliRunner().invoke(
        query_app, [*base, "--purpose", "profile.display", "SELECT count(*) AS n FROM profiles"]
    )
    assert ok.exit_code == 0, ok.output
    _relabel(store / "profiles.parquet", "handle_origins", "user_input")
    bad = CliRunner().invoke(
        query_app, [*base, "--purpose", "social.friend_recommendation", SELF_JOIN]
    )
    assert bad.exit_code != 0 and "PG210" in bad.output
    assert "data.normalise_labels" in bad.output or "data.store_masks" in bad.output


def test_a_folder_written_before_base_tables_were_recorded(tmp_path: Path, repo_root: Path) -> None:
    """No entry records ``profiles``: refused when the log shows a job or load wrote the folder
    (written before session 8: the message says to write it again); read, and reported as
    ``unrecorded``, in a folder no provguard writer recorded (tables written with the Python
    API)."""
    from provguard.adapters.control_sqlite import SqlControlStore
    from provguard.dataplane.store import bind_data_store

    from .test_cli_query import random_profiles

    data = tmp_path / "data"
    LabelledStore(data).data.write_table("profiles", random_profiles(20, seed=5))
    SqlControlStore(tmp_path / "control.db").engine.dispose()
    bind_data_store(data, tmp_path / "control.db")
    args = ["--app", "douyin", "--purpose", "profile.display", "--store", str(data)]
    args += ["--policy", str(repo_root / "policies"), "SELECT count(*) AS n FROM profiles"]
    res = CliRunner().invoke(query_app, args)
    assert res.exit_code == 0, res.output
    (last,) = _entries(tmp_path, "query")
    assert last["tables_attested"] == {
        "profiles": {"status": "unrecorded", "seq": None, "kind": None}
    }
    with SqliteAuditLog(tmp_path / "control.db") as log:
        log.append("data.load", {"table": "profiles", "rows_loaded": 20})  # a pre-session-8 load
    res = CliRunner().invoke(query_app, args)
    text = _flat(res.output)
    assert res.exit_code != 0
    assert "[PG210] table 'profiles' has no audit entry recording its writing" in text
    assert "provguard data load --replace" in text


# ---------------------------------------------------------------------------- --schema tables
def _pp_schema(tmp_path: Path, text: str = PP_SCHEMA) -> Path:
    path = tmp_path / "pp.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_linked_provider_export_is_refused(out: Path, tmp_path: Path, repo_root: Path) -> None:
    """Fresh user 11's H2 variant. Without the file checks, the declaration alone (the session 7
    checks: extend_schema) lets the self-join on the provider's nicknames run for Douyin's friend
    recommendation; through the CLI the link is refused at query time and at registration."""
    data = out / "data"
    link = data / "pp.parquet"
    link.symlink_to(Path("..") / "platform" / "provider_profiles.parquet")
    schema = _pp_schema(tmp_path)
    extended = extend_schema(job_schema(), SchemaRegistry.load(schema), schema, data)
    before = LabelledStore(data, base=extended).query(PP_MATCH, _policy(repo_root))
    assert before.table.num_rows > 0  # provider nicknames matched across accounts

    res = _query(out, repo_root, PP_MATCH, "--schema", str(schema))
    text = _flat(res.output)
    assert res.exit_code != 0
    assert "[PG160] table 'pp':" in text and "is a symbolic link" in text
    reg = CliRunner().invoke(
        data_app, ["register", "--store", str(data), "--schema", str(schema), "--table", "pp"]
    )
    assert reg.exit_code != 0 and "symbolic link" in _flat(reg.output)
    assert _entries(out, "data.register") == []
    # a hard link is refused too (its bytes change through the other name)
    link.unlink()
    os.link(out / "platform" / "provider_profiles.parquet", link)
    res = _query(out, repo_root, PP_MATCH, "--schema", str(schema))
    assert res.exit_code != 0 and "is a hard link" in _flat(res.output)


def test_a_declared_table_is_read_only_as_registered(
    out: Path, tmp_path: Path, repo_root: Path
) -> None:
    """A copy in the data folder: unregistered it is PG210; registered (who, why, file and
    declaration digests, signed) it is read; a changed file or declaration is PG210 again,
    naming what differs; registering again makes it readable."""
    data = out / "data"
    shutil.copyfile(out / "platform" / "provider_profiles.parquet", data / "pp.parquet")
    schema = _pp_schema(tmp_path)
    res = _query(out, repo_root, PP_MATCH, "--schema", str(schema))
    assert res.exit_code != 0
    assert "[PG210] table 'pp' is declared by --schema but no audit entry registers it" in _flat(
        res.output
    )
    reg = CliRunner().invoke(
        data_app,
        [
            *("register", "--store", str(data), "--schema", str(schema), "--table", "pp"),
            *("--by", "ops@douyin", "--why", "ticket 42"),
        ],
    )
    assert reg.exit_code == 0, reg.output
    (entry,) = _entries(out, "data.register")
    assert (entry["table"], entry["by"], entry["why"]) == ("pp", "ops@douyin", "ticket 42")
    assert entry[REGISTERED_KEY]["pp"]["file_sha256"] == _sha(data / "pp.parquet")
    assert entry["schema"]["sha256"] == _sha(schema)
    res = _query(out, repo_root, PP_MATCH, "--schema", str(schema))
    assert res.exit_code == 0, res.output  # registered: the registrant answers for it
    (*_, last) = _entries(out, "query")
    assert last["tables_attested"]["pp"] == {
        "status": "registered",
        "seq": entry["seq"],
        "kind": "data.register",
    }
    # the same declaration in another spelling (JSON, other key order) is the same declaration
    same = tmp_path / "pp.json"
    same.write_text(json.dumps(SchemaRegistry.load(schema).model_dump(exclude_unset=True)))
    assert _query(out, repo_root, PP_MATCH, "--schema", str(same)).exit_code == 0
    # another declaration of the registered file
    other = tmp_path / "other.yaml"
    other.write_text(PP_SCHEMA.replace("[], origins: [douyin]", "[], origins: [douyin, wechat]"))
    assert other.read_text() != schema.read_text()
    res = _query(out, repo_root, PP_MATCH, "--schema", str(other))
    text = _flat(res.output)
    assert res.exit_code != 0 and "[PG210] table 'pp' does not match audit entry" in text
    assert "its declaration's digest is" in text and "Parquet file's SHA-256" not in text
    # another file under the registered declaration
    pq.write_table(pq.read_table(data / "pp.parquet").slice(0, 10), data / "pp.parquet")
    res = _query(out, repo_root, PP_MATCH, "--schema", str(schema))
    text = _flat(res.output)
    assert res.exit_code != 0 and "its Parquet file's SHA-256 is" in text
    assert "declaration's digest" not in text
    reg = CliRunner().invoke(
        data_app, ["register", "--store", str(data), "--schema", str(schema), "--table", "pp"]
    )
    assert reg.exit_code == 0, reg.output
    assert _query(out, repo_root, PP_MATCH, "--schema", str(schema)).exit_code == 0


def test_register_refuses_what_a_query_would_refuse(out: Path, tmp_path: Path) -> None:
    """A job table, an undeclared table, a missing file."""
    data = out / "data"
    job_table = _pp_schema(tmp_path, PP_SCHEMA.replace("  pp:", "  profile_scan:"))
    res = CliRunner().invoke(
        data_app,
        ["register", "--store", str(data), "--schema", str(job_table), "--table", "profile_scan"],
    )
    assert res.exit_code != 0 and "PG160" in res.output
    schema = _pp_schema(tmp_path)
    res = CliRunner().invoke(
        data_app, ["register", "--store", str(data), "--schema", str(schema), "--table", "qq"]
    )
    assert res.exit_code != 0 and "does not declare table 'qq'" in _flat(res.output)
    res = CliRunner().invoke(
        data_app, ["register", "--store", str(data), "--schema", str(schema), "--table", "pp"]
    )
    assert res.exit_code != 0 and "no table 'pp'" in _flat(res.output)
    assert _entries(out, "data.register") == []

"""The fast layout written by ``provguard run`` by default (issue 4, session 7): after writing
``profiles`` (and its stored keyed hashes) the job normalises the labels and stores the masks
of every (app, purpose) pair the policy serves, each step an audit entry with the payload of
the ``provguard data`` command.

Under the shipped injunction alone no pair is served: every deny is a refusal. So the one job
run here (the first 1,200 lines of ego-Facebook) takes the injunction plus a bundle that masks
Douyin's ``profile.display`` of handles and pictures (hash / redact / nullify, and ``unknown``
fail closed). The README's documented display query then reads the stored companions. Its
answer equals the self-contained per-row SQL, values and labels alike, and so does a query
under a changed policy, which falls back to the per-row ``CASE``."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.cli.main import app as main_app
from provguard.config import RunSettings
from provguard.dataplane import LabelledStore
from provguard.dataplane.masks import _bare_schema
from provguard.dataplane.served import NORMALISE_KIND, STORE_MASKS_KIND, served_pairs
from provguard.dataplane.store import AuditLabelsLedger
from provguard.job.run import RunResult, finish_profiles_store, run_main_job
from provguard.policy import load_policy_dir
from provguard.provenance import default_registry
from provguard.sqlgen import QueryPolicy, hmac_hex, job_schema
from provguard.sqlgen.keyed import key_id

KEY = "job-stored-masks-key-0123456789"
AT = datetime(2019, 6, 30, tzinfo=UTC)
REG = default_registry()
#: the README's documented display query (its LIMIT dropped: every row is compared)
README_SQL = "SELECT app_id, handle FROM profiles"
CLI_PAYLOAD_KEYS = {"table", "app", "purpose", "actions", "at", "fingerprints", "hash_key_id"}

DISPLAY_MASKS = """\
instrument:
  id: test-display-masks
  kind: internal_policy
  issuer: provguard tests
  effective_from: 2019-03-20
rules:
  - id: display-nick-wechat-hash
    effect: deny
    actions: [use]
    purposes: [profile.display]
    apps: [douyin]
    data: {categories: [user.name.nickname], origins: [wechat]}
    obligations: [{kind: mask, strategy: hash}]
  - id: display-nick-qq-redact
    effect: deny
    actions: [use]
    purposes: [profile.display]
    apps: [douyin]
    data: {categories: [user.name.nickname], origins: [qq]}
    obligations: [{kind: mask, strategy: REDACT}]
  - id: display-avatar-platform-nullify
    effect: deny
    actions: [use]
    purposes: [profile.display]
    apps: [douyin]
    data: {categories: [user.avatar], origins: [wechat, qq]}
    obligations: [{kind: mask, strategy: nullify}]
"""


def _policy_dir(root: Path, repo_root: Path, qq_strategy: str = "redact") -> Path:
    folder = root / f"policies-{qq_strategy}"
    folder.mkdir()
    shutil.copy(repo_root / "policies" / "cn-tj-binhai-2019-douyin-duoshan.yaml", folder)
    (folder / "display-masks.yaml").write_text(DISPLAY_MASKS.replace("REDACT", qq_strategy))
    return folder


@pytest.fixture(scope="module")
def job(
    tmp_path_factory: pytest.TempPathFactory, repo_root: Path
) -> Iterator[tuple[Path, RunResult, Path]]:
    work = tmp_path_factory.mktemp("job-masks")
    lines = (repo_root / "data/graphs/snap-ego-facebook.txt").read_text().splitlines()
    graph = work / "ego-facebook-1200.txt"
    graph.write_text("\n".join(lines[:1200]) + "\n")
    policies = _policy_dir(work, repo_root)
    out = work / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROVGUARD_HASH_KEY", KEY)
        result = run_main_job(RunSettings(out=out, graph=graph, policy=policies))
    yield out, result, policies


def _qp(policies: Path, purpose: str = "profile.display") -> QueryPolicy:
    return QueryPolicy(
        load_policy_dir(policies), REG, app="douyin", purpose=purpose, at=AT, hash_key=KEY
    )


def _rows(t: pa.Table) -> list[tuple[Any, ...]]:
    return sorted(tuple(r.values()) for r in t.to_pylist())


def _per_row(store: LabelledStore, sql: str, qp: QueryPolicy) -> list[tuple[Any, ...]]:
    """The self-contained rewritten SQL (every mask a per-row CASE: the table's stored masks
    left out of its spec) over the same Parquet file."""
    bare = _bare_schema("profiles", store.schema.table("profiles"), store.schema)
    from provguard.sqlgen import rewrite

    rw = rewrite(sql, bare, qp)
    assert "__mask_" not in rw.sql
    con = store.data.connect()
    try:
        return _rows(con.sql(rw.sql).to_arrow_table())
    finally:
        con.close()


def test_the_job_stores_the_served_pairs(job: tuple[Path, RunResult, Path]) -> None:
    out, result, policies = job
    sm = result.stored_masks
    assert sm is not None and sm.labels_normalised and sm.table == "profiles"
    # profile.display and its ancestor profile (a deny covers ancestors); nothing else: the
    # injunction refuses friend recommendation for Douyin and every use for Duoshan
    assert [(p.app, p.purpose) for p in sm.stored] == [
        ("douyin", "profile"),
        ("douyin", "profile.display"),
    ]
    assert sm.skipped == () and sm.columns == ("avatar_key", "handle")
    assert sm.rewrites == 1  # the two pairs have one verdict: one set of companions
    assert sm.hash_key_id == key_id(KEY.encode())
    store = LabelledStore(out / "data", base=job_schema())
    spec = store.schema.table("profiles")
    assert spec.labels_normalised
    for col, fp in sm.stored[1].fingerprints.items():
        assert set(spec.columns[col].stored_masks) == {fp}
    # the same pairs the pure function lists on the stored table
    again = served_pairs(load_policy_dir(policies), store.schema, REG, AT, hash_key=KEY.encode())
    assert again == sm.pairs
    # normalised: no 0 label is left, and a 0 became the unknown bit
    table = store.data.read_table("profiles")
    unknown = REG.mask(["unknown"])
    for col in ("handle_origins", "avatar_origins"):
        before = result.labelled.column(col).to_pylist()
        after = table.column(col).to_pylist()
        assert after == [v or unknown for v in before]


def test_each_step_is_audited_as_the_data_commands_record_it(
    job: tuple[Path, RunResult, Path], tmp_path: Path
) -> None:
    out, result, policies = job
    log = SqliteAuditLog(out / "control.db", create=False)
    try:
        entries = [e for e in log.entries() if e.kind.startswith("data.")]
        total = sum(1 for _ in log.entries())
    finally:
        log.close()
    assert total == result.audit_appended + 1  # and the job.report entry (report anchor)
    assert [e.kind for e in entries] == [NORMALISE_KIND, STORE_MASKS_KIND, STORE_MASKS_KIND]
    assert entries[0].payload == {"table": "profiles"}
    job_payload = entries[2].payload
    assert set(job_payload) == CLI_PAYLOAD_KEYS
    assert (job_payload["app"], job_payload["purpose"]) == ("douyin", "profile.display")
    # the commands' own entries on a copy of the store: the same payloads. (A copied file has
    # another inode and ctime, so the copy's stored masks and normalised flag are stale and
    # read as absent: the copy is normalised again first, as an operator would.)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert (
        not LabelledStore(copy / "data", base=job_schema())
        .schema.table("profiles")
        .labels_normalised
    )
    runner = CliRunner()
    for args in (
        ["data", "normalise-labels"],
        ["data", "store-masks", "--app", "douyin", "--purpose", "profile.display",
         "--at", AT.isoformat(), "--policy", str(policies)],
    ):  # fmt: skip
        r = runner.invoke(
            main_app, [*args, "--store", str(copy / "data")], env={"PROVGUARD_HASH_KEY": KEY}
        )
        assert r.exit_code == 0, r.output
    log = SqliteAuditLog(copy / "control.db", create=False)
    try:
        cli = [e for e in log.entries(start=total + 1)]
    finally:
        log.close()
    assert [e.kind for e in cli] == [NORMALISE_KIND, STORE_MASKS_KIND]
    # each command's entry also records the table it leaves (session 8: base tables attested);
    # the job records its tables once, in its last entry (job.data)
    data_file = (copy / "data" / "profiles.parquet").read_bytes()
    recorded = cli[1].payload["base_tables"]["profiles"]  # type: ignore[index]
    assert recorded["file_sha256"] == hashlib.sha256(data_file).hexdigest()
    plain = [{k: v for k, v in e.payload.items() if k != "base_tables"} for e in cli]
    assert plain[0] == entries[0].payload
    assert plain[1] == job_payload


def test_the_readme_query_reads_the_stored_masks_and_answers_as_per_row_sql(
    job: tuple[Path, RunResult, Path],
) -> None:
    out, result, policies = job
    store = LabelledStore(
        out / "data", base=job_schema(), ledger=AuditLabelsLedger(out / "control.db")
    )
    qp = _qp(policies)
    rw = store.rewrite(README_SQL, qp)
    assert rw.plan is not None
    fp = result.stored_masks.stored[1].fingerprints["handle"]  # type: ignore[union-attr]
    assert f"handle__mask_{fp[:12]}" in rw.sql and f"handle__mask_{fp[:12]}" in rw.plan.sql
    assert "CASE" not in rw.plan.sql.upper()
    got = store.query(README_SQL, qp).table
    assert _rows(got) == _per_row(store, README_SQL, qp)
    # and the values are the policy's: a WeChat handle is its HMAC under the key
    wechat = REG.mask(["wechat"])
    truth = {r["subject_id"]: r for r in result.labelled.to_pylist() if r["app_id"] == "douyin"}
    sql = "SELECT subject_id, handle, avatar_key FROM profiles WHERE subject_id % 3 = 1"
    rows = store.query(sql, qp).table.to_pylist()
    assert "avatar_key__mask_" in store.rewrite(sql, qp).sql
    hashed = 0
    for row in rows:
        src = truth[row["subject_id"]]
        if src["handle_origins"] == wechat and src["handle"] is not None:
            assert row["handle"] == hmac_hex(src["handle"], KEY.encode())
            hashed += 1
        if src["avatar_origins"] & REG.mask(["wechat", "qq"]):
            assert row["avatar_key"] is None
    assert hashed > 10
    assert _rows(store.query(sql, qp).table) == _per_row(store, sql, qp)


def test_the_cli_query_shows_the_companion(job: tuple[Path, RunResult, Path]) -> None:
    out, _result, policies = job
    r = CliRunner().invoke(
        main_app,
        [
            "query", "--app", "douyin", "--purpose", "profile.display", "--store",
            str(out / "data"), "--policy", str(policies), "--at", "2019-06-30", "--show-sql",
            README_SQL + " LIMIT 5",
        ],
        env={"PROVGUARD_HASH_KEY": KEY},
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "handle__mask_" in r.output


def test_a_changed_policy_falls_back_and_answers_identically(
    job: tuple[Path, RunResult, Path], tmp_path: Path, repo_root: Path
) -> None:
    """The QQ handles' strategy changed (redact -> placeholder): the stored fingerprint no
    longer matches, so the handle is masked per row (the avatar's verdict did not change and
    its companion is still read), and the answer is the per-row SQL's under the new policy."""
    out, _result, _policies = job
    changed = _policy_dir(tmp_path, repo_root, qq_strategy="placeholder")
    store = LabelledStore(out / "data", base=job_schema())
    qp = _qp(changed)
    sql = "SELECT subject_id, handle, avatar_key FROM profiles"
    rw = store.rewrite(sql, qp)
    assert "handle__mask_" not in rw.sql and "avatar_key__mask_" in rw.sql
    got = store.query(sql, qp).table
    assert _rows(got) == _per_row(store, sql, qp)
    assert "***" not in {r["handle"] for r in got.to_pylist()}  # no stale redaction
    # another purpose (no stored verdict) falls back too, for both columns
    other = store.rewrite(sql, _qp(changed, "social.messaging"))
    assert "__mask_" not in other.sql


def test_the_finishing_step_opt_out_and_without_a_key(
    job: tuple[Path, RunResult, Path], tmp_path: Path
) -> None:
    """What ``--no-store-masks`` skips and what a run without a key stores, replayed on the
    job's ``profiles`` as it wrote them (``RunSettings.store_masks``)."""
    out, result, policies = job
    data = tmp_path / "data"
    shutil.copytree(out / "data", data)
    (data / "_labels" / "profiles.json").unlink()
    store = LabelledStore(data, base=job_schema())
    store.data.write_table("profiles", result.labelled)
    # no key: the handle's mask hashes WeChat handles, so it is left out and reported
    sm = finish_profiles_store(data, load_policy_dir(policies), AT, None)
    assert [(p.app, p.purpose, p.needs_key) for p in sm.pairs] == [
        ("douyin", "profile", ("handle",)),
        ("douyin", "profile.display", ("handle",)),
    ]
    assert sm.columns == ("avatar_key",) and "needs $PROVGUARD_HASH_KEY" in sm.summary()
    payloads = [p for k, p in sm.audit_entries if k == STORE_MASKS_KIND]
    assert [p["skipped_without_hash_key"] for p in payloads] == [["handle"], ["handle"]]
    names = store.data.read_table("profiles").column_names
    assert [n for n in names if "__mask_" in n] == [
        f"avatar_key__mask_{sm.pairs[0].fingerprints['avatar_key'][:12]}"
    ]
    assert RunSettings(out=out).store_masks is True


def test_run_no_store_masks_reaches_the_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[RunSettings] = []

    def fake(settings: RunSettings, progress: object = None) -> RunResult:
        seen.append(settings)
        from provguard.errors import InputError

        raise InputError("stop here")

    monkeypatch.setattr("provguard.cli.run.run_main_job", fake)
    for flag, expected in (("--no-store-masks", False), ("--store-masks", True)):
        r = CliRunner().invoke(main_app, ["run", "--out", str(tmp_path / "o"), flag])
        assert "stop here" in r.output
        assert seen[-1].store_masks is expected


def test_the_console_says_what_was_stored(job: tuple[Path, RunResult, Path]) -> None:
    from provguard.cli.common import console
    from provguard.cli.run import _summary

    _out, result, _policies = job
    with console.capture() as cap:
        _summary(result)
    text = " ".join(cap.get().split())
    sm = result.stored_masks
    assert sm is not None
    assert (
        "stored masks: profiles: labels normalised; stored masks for 2 (app, purpose) pair(s):"
        " douyin/profile, douyin/profile.display; columns avatar_key, handle; fingerprints "
        + ", ".join(fp[:12] for fp in sm.fingerprints)
    ) in text
    assert json.dumps(sm.fingerprints)  # plain strings

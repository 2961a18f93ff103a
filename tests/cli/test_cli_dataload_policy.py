"""A store written by ``provguard data load`` is governed by the policy it was loaded under
(fresh user 12, H1; issue 4).

The load's ``data.load`` entry records, under ``policy``, the payload a job's ``job.policy``
entry records (:func:`provguard.job.run.policy_entry`); ``enforced_policy`` reads it, so
``query`` and ``serve`` refuse another bundle with PG103 exactly as on a job store, and the
newest record (job or load) wins. Checked on a real sandbox export (the first 600 lines of
ego-Facebook, seed 7) with the finding's two queries and its lax ``acme-internal`` bundle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.audit.enforced import LOAD_KIND, LOAD_POLICY_KEY, enforced_policy
from provguard.cli.main import app as main_app
from provguard.errors import PolicyMismatchError
from provguard.job.run import policy_entry
from provguard.policy import load_policy_dir

ROOT = Path(__file__).resolve().parents[2]
INJUNCTION = ROOT / "policies"
MASKS = ROOT / "tests" / "golden" / "sqlgen" / "policy-masks.yaml"
LAX = """\
instrument: {id: acme-internal, kind: internal_policy, issuer: acme, effective_from: 2019-01-01}
rules:
  - id: no-apple-in-ads
    effect: deny
    actions: [use]
    purposes: [marketing.advertising]
    apps: [douyin, duoshan]
    data: {categories: [user.avatar], origins: [apple]}
"""
#: the finding's two queries: the README's refused handle self-join, and QQ pictures to Duoshan
SELF_JOIN = (
    "douyin",
    "social.friend_recommendation",
    "SELECT a.subject_id AS x, b.subject_id AS y, a.handle FROM profiles a JOIN profiles b"
    " ON a.handle = b.handle AND a.subject_id < b.subject_id LIMIT 4",
)
PICTURES = ("duoshan", "profile.display", "SELECT subject_id, handle, avatar_key FROM profiles")
COUNT = "SELECT app_id, count(*) AS n FROM profiles GROUP BY app_id ORDER BY app_id"


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A sandbox export (app_profiles + grants) of the first 600 lines of ego-Facebook."""
    from provguard.adapters.graph_files import read_edge_list
    from provguard.sandbox import build_platform

    work = tmp_path_factory.mktemp("dataload-policy-export")
    lines = (ROOT / "data/graphs/snap-ego-facebook.txt").read_text().splitlines()
    graph = work / "ego-600.txt"
    graph.write_text("\n".join(lines[:600]) + "\n")
    platform = build_platform(read_edge_list(graph), seed=7)
    profiles, grants = work / "profiles.parquet", work / "grants.parquet"
    pq.write_table(platform.app_profiles, profiles)
    pq.write_table(platform.grants, grants)
    return profiles, grants


@pytest.fixture()
def lax(tmp_path: Path) -> Path:
    folder = tmp_path / "lax"
    folder.mkdir()
    (folder / "internal.yaml").write_text(LAX, encoding="utf-8")
    return folder


def _invoke(args: list[str], env: dict[str, str | None] | None = None) -> Any:
    return CliRunner().invoke(main_app, args, env={"COLUMNS": "200", **(env or {})})


def _load(export: tuple[Path, Path], store: Path, *extra: str) -> Any:
    r = _invoke(
        ["data", "load", "--profiles", str(export[0]), "--grants", str(export[1]),
         "--store", str(store), "--at", "2019-06-30", *extra],
        env={"PROVGUARD_HASH_KEY": None, "PROVGUARD_AUDIT_KEY": None},
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    return r


def _query(store: Path, policy: Path, app: str, purpose: str, sql: str) -> Any:
    return _invoke(
        ["query", "--app", app, "--purpose", purpose, "--store", str(store),
         "--policy", str(policy), "--json", sql]
    )  # fmt: skip


def _entries(control: Path, kind: str) -> list[dict[str, Any]]:
    with SqliteAuditLog(control, create=False) as log:
        return [{"seq": e.seq, **e.payload} for e in log.entries(kind=kind)]


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_the_load_records_the_jobs_policy_payload(
    export: tuple[Path, Path], tmp_path: Path
) -> None:
    r = _load(export, tmp_path / "data", "--policy", str(INJUNCTION))
    (load,) = _entries(tmp_path / "control.db", LOAD_KIND)
    _, expected = policy_entry(load_policy_dir(INJUNCTION), INJUNCTION)
    assert load[LOAD_POLICY_KEY] == json.loads(json.dumps(expected))
    assert set(load[LOAD_POLICY_KEY]["files"]) == {"cn-tj-binhai-2019-douyin-duoshan.yaml"}
    digest = load[LOAD_POLICY_KEY]["policy_digest"]
    assert len(digest) == 64
    assert f"policy enforced: recorded in audit entry #{load['seq']}" in _flat(r.output)
    # `provguard policy digest` prints the same digest the load recorded
    shown = _invoke(["policy", "digest", "--policy", str(INJUNCTION)])
    assert shown.exit_code == 0 and digest in shown.output


def test_another_bundle_is_refused_the_loaded_one_answers(
    export: tuple[Path, Path], tmp_path: Path, lax: Path
) -> None:
    store = tmp_path / "data"
    _load(export, store, "--policy", str(INJUNCTION))
    for app, purpose, sql in (SELF_JOIN, PICTURES):
        r = _query(store, lax, app, purpose, sql)
        assert r.exit_code == 2, r.output
        flat = _flat(r.output)
        assert "[PG103]" in flat and "its data load enforced" in flat
        assert "lacks cn-tj-binhai-2019-douyin-duoshan.yaml" in flat
        assert '"handle"' not in r.output and "avatars/" not in r.output  # no row printed
    queries = _entries(tmp_path / "control.db", "query")
    assert [(q["outcome"], q["error_code"]) for q in queries] == [("refused", "PG103")] * 2
    # the loaded bundle still answers: the join and the pictures are the policy's PG162,
    # an unprotected count runs
    for app, purpose, sql in (SELF_JOIN, PICTURES):
        r = _query(store, INJUNCTION, app, purpose, sql)
        assert r.exit_code == 2 and "[PG162]" in r.output, r.output
    r = _query(store, INJUNCTION, "douyin", "profile.display", COUNT)
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.output.splitlines() if line.startswith("{")]
    assert [row["app_id"] for row in rows] == ["douyin"] and rows[0]["n"] > 100
    apps = pq.read_table(export[0], columns=["app_id"]).column("app_id").to_pylist()
    assert rows[0]["n"] == apps.count("douyin")
    # extra bundles may be added (they can only add denies)
    r = _invoke(
        ["query", "--app", "douyin", "--purpose", "profile.display", "--store", str(store),
         "--policy", str(INJUNCTION), "--policy", str(lax), "--json", COUNT]
    )  # fmt: skip
    assert r.exit_code == 0, r.output


def test_the_service_refuses_another_bundle_on_a_loaded_store(
    export: tuple[Path, Path], tmp_path: Path, lax: Path
) -> None:
    from provguard.service.app import ServiceSettings, open_state

    _load(export, tmp_path / "data", "--policy", str(INJUNCTION))
    with pytest.raises(PolicyMismatchError, match="lacks cn-tj-binhai"):
        open_state(ServiceSettings(store=tmp_path, policy=lax, api_keys=None))


def test_a_replace_under_another_bundle_changes_what_is_enforced(
    export: tuple[Path, Path], tmp_path: Path, lax: Path
) -> None:
    store, control = tmp_path / "data", tmp_path / "control.db"
    _load(export, store, "--policy", str(INJUNCTION))
    # dropping the order needs a stated reason: without one the load is refused, nothing written
    before = (store / "profiles.parquet").read_bytes()
    r = _invoke(
        ["data", "load", "--profiles", str(export[0]), "--grants", str(export[1]),
         "--store", str(store), "--at", "2019-06-30", "--replace", "--policy", str(lax)],
        env={"PROVGUARD_HASH_KEY": None, "PROVGUARD_AUDIT_KEY": None},
    )  # fmt: skip
    assert r.exit_code == 2 and "--change-policy" in _flat(r.output), r.output
    assert "PG103" in _flat(r.output)
    assert (store / "profiles.parquet").read_bytes() == before
    assert len(_entries(control, LOAD_KIND)) == 1
    reason = "order lifted on appeal (test)"
    _load(export, store, "--replace", "--policy", str(lax), "--change-policy", reason)
    loads = _entries(control, LOAD_KIND)
    assert len(loads) == 2
    assert loads[1]["policy_change_reason"] == reason
    lax_files = loads[1][LOAD_POLICY_KEY]["files"]
    assert set(lax_files) == {"internal.yaml"}
    with SqliteAuditLog(control, create=False) as log:
        enforced = enforced_policy(log, tmp_path, log.checkpoint().count)
    assert enforced is not None
    assert (enforced.seq, enforced.kind) == (loads[1]["seq"], LOAD_KIND)
    assert enforced.digest == loads[1][LOAD_POLICY_KEY]["policy_digest"]
    # newest wins: the injunction alone now lacks internal.yaml ...
    r = _query(store, INJUNCTION, "douyin", "profile.display", COUNT)
    assert r.exit_code == 2 and "lacks internal.yaml" in _flat(r.output), r.output
    # ... and the lax bundle answers what the injunction refuses (recorded, so visible)
    r = _query(store, lax, *PICTURES)
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.output.splitlines() if line.startswith("{")]
    assert len(rows) == 20  # the default --limit
    assert any(row["handle__origins"] in ("qq", "wechat") for row in rows)


def test_no_store_masks_records_the_policy_too(
    export: tuple[Path, Path], tmp_path: Path, lax: Path
) -> None:
    store = tmp_path / "data"
    _load(export, store, "--no-store-masks", "--policy", str(MASKS))
    (load,) = _entries(tmp_path / "control.db", LOAD_KIND)
    assert set(load[LOAD_POLICY_KEY]["files"]) == {"policy-masks.yaml"}
    r = _query(store, lax, *PICTURES)
    assert r.exit_code == 2 and "lacks policy-masks.yaml" in _flat(r.output), r.output


def test_a_missing_policy_writes_nothing_even_without_masks(
    export: tuple[Path, Path], tmp_path: Path
) -> None:
    store = tmp_path / "data"
    r = _invoke(
        ["data", "load", "--profiles", str(export[0]), "--grants", str(export[1]),
         "--store", str(store), "--no-store-masks", "--policy", str(tmp_path / "nowhere")]
    )  # fmt: skip
    assert r.exit_code == 2 and "[PG100]" in r.output, r.output
    assert "records the policy" in _flat(r.output)
    assert not (store / "profiles.parquet").exists() and not (tmp_path / "control.db").exists()


def test_an_unsigned_appended_load_does_not_change_what_is_enforced(
    export: tuple[Path, Path], tmp_path: Path, lax: Path
) -> None:
    """With the folder's key beside the store the load's entry is signed; an entry appended
    without the key naming a lax bundle is ignored (audit.pub beside the log)."""
    from provguard.audit.folder import folder_signing_key

    folder_signing_key(tmp_path)  # audit-key.pem + audit.pub beside control.db
    store, control = tmp_path / "data", tmp_path / "control.db"
    _load(export, store, "--policy", str(INJUNCTION))
    (signed,) = _entries(control, LOAD_KIND)
    _, forged = policy_entry(load_policy_dir(lax), lax)
    with SqliteAuditLog(control, create=False) as log:
        log.append(LOAD_KIND, {"table": "profiles", LOAD_POLICY_KEY: forged})
        enforced = enforced_policy(log, tmp_path, log.checkpoint().count)
    assert enforced is not None and enforced.seq == signed["seq"]
    assert set(enforced.files) == {"cn-tj-binhai-2019-douyin-duoshan.yaml"}


def test_the_newest_record_wins_and_loads_without_a_policy_are_skipped(tmp_path: Path) -> None:
    """Job and load records interleaved in one log (no audit.pub: every entry counts)."""
    injunction = policy_entry(load_policy_dir(INJUNCTION), INJUNCTION)
    masks = policy_entry(load_policy_dir(MASKS), MASKS)
    with SqliteAuditLog(tmp_path / "control.db", create=True) as log:
        assert enforced_policy(log, tmp_path, log.checkpoint().count) is None
        job = log.append(*injunction)
        log.append(LOAD_KIND, {"table": "profiles"})  # a load from before loads recorded one
        # a malformed record is passed over (it would otherwise un-govern the store)
        log.append(LOAD_KIND, {"table": "profiles", LOAD_POLICY_KEY: {"folder": "lax"}})
        log.append("job.policy", {"policy_digest": None, "files": {}})
        got = enforced_policy(log, tmp_path, log.checkpoint().count)
        assert got is not None and (got.seq, got.kind) == (job.seq, "job.policy")
        assert got.recorded_by() == "its job"
        load = log.append(LOAD_KIND, {"table": "profiles", LOAD_POLICY_KEY: masks[1]})
        got = enforced_policy(log, tmp_path, log.checkpoint().count)
        assert got is not None and (got.seq, got.kind) == (load.seq, LOAD_KIND)
        assert got.digest == masks[1]["policy_digest"] and got.recorded_by() == "its data load"
        again = log.append(*injunction)
        got = enforced_policy(log, tmp_path, log.checkpoint().count)
        assert got is not None and got.seq == again.seq
        assert got.digest == injunction[1]["policy_digest"] != masks[1]["policy_digest"]

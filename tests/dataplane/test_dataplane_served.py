"""The (app, purpose) pairs a policy serves with stored masks, and ``provguard data load``
writing the fast layout by default (issue 4, session 7).

``served_pairs`` is checked exactly on the test mask policy, with and without a key, and on
policies that mask nothing. Against the per-pair function (``mask_fingerprints``, what
``store_masks`` stores) it is checked over every app x purpose: a pair is listed exactly when
that function finds a mask. ``data load`` is checked on a real sandbox export (ego-Facebook
subgraph): it stores the masks, records the steps, and its queries answer as the per-row SQL.
With ``--no-store-masks`` it stores none."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.cli.main import app as main_app
from provguard.dataplane import LabelledStore, mask_fingerprints
from provguard.dataplane.masks import _bare_schema
from provguard.dataplane.served import (
    NORMALISE_KIND,
    SKIPPED_KEY,
    STORE_MASKS_KIND,
    served_pairs,
    store_served_masks,
)
from provguard.policy import load_policy_dir
from provguard.provenance import default_registry
from provguard.sqlgen import QueryPolicy, QueryRefused, job_schema, rewrite

ROOT = Path(__file__).resolve().parents[2]
MASKS = ROOT / "tests" / "golden" / "sqlgen" / "policy-masks.yaml"
INJUNCTION = ROOT / "policies"
AT = datetime(2019, 6, 30, tzinfo=UTC)
KEY = b"served-pairs-test-key-0123456789"
REG = default_registry()
SOCIAL = ("social", "social.friend_recommendation", "social.messaging")


def _qp(path: Path, app: str, purpose: str, key: bytes | None = KEY) -> QueryPolicy:
    return QueryPolicy(load_policy_dir(path), REG, app=app, purpose=purpose, at=AT, hash_key=key)


def test_the_mask_policy_serves_douyins_social_purposes() -> None:
    pairs = served_pairs(load_policy_dir(MASKS), job_schema(), REG, AT, hash_key=KEY)
    assert [(p.app, p.purpose) for p in pairs] == [("douyin", p) for p in SOCIAL]
    assert all(set(p.fingerprints) == {"avatar_key", "handle"} for p in pairs)
    assert all(p.needs_key == () for p in pairs)
    # `social` is the ancestor of friend recommendation: a deny covers ancestors, same verdict
    assert pairs[0].fingerprints == pairs[1].fingerprints
    # messaging gets only the unknown-origin placeholder: another verdict, other fingerprints
    assert set(pairs[2].fingerprints.values()).isdisjoint(pairs[1].fingerprints.values())


def test_a_pair_is_listed_exactly_when_store_masks_would_store_something() -> None:
    ps = load_policy_dir(MASKS)
    schema = job_schema()
    pairs = {
        (p.app, p.purpose): dict(p.fingerprints)
        for p in served_pairs(ps, schema, REG, AT, hash_key=KEY)
    }
    for app in sorted(ps.known_apps()):
        for purpose in sorted(ps.taxonomy.purposes.keys):
            fps = mask_fingerprints("profiles", schema, _qp(MASKS, app, purpose))
            assert pairs.get((app, purpose), {}) == fps, (app, purpose)


def test_without_a_key_hashed_columns_are_left_out_and_listed() -> None:
    pairs = served_pairs(load_policy_dir(MASKS), job_schema(), REG, AT, hash_key=None)
    assert [(p.app, p.purpose, tuple(p.fingerprints), p.needs_key) for p in pairs] == [
        ("douyin", "social", ("avatar_key",), ("handle",)),
        ("douyin", "social.friend_recommendation", ("avatar_key",), ("handle",)),
        ("douyin", "social.messaging", ("avatar_key", "handle"), ()),
    ]
    keyed = served_pairs(load_policy_dir(MASKS), job_schema(), REG, AT, hash_key=KEY)
    # the avatar's mask needs no key: the same fingerprint either way
    assert pairs[1].fingerprints["avatar_key"] == keyed[1].fingerprints["avatar_key"]


def test_the_injunction_serves_no_pair_its_denies_are_refusals() -> None:
    ps = load_policy_dir(INJUNCTION)
    assert served_pairs(ps, job_schema(), REG, AT, hash_key=KEY) == ()
    with pytest.raises(QueryRefused):
        rewrite("SELECT handle FROM profiles", job_schema(), _qp(INJUNCTION, "douyin", "social"))


def test_a_policy_without_masks_serves_nothing(tmp_path: Path) -> None:
    bundle = tmp_path / "permit.yaml"
    bundle.write_text(
        "instrument: {id: t-permit, kind: internal_policy, issuer: t,"
        " effective_from: 2019-01-01}\n"
        "rules:\n"
        "  - {id: r1, effect: permit, actions: [use], apps: [douyin],"
        " data: {categories: [user.name.nickname]}}\n"
    )
    assert served_pairs(load_policy_dir(bundle), job_schema(), REG, AT, hash_key=KEY) == ()


# ------------------------------------------------------------------ data load


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A sandbox export (app_profiles + grants) of the first 600 lines of ego-Facebook."""
    from provguard.adapters.graph_files import read_edge_list
    from provguard.sandbox import build_platform

    work = tmp_path_factory.mktemp("served-export")
    lines = (ROOT / "data/graphs/snap-ego-facebook.txt").read_text().splitlines()
    graph = work / "ego-600.txt"
    graph.write_text("\n".join(lines[:600]) + "\n")
    platform = build_platform(read_edge_list(graph), seed=7)
    profiles, grants = work / "profiles.parquet", work / "grants.parquet"
    pq.write_table(platform.app_profiles, profiles)
    pq.write_table(platform.grants, grants)
    return profiles, grants


def _load(export: tuple[Path, Path], store: Path, *extra: str, key: str | None) -> str:
    env: dict[str, str | None] = {"PROVGUARD_HASH_KEY": key}  # None: unset
    r = CliRunner().invoke(
        main_app,
        [
            "data", "load", "--profiles", str(export[0]), "--grants", str(export[1]),
            "--store", str(store), "--policy", str(MASKS), "--at", AT.isoformat(), *extra,
        ],
        env=env,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    return " ".join(r.output.split())


def _entries(control: Path) -> list[Any]:
    log = SqliteAuditLog(control, create=False)
    try:
        return list(log.entries())
    finally:
        log.close()


def _rows(t: pa.Table) -> list[tuple[Any, ...]]:
    return sorted(tuple(r.values()) for r in t.to_pylist())


def test_data_load_stores_the_served_masks(export: tuple[Path, Path], tmp_path: Path) -> None:
    store = tmp_path / "data"
    said = _load(export, store, key=KEY.decode())
    assert "stored masks for 3 (app, purpose) pair(s)" in said
    ls = LabelledStore(store, base=job_schema())
    spec = ls.schema.table("profiles")
    assert spec.labels_normalised
    expected = served_pairs(load_policy_dir(MASKS), ls.schema, REG, AT, hash_key=KEY)
    for col in ("handle", "avatar_key"):
        assert set(spec.columns[col].stored_masks) == {p.fingerprints[col] for p in expected}
    entries = _entries(tmp_path / "control.db")
    assert [e.kind for e in entries] == [
        "data.load",
        NORMALISE_KIND,
        STORE_MASKS_KIND,
        STORE_MASKS_KIND,
        STORE_MASKS_KIND,
    ]
    assert [(e.payload["purpose"], e.payload["fingerprints"]) for e in entries[2:]] == [
        (p.purpose, dict(p.fingerprints)) for p in expected
    ]
    # every served pair's queries read the companions and answer as the per-row SQL
    sql = "SELECT subject_id, handle, avatar_key FROM profiles WHERE subject_id % 2 = 0"
    bare = _bare_schema("profiles", spec, ls.schema)
    con = ls.data.connect()
    try:
        for purpose in SOCIAL:
            qp = _qp(MASKS, "douyin", purpose)
            rw = ls.rewrite(sql, qp)
            assert "handle__mask_" in rw.sql and "avatar_key__mask_" in rw.sql
            per_row = _rows(con.sql(rewrite(sql, bare, qp).sql).to_arrow_table())
            assert _rows(ls.query(sql, qp).table) == per_row and len(per_row) > 50
    finally:
        con.close()


def test_data_load_without_a_key_reports_the_skip(
    export: tuple[Path, Path], tmp_path: Path
) -> None:
    said = _load(export, tmp_path / "data", key=None)
    assert "skipped for douyin/social.friend_recommendation: handle" in said
    entries = _entries(tmp_path / "control.db")
    skipped = [e.payload.get(SKIPPED_KEY) for e in entries if e.kind == STORE_MASKS_KIND]
    assert skipped == [["handle"], ["handle"], None]
    assert all(e.payload["hash_key_id"] is None for e in entries if e.kind == STORE_MASKS_KIND)


def test_data_load_no_store_masks_stores_none(export: tuple[Path, Path], tmp_path: Path) -> None:
    _load(export, tmp_path / "data", "--no-store-masks", key=KEY.decode())
    names = pq.read_schema(tmp_path / "data" / "profiles.parquet").names
    assert not [n for n in names if "__mask_" in n]
    ls = LabelledStore(tmp_path / "data", base=job_schema())
    assert not ls.schema.table("profiles").labels_normalised
    assert [e.kind for e in _entries(tmp_path / "control.db")] == ["data.load"]


def test_a_stale_fingerprint_falls_back(export: tuple[Path, Path], tmp_path: Path) -> None:
    """Masks stored under the test policy, queried under a changed one (the WeChat handles'
    strategy hash -> redact): the handle is masked per row, answers as the per-row SQL."""
    store = tmp_path / "data"
    _load(export, store, key=KEY.decode())
    changed = tmp_path / "changed.yaml"
    changed.write_text(MASKS.read_text().replace("strategy: hash", "strategy: redact"))
    ls = LabelledStore(store, base=job_schema())
    qp = _qp(changed, "douyin", "social.friend_recommendation")
    sql = "SELECT subject_id, handle, avatar_key FROM profiles"
    rw = ls.rewrite(sql, qp)
    assert "handle__mask_" not in rw.sql and "avatar_key__mask_" in rw.sql
    bare = _bare_schema("profiles", ls.schema.table("profiles"), ls.schema)
    con = ls.data.connect()
    try:
        per_row = _rows(con.sql(rewrite(sql, bare, qp).sql).to_arrow_table())
    finally:
        con.close()
    assert _rows(ls.query(sql, qp).table) == per_row


def test_store_served_masks_shares_companions_between_equal_verdicts(
    export: tuple[Path, Path], tmp_path: Path
) -> None:
    """social and social.friend_recommendation have one verdict: one rewrite serves both."""
    _load(export, tmp_path / "data", "--no-store-masks", key=None)
    ls = LabelledStore(tmp_path / "data", base=job_schema())
    sm = store_served_masks(ls, load_policy_dir(MASKS), AT, hash_key=KEY)
    assert sm.rewrites == 2 and len(sm.stored) == 3
    assert len(sm.fingerprints) == 4  # 2 verdicts x 2 columns
    names = [n for n in ls.data.read_table("profiles").column_names if "__mask_" in n]
    assert len(names) == 4
    assert [k for k, _ in sm.audit_entries] == [NORMALISE_KIND] + [STORE_MASKS_KIND] * 3


def test_data_load_without_a_policy_writes_nothing(
    export: tuple[Path, Path], tmp_path: Path
) -> None:
    store = tmp_path / "data"
    r = CliRunner().invoke(
        main_app,
        [
            "data", "load", "--profiles", str(export[0]), "--grants", str(export[1]),
            "--store", str(store), "--policy", str(tmp_path / "nowhere"),
        ],
    )  # fmt: skip
    assert r.exit_code == 2 and "PG100" in r.output and "--no-store-masks" in r.output
    assert not (store / "profiles.parquet").exists() and not (tmp_path / "control.db").exists()

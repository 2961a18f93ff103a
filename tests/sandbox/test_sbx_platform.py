"""The sandbox platform: determinism, schemas, integrity, ground truth, distributions."""

from __future__ import annotations

import io
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pytest
from PIL import Image

from provguard.adapters.graph_files import EdgeList
from provguard.sandbox import Platform, SandboxParams, build_platform
from provguard.sandbox.handles import fullwidth, to_traditional
from provguard.sandbox.schema import (
    DOUYIN_EPOCH,
    DUOSHAN_LAUNCH,
    ORDER_DATE,
    SCHEMAS,
    SNAPSHOT,
)

EXPECTED_COLUMNS = {
    "subjects": ["subject_id", "real_name", "login"],
    "provider_profiles": ["provider", "subject_id", "unionid", "nickname", "avatar_key"],
    "apps": ["app_id", "name", "controller_id", "controller_name"],
    "grants": [
        "grant_id", "subject_id", "provider", "app_id", "openid", "unionid", "scopes",
        "granted_at", "status",
    ],
    "app_profiles": [
        "app_id", "subject_id", "account_id", "handle", "handle_source", "handle_edit",
        "avatar_key", "avatar_source", "avatar_edit", "grant_id", "created_at",
        "handle_is_real_name",
    ],
    "transfers": [
        "transfer_id", "grant_id", "subject_id", "provider", "from_app", "to_app",
        "first_used_at",
    ],
    "edges": ["src", "dst"],
    "pictures": ["avatar_key", "format", "width", "height", "data"],
}  # fmt: skip
TS = pa.timestamp("us", tz="UTC")


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows


# ------------------------------------------------------------------------------- determinism


def test_same_seed_identical_different_seed_differs(small_graph: EdgeList) -> None:
    a = build_platform(small_graph, seed=11)
    b = build_platform(small_graph, seed=11)
    c = build_platform(small_graph, seed=12)
    assert a.equals(b)
    for name in ("subjects", "app_profiles", "grants", "pictures"):
        assert getattr(a, name).equals(getattr(b, name))
        assert not getattr(a, name).equals(getattr(c, name)), name
    assert a.edges.equals(c.edges)  # the graph does not depend on the seed


def test_bad_arguments(small_graph: EdgeList) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        build_platform(small_graph, snapshot=datetime(2019, 6, 30))
    with pytest.raises(ValueError, match="not after"):
        build_platform(small_graph, snapshot=datetime(2016, 1, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match="probabilit"):
        SandboxParams(duoshan_prob=1.5)
    with pytest.raises(ValueError, match="summing to 1"):
        SandboxParams(login_probs={"wechat": 0.5, "qq": 0.2, "none": 0.2})


def test_snapshot_before_duoshan_launch(small_graph: EdgeList) -> None:
    early = build_platform(small_graph, snapshot=datetime(2018, 6, 1, tzinfo=UTC))
    assert early.transfers.num_rows == 0
    assert "duoshan" not in early.app_profiles["app_id"].to_pylist()
    assert max(early.grants["granted_at"].to_pylist()) < datetime(2018, 6, 1, tzinfo=UTC)


# ----------------------------------------------------------------------------------- schemas


def test_schemas_exact(platform: Platform) -> None:
    for name, table in platform.tables().items():
        assert table.column_names == EXPECTED_COLUMNS[name]
        assert table.schema.equals(SCHEMAS[name])
    assert platform.grants.schema.field("granted_at").type == TS
    assert platform.app_profiles.schema.field("created_at").type == TS
    assert platform.transfers.schema.field("first_used_at").type == TS
    assert platform.pictures.schema.field("width").type == pa.int32()
    assert platform.app_profiles.schema.field("handle_is_real_name").type == pa.bool_()
    assert platform.app_profiles.schema.field("grant_id").nullable


def test_platform_rejects_wrong_schema(platform: Platform) -> None:
    tables = platform.tables()
    tables["edges"] = pa.table({"src": [1], "dst": ["2"]})
    with pytest.raises(ValueError, match="edges"):
        Platform(**tables)


# ---------------------------------------------------------------------- referential integrity


def test_referential_integrity(platform: Platform, ego_facebook: EdgeList) -> None:
    subjects = set(platform.subjects["subject_id"].to_pylist())
    assert subjects == set(ego_facebook.nodes.tolist())
    pictures = platform.pictures["avatar_key"].to_pylist()
    assert len(set(pictures)) == len(pictures)
    keys = set(pictures)
    grants = {g["grant_id"]: g for g in _rows(platform.grants)}
    assert len(grants) == platform.grants.num_rows

    for row in _rows(platform.provider_profiles):
        assert row["subject_id"] in subjects and row["avatar_key"] in keys
    for g in grants.values():
        assert g["subject_id"] in subjects and g["app_id"] == "douyin"
    profiles = _rows(platform.app_profiles)
    assert len({(p["app_id"], p["subject_id"]) for p in profiles}) == len(profiles)
    assert len({p["account_id"] for p in profiles}) == len(profiles)
    assert len(set(platform.grants["openid"].to_pylist())) == platform.grants.num_rows
    app_ids = set(platform.apps["app_id"].to_pylist())
    assert app_ids == {"douyin", "duoshan"}
    assert len(set(platform.apps["controller_id"].to_pylist())) == 2
    for p in profiles:
        assert p["app_id"] in app_ids and p["subject_id"] in subjects
        assert p["avatar_key"] in keys
        if p["grant_id"] is not None:
            g = grants[p["grant_id"]]
            assert g["subject_id"] == p["subject_id"]
    duoshan_of = {p["subject_id"]: p for p in profiles if p["app_id"] == "duoshan"}
    for t in _rows(platform.transfers):
        g = grants[t["grant_id"]]
        assert g["app_id"] == "douyin" and g["subject_id"] == t["subject_id"]
        assert g["provider"] == t["provider"]
        assert (t["from_app"], t["to_app"]) == ("douyin", "duoshan")
        ds = duoshan_of[t["subject_id"]]
        assert ds["grant_id"] == t["grant_id"] and ds["created_at"] == t["first_used_at"]
    transferred = {t["subject_id"] for t in _rows(platform.transfers)}
    for sid, ds in duoshan_of.items():
        assert (ds["grant_id"] is not None) == (sid in transferred)
    edges = platform.edges
    assert all(
        a < b for a, b in zip(edges["src"].to_pylist(), edges["dst"].to_pylist(), strict=True)
    )
    assert set(edges["src"].to_pylist()) | set(edges["dst"].to_pylist()) <= subjects


def test_grants_and_provider_profiles_agree(platform: Platform) -> None:
    subj = {s["subject_id"]: s for s in _rows(platform.subjects)}
    prov = {p["subject_id"]: p for p in _rows(platform.provider_profiles)}
    grants = {g["subject_id"]: g for g in _rows(platform.grants)}
    assert set(prov) == set(grants) == {k for k, s in subj.items() if s["login"] != "none"}
    for sid, g in grants.items():
        assert g["provider"] == subj[sid]["login"] == prov[sid]["provider"]
        assert g["unionid"] == prov[sid]["unionid"]
        want = "snsapi_login snsapi_userinfo" if g["provider"] == "wechat" else "get_user_info"
        assert g["scopes"] == want
        assert g["status"] in ("active", "revoked")
        assert DOUYIN_EPOCH <= g["granted_at"] < SNAPSHOT
        if g["provider"] == "wechat":
            assert len(g["openid"]) == 28 and g["openid"].startswith("o")
        else:
            assert len(g["openid"]) == 32 and g["unionid"].startswith("UID_")


# ---------------------------------------------------------------------------- ground truth


def test_ground_truth_handles_and_avatars(platform: Platform) -> None:
    subj = {s["subject_id"]: s for s in _rows(platform.subjects)}
    prov = {p["subject_id"]: p for p in _rows(platform.provider_profiles)}
    grants = {g["grant_id"]: g for g in _rows(platform.grants)}
    pics = platform.pictures
    data = dict(zip(pics["avatar_key"].to_pylist(), pics["data"].to_pylist(), strict=True))
    for p in _rows(platform.app_profiles):
        s = subj[p["subject_id"]]
        real = s["real_name"]
        assert p["handle_is_real_name"] == (p["handle"] in (real, to_traditional(real)))
        if s["login"] == "none":
            assert p["grant_id"] is None
            assert (p["handle_source"], p["handle_edit"]) == ("user_input", "user_input")
            assert (p["avatar_source"], p["avatar_edit"]) == ("user_input", "user_input")
            continue
        if p["grant_id"] is None:  # direct duoshan sign-up
            assert p["app_id"] == "duoshan"
            assert p["handle_source"] == p["avatar_source"] == "user_input"
        else:
            assert grants[p["grant_id"]]["app_id"] == "douyin"
        nick = prov[p["subject_id"]]["nickname"]
        edit = p["handle_edit"]
        if edit == "exact":
            assert p["handle"] == nick
        elif edit == "user_input":
            assert p["handle"] != nick and p["handle_source"] == "user_input"
        elif edit == "traditional":
            assert p["handle"] == to_traditional(nick) != nick
        elif edit == "fullwidth":
            assert p["handle"] == fullwidth(nick) != nick
        elif edit == "case":
            assert p["handle"].lower() == nick.lower() and p["handle"] != nick
        else:
            assert edit in ("emoji", "suffix", "decoration") and nick in p["handle"]
        same = data[p["avatar_key"]] == data[prov[p["subject_id"]]["avatar_key"]]
        assert same == (p["avatar_edit"] == "exact")
        if p["avatar_source"] == "provider":
            assert p["avatar_edit"] != "user_input"


def test_pictures_decode(platform: Platform) -> None:
    rows = _rows(platform.pictures)
    for row in rows[:: max(1, len(rows) // 400)]:
        with Image.open(io.BytesIO(row["data"])) as img:
            assert img.format == row["format"].upper()
            assert img.size == (row["width"], row["height"])
    assert {r["format"] for r in rows} == {"jpeg", "png"}
    provider_keys = set(platform.provider_profiles["avatar_key"].to_pylist())
    sizes = [(r["width"], r["height"]) for r in rows if r["avatar_key"] in provider_keys]
    assert all(min(wh) >= 96 and max(wh) <= 160 for wh in sizes)
    provider_data = [r["data"] for r in rows if r["avatar_key"] in provider_keys]
    assert len(set(provider_data)) == len(provider_data)


def test_dates(platform: Platform) -> None:
    for t in platform.transfers["first_used_at"].to_pylist():
        assert DUOSHAN_LAUNCH <= t < SNAPSHOT
    grants = {g["grant_id"]: g for g in _rows(platform.grants)}
    for t in _rows(platform.transfers):
        assert t["first_used_at"] >= grants[t["grant_id"]]["granted_at"]
    for p in _rows(platform.app_profiles):
        assert p["created_at"] < SNAPSHOT
        low = DOUYIN_EPOCH if p["app_id"] == "douyin" else DUOSHAN_LAUNCH
        assert p["created_at"] >= low
        if p["app_id"] == "douyin" and p["grant_id"] is not None:
            assert p["created_at"] == grants[p["grant_id"]]["granted_at"]


# ----------------------------------------------------------------------------- distributions


def _near(count: int, total: int, p: float, tol: float = 0.03) -> bool:
    return abs(count / total - p) <= tol


def test_distributions(platform: Platform) -> None:
    s = platform.summary()
    n = s["subjects"]
    assert n == 4039 and s["edges"] == 88234
    assert _near(s["subjects.login.wechat"], n, 0.55)
    assert _near(s["subjects.login.qq"], n, 0.30)
    assert _near(s["subjects.login.none"], n, 0.15)
    assert s["accounts.douyin"] == n
    assert _near(s["accounts.duoshan"], n, 0.35)
    provider_users = s["subjects.login.wechat"] + s["subjects.login.qq"]
    assert s["grants"] == provider_users == s["accounts.douyin.grant_backed"]
    assert _near(s["grants.status.revoked"], s["grants"], 0.05, 0.02)
    # grant dates uniform over 2017-01-01 .. 2019-06-30: 808/910 days before the order
    assert _near(s["grants.before_order"], s["grants"], 808 / 910)
    # duoshan users with a provider login transfer with p = 0.8 (~0.85 * 0.35 * n of them)
    assert s["transfers"] == s["accounts.duoshan.grant_backed"]
    assert _near(s["transfers"], round(0.85 * 0.35 * n), 0.8, 0.06)
    assert s["transfers.before_order"] > 100 and s["transfers.after_order"] > 100
    assert s["transfers.wechat"] + s["transfers.qq"] == s["transfers"]

    profiles = _rows(platform.app_profiles)
    backed = [p for p in profiles if p["grant_id"] is not None]
    h_prov = [p for p in backed if p["handle_source"] == "provider"]
    assert _near(len(h_prov), len(backed), 0.70)
    assert _near(sum(p["handle_edit"] == "exact" for p in h_prov), len(h_prov), 0.60)
    a_prov = [p for p in backed if p["avatar_source"] == "provider"]
    assert _near(len(a_prov), len(backed), 0.75)
    edits = Counter(p["avatar_edit"] for p in a_prov)
    for edit, prob in SandboxParams().avatar_provider_edits.items():
        assert _near(edits[edit], len(a_prov), prob), edit
    handle_edits = {k.split(".")[-1] for k in s if ".handle_edit." in k}
    assert {"exact", "fullwidth", "emoji", "traditional", "suffix", "user_input"} <= handle_edits
    real = s["douyin.handle_is_real_name"] / n
    assert 0.05 < real < 0.15
    assert s["pictures"] == s["provider_profiles.wechat"] + s["provider_profiles.qq"] + len(
        profiles
    )


def test_summary_consistent(platform: Platform) -> None:
    s = platform.summary()
    for app in ("douyin", "duoshan"):
        edits = sum(v for k, v in s.items() if k.startswith(f"{app}.handle_edit."))
        assert edits == s[f"accounts.{app}"]
        edits = sum(v for k, v in s.items() if k.startswith(f"{app}.avatar_edit."))
        assert edits == s[f"accounts.{app}"]
    assert s["transfers.before_order"] + s["transfers.after_order"] == s["transfers"]
    before = sum(t < ORDER_DATE for t in platform.transfers["first_used_at"].to_pylist())
    assert before == s["transfers.before_order"]

"""Pictures are decoded and PDQ-hashed once per run: the main job hashes them once and hands
the table to the recommendation stage and the profile-match scan (issue 7, item 4); given
hashes, the recommendation stage decodes nothing and recommends the same."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import provguard.job.scan as scan_mod
from provguard.adapters.graph_files import read_edge_list
from provguard.decide import DecisionPoint
from provguard.errors import InputError
from provguard.job.decisions import DecisionRecorder
from provguard.job.ingest import label_profiles
from provguard.job.recommendations import run_recommendations
from provguard.policy import load_policy_dir
from provguard.provenance import default_registry
from provguard.recommend.protocol import profiles_from_tables
from provguard.sandbox import Platform, build_platform
from provguard.similarity.pictures import hash_picture_table

ROOT = Path(__file__).resolve().parents[2]
AT = datetime(2019, 6, 30, tzinfo=UTC)
NODES = 120  # induced subgraph of ego-Facebook (part of node 0's ego network)


@pytest.fixture(scope="module")
def platform() -> Platform:
    full = read_edge_list(ROOT / "data/graphs/snap-ego-facebook.txt")
    keep = (full.src < NODES) & (full.dst < NODES)
    el = replace(full, src=full.src[keep], dst=full.dst[keep], nodes=full.nodes[full.nodes < NODES])
    return build_platform(el, seed=7)


def _run(platform: Platform, pictures: pa.Table, **kw: Any) -> Any:
    registry = default_registry()
    labelled = label_profiles(platform.app_profiles, platform.grants, registry)
    app = labelled.filter(pc.equal(labelled.column("app_id"), "douyin"))
    return run_recommendations(
        np.asarray(platform.edges.column("src").to_numpy(), np.int64),
        np.asarray(platform.edges.column("dst").to_numpy(), np.int64),
        app,
        registry,
        DecisionPoint(load_policy_dir(ROOT / "policies")),
        AT,
        DecisionRecorder(),
        subjects=platform.subjects,
        pictures=pictures,
        eval_users=None,
        **kw,
    )


def test_given_hashes_are_used_and_change_nothing(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def counting(table: pa.Table) -> pa.Table:
        calls.append(table.num_rows)
        return hash_picture_table(table)

    monkeypatch.setattr(scan_mod, "hash_picture_table", counting)
    pictures = platform.pictures
    result = _run(platform, pictures)  # no hashes given: the stage hashes once itself
    assert calls == [pictures.num_rows]
    hashes = scan_mod.hash_pictures(pictures)  # what the main job computes once per run
    calls.clear()
    direct = _run(platform, pictures, picture_hashes=hashes)
    assert calls == []  # nothing decoded or hashed again
    assert np.array_equal(
        direct.cards.column("candidate").to_numpy(), result.cards.column("candidate").to_numpy()
    )
    assert np.array_equal(
        direct.cards.column("score").to_numpy(), result.cards.column("score").to_numpy()
    )


def test_profiles_from_given_hashes(platform: Platform) -> None:
    hashes = hash_picture_table(platform.pictures)
    n = int(platform.subjects.column("subject_id").to_numpy().max()) + 1
    prof = profiles_from_tables(
        n, platform.subjects, platform.app_profiles, None, picture_hashes=hashes
    )
    pdq_of = dict(zip(hashes["avatar_key"].to_pylist(), hashes["pdq"].to_pylist(), strict=True))
    rows = platform.app_profiles.filter(pc.equal(platform.app_profiles.column("app_id"), "douyin"))
    checked = 0
    for sid, key in zip(
        rows["subject_id"].to_pylist(), rows["avatar_key"].to_pylist(), strict=True
    ):
        if key in pdq_of:
            assert prof.has_hash[sid] and prof.hashes[sid].tobytes() == pdq_of[key]
            checked += 1
    assert checked > 50
    bad = hashes.set_column(1, "pdq", pa.array([b"\x00" * 5] * hashes.num_rows, pa.binary()))
    with pytest.raises(InputError, match="32 bytes"):
        profiles_from_tables(n, platform.subjects, platform.app_profiles, None, picture_hashes=bad)
    with pytest.raises(InputError, match="pdq"):
        profiles_from_tables(
            n,
            platform.subjects,
            platform.app_profiles,
            None,
            picture_hashes=hashes.select(["avatar_key"]),
        )


def test_undecodable_picture_falls_back_and_loses_nothing(platform: Platform) -> None:
    pictures = platform.pictures
    data = pictures["data"].to_pylist()
    data[0] = b"not an image"
    broken = pictures.set_column(
        pictures.column_names.index("data"), "data", pa.array(data, pa.binary())
    )
    with pytest.raises(InputError):
        scan_mod.hash_pictures(broken)
    result = _run(platform, broken)  # the stage still runs; the bad picture has no hash
    assert result.cards.num_rows > 0

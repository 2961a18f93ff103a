"""A small sandbox platform (first 1,500 lines of ego-Facebook, seed 7), hashed and scanned."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest

from provguard.adapters.graph_files import read_edge_list
from provguard.policy import PolicySet, load_policy_dir
from provguard.sandbox import Platform, build_platform
from provguard.similarity.pictures import hash_picture_table
from provguard.similarity.scan import scan_profiles

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Scanned:
    platform: Platform
    hashes: pa.Table
    scan: pa.Table
    policy: PolicySet


@pytest.fixture(scope="session")
def scanned(tmp_path_factory: pytest.TempPathFactory) -> Scanned:
    lines = (ROOT / "data" / "graphs" / "snap-ego-facebook.txt").read_text().splitlines()[:1500]
    path = tmp_path_factory.mktemp("graphs") / "small.txt"
    path.write_text("\n".join(lines) + "\n")
    platform = build_platform(read_edge_list(path), seed=7)
    hashes = hash_picture_table(platform.pictures)
    scan = scan_profiles(platform.app_profiles, platform.provider_profiles, hashes)
    return Scanned(platform, hashes, scan, load_policy_dir(ROOT / "policies"))

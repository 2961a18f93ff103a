"""Parquet round trip of the sandbox platform."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from provguard.adapters.graph_files import EdgeList
from provguard.adapters.platform_files import read_platform, write_platform
from provguard.errors import InputError
from provguard.sandbox import build_platform
from provguard.sandbox.schema import TABLE_NAMES


def test_round_trip(small_graph: EdgeList, tmp_path: Path) -> None:
    platform = build_platform(small_graph, seed=3)
    written = write_platform(platform, tmp_path / "out")
    assert [p.name for p in written] == [f"{n}.parquet" for n in TABLE_NAMES]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{n}.parquet" for n in TABLE_NAMES
    )  # no temporary files left behind
    back = read_platform(tmp_path / "out")
    assert back.equals(platform)
    assert back.summary() == platform.summary()
    write_platform(platform, tmp_path / "out")  # overwriting is fine
    assert read_platform(tmp_path / "out").equals(platform)


def test_missing_or_wrong_table(small_graph: EdgeList, tmp_path: Path) -> None:
    platform = build_platform(small_graph, seed=3)
    write_platform(platform, tmp_path)
    pq.write_table(pa.table({"src": ["a"], "dst": ["b"]}), tmp_path / "edges.parquet")
    with pytest.raises(InputError, match="edges"):
        read_platform(tmp_path)
    (tmp_path / "apps.parquet").unlink()
    with pytest.raises(InputError, match="missing platform table 'apps'"):
        read_platform(tmp_path)

"""Shared fixtures: the real graphs and one sandbox platform built on ego-Facebook (seed 7)."""

from __future__ import annotations

from pathlib import Path

import pytest

from provguard.adapters.graph_files import EdgeList, read_edge_list
from provguard.sandbox import Platform, build_platform

GRAPHS = Path(__file__).resolve().parents[2] / "data" / "graphs"


@pytest.fixture(scope="session")
def ego_facebook() -> EdgeList:
    return read_edge_list(GRAPHS / "snap-ego-facebook.txt")


@pytest.fixture(scope="session")
def college_msg() -> EdgeList:
    return read_edge_list(GRAPHS / "snap-collegemsg.txt")


@pytest.fixture(scope="session")
def platform(ego_facebook: EdgeList) -> Platform:
    return build_platform(ego_facebook, seed=7)


@pytest.fixture(scope="session")
def small_graph(tmp_path_factory: pytest.TempPathFactory) -> EdgeList:
    """The first 1,500 lines of ego-Facebook (a few hundred nodes): quick to build twice."""
    lines = (GRAPHS / "snap-ego-facebook.txt").read_text().splitlines()[:1500]
    path = tmp_path_factory.mktemp("graphs") / "small.txt"
    path.write_text("\n".join(lines) + "\n")
    return read_edge_list(path)

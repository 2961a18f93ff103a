"""Fixtures of the data-plane tests: a PostgreSQL schema of our own (PROVGUARD_TEST_PG_URL; skipped
locally without it, a failure under CI) and the demo's labelled profiles built by the sandbox on
the real ego-Facebook graph (seed 7, as ``provguard run``)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from provguard.policy import load_policy_dir
from provguard.provenance import default_registry
from provguard.sqlgen import QueryPolicy

ROOT = Path(__file__).resolve().parents[2]
PG_ENV = "PROVGUARD_TEST_PG_URL"
AT = datetime(2019, 6, 1, tzinfo=UTC)
HASH_KEY = b"provguard-dataplane-test-key"


@pytest.fixture(scope="session")
def pg() -> Iterator[object]:
    url = os.environ.get(PG_ENV)
    if not url:
        message = f"{PG_ENV} is not set (run .ci/postgres.sh to start a PostgreSQL server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from provguard.adapters.data_postgres import PostgresEngine

    engine = PostgresEngine(url, schema=f"dataplane_{uuid.uuid4().hex[:12]}")
    yield engine
    engine.drop_schema()
    engine.close()


@pytest.fixture(scope="session")
def mask_policy() -> QueryPolicy:
    return QueryPolicy(
        load_policy_dir(ROOT / "tests" / "golden" / "sqlgen" / "policy-masks.yaml"),
        default_registry(),
        app="douyin",
        purpose="social.friend_recommendation",
        at=AT,
        hash_key=HASH_KEY,
    )


@pytest.fixture(scope="session")
def injunction() -> QueryPolicy:
    return QueryPolicy(
        load_policy_dir(ROOT / "policies"),
        default_registry(),
        app="douyin",
        purpose="social.friend_recommendation",
        at=AT,
    )


@pytest.fixture(scope="session")
def demo_profiles() -> pa.Table:
    """The labelled ``profiles`` table of the demo: sandbox platform on SNAP ego-Facebook (seed
    7), labelled from its grants by the main job's loader."""
    from provguard.adapters.graph_files import read_edge_list
    from provguard.job.ingest import label_profiles
    from provguard.sandbox import build_platform

    platform = build_platform(
        read_edge_list(ROOT / "data" / "graphs" / "snap-ego-facebook.txt"), seed=7
    )
    return label_profiles(platform.app_profiles, platform.grants, default_registry())

"""A small real output folder served by the provguard service (loopback only)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from provguard.service import ApiKeys, Client, ServiceSettings, create_app

_spec = importlib.util.spec_from_file_location(
    "report_conftest", Path(__file__).parents[1] / "report" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_report)
build_small_store = _report.build_small_store
add_campaign = _report.add_campaign
add_revocations = _report.add_revocations
run_small_grants_stage = _report.run_small_grants_stage
copy_registry = _report.copy_registry
T0 = _report.T0

KEYS = {"douyin": "key-douyin", "duoshan": "key-duoshan", "auditor": "key-auditor"}
DENY_BODY = {
    "action": "use",
    "category": "user.avatar",
    "origins": ["wechat"],
    "purpose": "social.friend_recommendation",
}
"""Decided now (no ``at``): a client app's key may not ask about another time (PG521); the
stores of these tests record no final judgment, so the injunction is in force now."""


def api_keys() -> ApiKeys:
    keys = ApiKeys()
    keys.add(KEYS["douyin"], Client("douyin-prod", "douyin", "app"))
    keys.add(KEYS["duoshan"], Client("duoshan-prod", "duoshan", "app"))
    keys.add(KEYS["auditor"], Client("court-auditor", "", "auditor"))
    return keys


def hdr(who: str) -> dict[str, str]:
    return {"X-API-Key": KEYS[who]}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "out"
    build_small_store(root, Path(__file__).parents[2] / "policies")
    return root


@pytest.fixture
def client(store: Path) -> Iterator[TestClient]:
    settings = ServiceSettings(
        store=store, policy=Path(__file__).parents[2] / "policies", api_keys=api_keys()
    )
    with TestClient(create_app(settings)) as c:
        yield c

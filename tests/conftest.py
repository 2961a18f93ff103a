from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def injunction_path() -> Path:
    return ROOT / "policies" / "cn-tj-binhai-2019-douyin-duoshan.yaml"

"""Schema-driven fuzzing of the API (schemathesis): no input makes the service answer 500, and
every error body carries a provguard error code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from provguard.service import ServiceSettings, create_app

from .conftest import api_keys, build_small_store

ROOT = Path(__file__).parents[2]


def _app() -> object:
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="pg-fuzz-"))
    build_small_store(tmp / "out", ROOT / "policies")
    return create_app(
        ServiceSettings(store=tmp / "out", policy=ROOT / "policies", api_keys=api_keys())
    )


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


@pytest.mark.parametrize("who", ["key-douyin", "key-auditor"])
@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_server_errors(case: schemathesis.Case[Any], who: str) -> None:
    response = case.call(headers={"X-API-Key": who})
    assert response.status_code < 500, (case.method, case.path, response.text)
    if response.status_code >= 400:
        err = response.json()["error"]
        assert err["code"].startswith("PG") and err["message"]

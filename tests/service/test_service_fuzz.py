"""Schema-driven fuzzing of the API (schemathesis): no input makes the service answer 500, and
every error body carries a provguard error code -- on the OAuth endpoints inside an RFC 6749
section 5.2 body (``error`` is the RFC error code), elsewhere in the provguard body."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from provguard.service import ServiceSettings, create_app

from .conftest import api_keys, build_small_store

ROOT = Path(__file__).parents[2]
# RFC 6749 section 5.2, RFC 7009 section 2.2.1, RFC 8693 section 2.2.2
OAUTH_ERRORS = {
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "invalid_target",
    "unsupported_token_type",
}


def _app() -> object:
    import tempfile

    from provguard.adapters.grant_store import SqlGrantStore
    from provguard.grants.crypto import TokenCipher, generate_key

    tmp = Path(tempfile.mkdtemp(prefix="pg-fuzz-"))
    build_small_store(tmp / "out", ROOT / "policies")
    # a grant registry, so the OAuth endpoints reach the token-exchange gate and the cascade
    key_file = tmp / "token.key"
    key_file.write_text(generate_key())
    registry = SqlGrantStore(tmp / "grants.db", TokenCipher.from_env_or_file(key_file))
    for app in ("douyin", "duoshan"):
        registry.register_app(app, f"operator of {app}", f"{app}-secret")
    registry.close()
    return create_app(
        ServiceSettings(
            store=tmp / "out",
            policy=ROOT / "policies",
            api_keys=api_keys(),
            grant_db=str(tmp / "grants.db"),
            token_key_file=key_file,
        )
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
        body = response.json()
        if case.path.startswith("/v1/oauth2/"):
            assert set(body) >= {"error", "error_description", "code"}, body
            assert body["error"] in OAUTH_ERRORS and body["code"].startswith("PG")
            if response.status_code != 405:  # a method the endpoint does not have
                want = 401 if body["error"] == "invalid_client" else 400
                assert response.status_code == want, body
            cache = response.headers["cache-control"]
            assert (cache if isinstance(cache, str) else cache[0]) == "no-store"
            return
        err = body["error"]
        assert err["code"].startswith("PG") and err["message"]

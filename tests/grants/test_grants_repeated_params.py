"""RFC 6749 sections 3.1 / 3.2: a request or response parameter given more than once is refused
(400 ``invalid_request``, PG150) by the grant registry's own server, never last-wins: on the
token exchange, account linking, revocation and the sign-in callback. The check is the one the
provguard service uses (:func:`provguard.grants.params.single_valued`); both servers answer a
repeated parameter with the same RFC 6749 section 5.2 body."""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from provguard.grants.errors import GrantInputError
from provguard.grants.model import ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT
from provguard.grants.params import single_valued

from .conftest import GRANTED_EARLY, RP_SECRETS, World
from .test_grants_bad_input import data_counts

BEFORE_ORDER = datetime(2019, 2, 1, tzinfo=UTC)
PAIRS = st.lists(
    st.tuples(st.sampled_from(["a", "b", "token", "state", "", "é"]), st.text(max_size=5)),
    max_size=8,
)


@given(PAIRS)
def test_single_valued_refuses_exactly_the_repeated_names(pairs: list[tuple[str, str]]) -> None:
    counts = Counter(name for name, _ in pairs)
    repeated = [n for n in dict.fromkeys(name for name, _ in pairs) if counts[n] > 1]
    if not repeated:
        assert single_valued(pairs) == dict(pairs)
        return
    with pytest.raises(GrantInputError) as err:
        single_valued(pairs)
    assert err.value.code == "PG150" and err.value.oauth_error == "invalid_request"
    # every repeated name is named, in order of first repetition; no value leaks
    named = err.value.message.split(" given more than once")[0]
    assert named == "parameter " + ", ".join(f"'{n}'" for n in repeated_in_order(pairs))
    assert set(repeated) == set(repeated_in_order(pairs))


def repeated_in_order(pairs: list[tuple[str, str]]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for name, _ in pairs:
        if name in seen and name not in out:
            out.append(name)
        seen.add(name)
    return out


def _creds(client: str = "duoshan") -> list[tuple[str, str]]:
    return [("client_id", client), ("client_secret", RP_SECRETS[client])]


def _post(world: World, path: str, pairs: list[tuple[str, str]]) -> httpx.Response:
    """POST a form with the pairs in order (repeats kept; httpx encodes a list value as
    repeated parameters)."""
    form: dict[str, list[str]] = {}
    for name, value in pairs:
        form.setdefault(name, []).append(value)
    return httpx.post(f"{world.service_url}{path}", data=form, timeout=10)


def _refusals(world: World) -> list[tuple[str, object]]:
    return [
        (str(e.payload["code"]), e.payload.get("door"))
        for e in world.audit.entries(kind="grant.refused")
    ]


def _assert_refused(r: httpx.Response, name: str) -> None:
    assert r.status_code == 400, r.text
    body = r.json()
    assert (body["error"], body["code"]) == ("invalid_request", "PG150")
    assert f"'{name}' given more than once" in body["error_description"]
    assert r.headers["cache-control"] == "no-store"


def test_repeated_form_parameters_are_refused(world: World) -> None:
    alice = world.sign_in("alice").json()  # signed in after the order: a transfer is denied
    bob = world.sign_in_at("bob", GRANTED_EARLY)
    world.store.record_first_use(bob["grant"], "duoshan", BEFORE_ORDER)  # grandfathered
    before = data_counts(world)
    exchange = [
        ("grant_type", TOKEN_EXCHANGE_GRANT),
        ("subject_token_type", ACCESS_TOKEN_TYPE),
        *_creds(),
    ]
    # last-wins would have exchanged bob's (permitted) token after alice's had been looked at
    r = _post(
        world,
        "/oauth2/token",
        [
            ("subject_token", alice["session_token"]),
            *exchange,
            ("subject_token", bob["session_token"]),
        ],
    )
    _assert_refused(r, "subject_token")
    r = _post(
        world, "/oauth2/token", [*exchange, ("grant_type", "password"), ("subject_token", "t")]
    )
    _assert_refused(r, "grant_type")
    r = _post(
        world,
        "/link",
        [
            ("subject_token", bob["session_token"]),
            ("subject_token", bob["session_token"]),
            *_creds(),
        ],
    )
    _assert_refused(r, "subject_token")
    # an empty second value is a repetition too; the grant stays active
    r = _post(
        world,
        "/oauth2/revoke",
        [("token", alice["session_token"]), ("token", ""), *_creds("douyin")],
    )
    _assert_refused(r, "token")
    assert world.store.grant(alice["grant"]).status == "active"  # type: ignore[union-attr]
    r = _post(world, "/oauth2/token", [*exchange, ("client_id", "duoshan"), ("subject_token", "x")])
    _assert_refused(r, "client_id")
    assert data_counts(world) == before  # nothing exchanged, linked, revoked or recorded
    world.service.flush()
    assert _refusals(world) == [
        ("PG150", "token_exchange"),
        ("PG150", "token_exchange"),
        ("PG150", "account_link"),
        ("PG150", "revoke"),
        ("PG150", "token_exchange"),
    ]
    # the same requests, each parameter once, go through
    ok = _post(world, "/oauth2/token", [("subject_token", bob["session_token"]), *exchange])
    assert ok.status_code == 200, ok.text
    assert ok.json()["issued_token_type"] == ACCESS_TOKEN_TYPE


def test_repeated_callback_parameter_is_refused_and_keeps_the_state(world: World) -> None:
    """The authorization response (RFC 6749 section 3.1): a callback with ``state`` (or
    ``code``) twice is refused before the state is consumed, so the genuine callback still
    completes."""
    before = data_counts(world)
    with httpx.Client(follow_redirects=False, timeout=10) as ua:
        start = ua.get(f"{world.service_url}/login/wechat/douyin/start")
        page = ua.get(start.headers["location"])
        m = re.search(r'name="request_id" value="([^"]+)"', page.text)
        assert m is not None
        consent = ua.post(
            f"{world.platform_url}/sandbox/consent",
            data={"request_id": m.group(1), "user": "carol", "decision": "allow"},
        )
        assert consent.status_code == 302, consent.text
        callback = httpx.URL(consent.headers["location"])
        _assert_refused(ua.get(callback.copy_add_param("state", callback.params["state"])), "state")
        _assert_refused(ua.get(callback.copy_add_param("code", "another-code")), "code")
        assert data_counts(world) == before
        good = ua.get(callback)
        assert good.status_code == 200, good.text
    refused = [e.payload for e in world.audit.entries(kind="grant.refused")]
    assert [(p["code"], p.get("app")) for p in refused] == [("PG150", "douyin")] * 2


def test_both_servers_answer_a_repeated_parameter_alike(world: World, tmp_path: Path) -> None:
    """The provguard service's ``/v1/oauth2/token`` and the registry's ``/oauth2/token`` give the
    same RFC 6749 section 5.2 body for the same repeated form (shared check)."""
    from provguard.service import ApiKeys, Client, ServiceSettings, create_app
    from provguard.service import tokens as service_tokens

    assert service_tokens.single_valued is single_valued  # one check, not a copy
    keys = ApiKeys()
    keys.add("key-duoshan", Client("duoshan-prod", "duoshan", "app"))
    from provguard.adapters.audit_sqlite import SqliteAuditLog
    from provguard.adapters.control_sqlite import SqlControlStore

    root = Path(__file__).parents[2]
    (tmp_path / "out").mkdir()
    SqlControlStore(tmp_path / "out" / "control.db").engine.dispose()
    SqliteAuditLog(tmp_path / "out" / "control.db").close()
    settings = ServiceSettings(store=tmp_path / "out", policy=root / "policies", api_keys=keys)
    pairs = [
        ("grant_type", TOKEN_EXCHANGE_GRANT),
        ("subject_token", "a"),
        ("subject_token", "b"),
        ("audience", "duoshan"),
        ("audience", "duoshan"),
    ]
    standalone = _post(world, "/oauth2/token", [*pairs, *_creds()])
    with TestClient(create_app(settings)) as c:
        via_key = c.post(
            "/v1/oauth2/token",
            content="&".join(f"{k}={v}" for k, v in pairs).replace(":", "%3A"),
            headers={
                "X-API-Key": "key-duoshan",
                "content-type": "application/x-www-form-urlencoded",
            },
        )
    assert standalone.status_code == via_key.status_code == 400
    a, b = standalone.json(), via_key.json()
    assert (a["error"], a["code"]) == (b["error"], b["code"]) == ("invalid_request", "PG150")
    assert "'subject_token', 'audience' given more than once" in a["error_description"]
    assert a["error_description"] == b["error_description"]

"""Token exchange, revocation, scans and campaigns over HTTP, with tenant isolation; auth before
validation; plain dates for ``at``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.adapters.campaign_sqlite import SqlCampaignStore
from provguard.adapters.grant_store import SqlGrantStore
from provguard.campaign.model import Target
from provguard.grants.crypto import TokenCipher, generate_key
from provguard.grants.model import ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT, GrantRecord, IssuedToken
from provguard.service import ApiKeys, Client, ServiceSettings, create_app
from provguard.similarity.pictures import hamming

from .conftest import DENY_BODY, KEYS, api_keys, hdr

ROOT = Path(__file__).parents[2]
CAMPAIGN = "duoshan-no-platform-profile@2019-06-30"
T_CAMPAIGN = datetime(2019, 6, 30, tzinfo=UTC)


# ------------------------------------------------------------------------------ fixtures


def _keys() -> ApiKeys:
    keys = api_keys()
    keys.add("key-douyin-lite", Client("lite", "douyin-lite", "app"))
    return keys


def _add_campaign(store: Path) -> None:
    db = SqlCampaignStore(store / "control.db")
    targets = [
        Target("duoshan", 1, "wechat", "handle,avatar", "recorded", 1.0, None),
        Target("duoshan", 2, "qq", "avatar", "inferred", 0.9, None),
        Target("duoshan", 3, "wechat", "handle", "recorded", 1.0, "chinese_name"),
        Target("douyin", 7, "wechat", "avatar", "recorded", 1.0, None),
    ]
    db.start(
        CAMPAIGN, "duoshan-no-platform-profile", "tianjin-2019-injunction", targets, T_CAMPAIGN
    )
    db.apply_rescan(
        CAMPAIGN,
        [("duoshan", 2, "qq")],
        T_CAMPAIGN + timedelta(days=3),
        ignore_after=timedelta(days=30),
    )
    db.engine.dispose()


@pytest.fixture
def grant_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path, str]:
    """A grant registry: apps douyin, duoshan (other controller), douyin-lite (same controller
    as douyin) and one douyin grant with a session token. Returns (db, key file, token)."""
    monkeypatch.delenv("PROVGUARD_TOKEN_KEY", raising=False)
    key_file = tmp_path / "token.key"
    key_file.write_text(generate_key())
    db = str(tmp_path / "grants.db")
    store = SqlGrantStore(db, TokenCipher.from_env_or_file(key_file))
    store.register_app("douyin", "operator of Douyin", "s1")
    store.register_app("douyin-lite", "operator of Douyin", "s2")
    store.register_app("duoshan", "operator of Duoshan", "s3")
    now = datetime.now(UTC)
    token = "pgs_session_token_of_alice_" + "x" * 16
    store.record_login(
        GrantRecord("grt_alice", "wechat", "douyin", "o-alice", "u-alice", "snsapi_userinfo", now),
        [IssuedToken("app_session", token, now + timedelta(hours=1))],
        [],
        now,
    )
    store.close()
    return db, key_file, token


@pytest.fixture
def full(store: Path, grant_db: tuple[str, Path, str]) -> Iterator[tuple[TestClient, Path, str]]:
    _add_campaign(store)
    db, key_file, token = grant_db
    settings = ServiceSettings(
        store=store,
        policy=ROOT / "policies",
        api_keys=_keys(),
        grant_db=db,
        token_key_file=key_file,
        ack="committed",
    )
    with TestClient(create_app(settings)) as c:
        yield c, store, token


def _exchange(c: TestClient, who_key: str, token: str, **extra: str) -> object:
    form = {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token": token,
        "subject_token_type": ACCESS_TOKEN_TYPE,
        **extra,
    }
    return c.post("/v1/oauth2/token", data=form, headers={"X-API-Key": who_key})


# ------------------------------------------------------------------------------ auth first


@pytest.mark.parametrize(
    "path", ["/v1/decisions", "/v1/decisions/batch", "/v1/scans", "/v1/scans/batch"]
)
def test_unauthenticated_malformed_body_is_401_not_422(client: TestClient, path: str) -> None:
    for content in (b"{not json", b'{"unexpected": 1}', b"[]"):
        r = client.post(path, content=content, headers={"content-type": "application/json"})
        assert r.status_code == 401, (path, content, r.text)
        assert r.json()["error"]["code"] == "PG510"
    bad_key = client.post(path, content=b"{not json", headers={"X-API-Key": "wrong"})
    assert bad_key.status_code == 401
    authed = client.post(
        path, content=b"{not json", headers={**hdr("douyin"), "content-type": "application/json"}
    )
    assert authed.status_code == 422 and authed.json()["error"]["code"] == "PG140"


def test_unauthenticated_form_endpoints_are_401(client: TestClient) -> None:
    for path in ("/v1/oauth2/token", "/v1/oauth2/revoke"):
        r = client.post(path, data={})
        # RFC 6749 section 5.2: failed client authentication is 401 invalid_client
        assert r.status_code == 401 and r.json()["error"] == "invalid_client"
        assert r.json()["code"] == "PG510" and r.json()["error_description"]
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.headers["cache-control"] == "no-store"


# ------------------------------------------------------------------------------ plain dates


def test_decision_at_accepts_a_plain_date_as_midnight_utc(client: TestClient) -> None:
    # another time than now is an auditor's question (an app key gets PG521: test_service_at)
    audit = {**DENY_BODY, "app": "douyin"}
    dated = client.post("/v1/decisions", json={**audit, "at": "2019-06-30"}, headers=hdr("auditor"))
    timed = client.post(
        "/v1/decisions", json={**audit, "at": "2019-06-30T00:00:00Z"}, headers=hdr("auditor")
    )
    assert dated.status_code == 200, dated.text
    a, b = dated.json(), timed.json()
    assert a["effect"] == b["effect"] == "deny"
    assert a["reasons"] == b["reasons"]
    assert datetime.fromisoformat(a["request"]["at"]) == datetime(2019, 6, 30, tzinfo=UTC)
    # a date before the injunction was issued: the rule is not in force yet
    early = client.post(
        "/v1/decisions", json={**audit, "at": "2018-01-01"}, headers=hdr("auditor")
    ).json()
    assert early["effect"] != "deny"
    naive = client.post(
        "/v1/decisions", json={**audit, "at": "2019-06-30T10:00:00"}, headers=hdr("auditor")
    )
    assert naive.status_code == 422 and naive.json()["error"]["code"] == "PG140"


# ------------------------------------------------------------------------------ scans


def _hex_with_flips(base: bytes, bits: int) -> str:
    out = bytearray(base)
    for i in range(bits):
        out[i // 8] ^= 1 << (i % 8)
    return bytes(out).hex()


def test_scan_one_pair_and_a_batch(client: TestClient, store: Path) -> None:
    base = bytes(range(32))
    pair = {
        "provider": "wechat",
        "subject_id": 5,
        "handle": "ＡＬＩＣＥ",  # full-width: equal after NFKC + case folding
        "provider_handle": "alice",
        "picture_pdq": base.hex(),
        "provider_picture_pdq": _hex_with_flips(base, 10),
    }
    r = client.post("/v1/scans", json=pair, headers=hdr("duoshan"))
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["handle_match_kind"] == "normalized" and got["handle_match"] is True
    flipped = bytes.fromhex(str(pair["provider_picture_pdq"]))
    assert got["picture_distance"] == 10 == hamming(base, flipped)
    assert got["picture_match"] is True and got["copied_fields"] == ["handle", "avatar"]
    assert got["inferred_origins"] == ["wechat"]

    far = {**pair, "handle": "bob", "provider_picture_pdq": _hex_with_flips(base, 100)}
    none = {"provider": "qq", "handle": None, "provider_handle": "x"}
    b = client.post("/v1/scans/batch", json={"pairs": [pair, far, none]}, headers=hdr("duoshan"))
    assert b.status_code == 200, b.text
    body = b.json()
    assert [x["copy_match"] for x in body["results"]] == [True, False, False]
    assert body["results"][1]["picture_distance"] == 100 and body["matches"] == 1
    assert body["results"][2]["picture_distance"] is None
    assert body["results"][2]["handle_match_kind"] == "none"

    client.get("/v1/audit/verify", headers=hdr("auditor"))  # flushes the writer
    log = SqliteAuditLog(store / "control.db", create=False)
    scans = list(log.entries(kind="scan"))
    assert [e.payload["pairs"] for e in scans] == [1, 3]
    assert scans[1].payload["matches"] == 1
    assert scans[1].payload["context"] == {"client_app": "duoshan", "key": "duoshan-prod"}
    stored = json.dumps([e.payload for e in scans], ensure_ascii=False)
    assert "ＡＬＩＣＥ" not in stored and "alice" not in stored  # no raw handles in the log
    assert log.verify().ok


def test_scan_rejects_a_bad_hash(client: TestClient) -> None:
    r = client.post(
        "/v1/scans", json={"provider": "wechat", "picture_pdq": "zz"}, headers=hdr("douyin")
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "PG140"


# ------------------------------------------------------------------------------ campaigns


def test_campaign_status_is_per_tenant(full: tuple[TestClient, Path, str]) -> None:
    c, _store, _ = full
    duo = c.get(f"/v1/campaigns/{CAMPAIGN}", headers=hdr("duoshan")).json()
    assert duo["scope"] == "duoshan" and duo["targets"] == 3
    # subject 1 stopped matching (changed), 2 still matches (pending/notified), 3 exempt
    assert duo["states"]["exempt"] == 1 and duo["states"]["changed"] == 1
    assert duo["progress"] == pytest.approx(1 / 2)
    assert duo["history"] == []  # mixes apps: auditors only
    dy = c.get(f"/v1/campaigns/{CAMPAIGN}", headers=hdr("douyin")).json()
    assert dy["targets"] == 1 and dy["states"]["changed"] == 1
    audit = c.get(f"/v1/campaigns/{CAMPAIGN}", headers=hdr("auditor")).json()
    assert audit["targets"] == 4 and audit["scope"] == "all apps"
    assert [p["operation"] for p in audit["history"]][-1] == "rescan"
    assert audit["history"][-1]["counts"] == audit["states"]

    subj = c.get(f"/v1/campaigns/{CAMPAIGN}/subjects", headers=hdr("duoshan")).json()
    assert subj["total"] == 3 and {s["app_id"] for s in subj["subjects"]} == {"duoshan"}
    dys = c.get(f"/v1/campaigns/{CAMPAIGN}/subjects", headers=hdr("douyin")).json()
    assert [(s["app_id"], s["subject_id"]) for s in dys["subjects"]] == [("douyin", 7)]
    lite = c.get(f"/v1/campaigns/{CAMPAIGN}", headers={"X-API-Key": "key-douyin-lite"})
    assert lite.status_code == 404 and lite.json()["error"]["code"] == "PG530"
    assert c.get("/v1/campaigns", headers={"X-API-Key": "key-douyin-lite"}).json() == []
    assert [x["campaign_id"] for x in c.get("/v1/campaigns", headers=hdr("douyin")).json()] == [
        CAMPAIGN
    ]
    missing = c.get("/v1/campaigns/nope", headers=hdr("auditor"))
    assert missing.status_code == 404


# ------------------------------------------------------------------------------ tokens


def test_token_exchange_is_decided_and_isolated(full: tuple[TestClient, Path, str]) -> None:
    c, store, token = full
    grants = c.app.state.provguard.grants  # type: ignore[attr-defined]
    grant = grants.store.grant("grt_alice")
    want = grants.gate.decide(grant, "duoshan", datetime.now(UTC))
    denied = _exchange(c, KEYS["duoshan"], token)
    assert want.effect == "deny"
    # RFC 8693 section 2.2.2 / RFC 6749 section 5.2: 400 invalid_target, with the rule
    assert denied.status_code == 400, denied.text  # type: ignore[attr-defined]
    err = denied.json()  # type: ignore[attr-defined]
    assert err["code"] == "PG159" and err["error"] == "invalid_target"
    assert err["rule"] == want.determining[0].rule_id
    assert err["instrument"] == want.determining[0].instrument_id

    # the injunction forbids the transfer even within the same controller; a differential
    # check against the gate's own decision
    lite_want = grants.gate.decide(grant, "douyin-lite", datetime.now(UTC))
    lite = _exchange(c, "key-douyin-lite", token)
    assert lite.status_code == (200 if lite_want.allowed else 400)  # type: ignore[attr-defined]
    own_want = grants.gate.decide(grant, "douyin", datetime.now(UTC))
    assert own_want.allowed
    own = _exchange(c, KEYS["douyin"], token)
    assert own.status_code == 200, own.text  # type: ignore[attr-defined]
    issued = own.json()  # type: ignore[attr-defined]
    assert issued["token_type"] == "Bearer" and issued["access_token"].startswith("pgx")
    assert 0 < issued["expires_in"] <= 3600

    spoof = _exchange(c, KEYS["duoshan"], token, client_id="douyin-lite")
    # a client_id other than the key's app: the client is not who it claims (invalid_client)
    assert spoof.status_code == 401  # type: ignore[attr-defined]
    assert spoof.json() == {  # type: ignore[attr-defined]
        "error": "invalid_client",
        "error_description": "the key of client app 'duoshan' cannot act as client "
        "'douyin-lite' (tenant isolation)",
        "code": "PG520",
    }
    unregistered = c.post(
        "/v1/oauth2/token",
        data={"subject_token": token, "grant_type": TOKEN_EXCHANGE_GRANT},
        headers=hdr("auditor"),
    )
    # an auditor key acts for no app: it may not use this grant
    assert unregistered.status_code == 400
    assert unregistered.json()["error"] == "unauthorized_client"

    attempts = grants.store.transfer_attempts("grt_alice")
    assert sorted((a.to_app, a.effect) for a in attempts) == [
        ("douyin", own_want.effect),
        ("douyin-lite", lite_want.effect),
        ("duoshan", "deny"),
    ]
    # the registry's outbox reached the service's audit chain
    log = SqliteAuditLog(store / "control.db", create=False)
    events = [e for e in log.entries() if e.kind != "decision" and e.kind != "note"]
    assert sum(1 for e in events if e.payload.get("grant") == "grt_alice") >= 3
    assert log.verify().ok


def test_revocation_by_owner_only(full: tuple[TestClient, Path, str]) -> None:
    c, _store, token = full
    grants = c.app.state.provguard.grants  # type: ignore[attr-defined]
    foreign = c.post("/v1/oauth2/revoke", data={"token": token}, headers=hdr("duoshan"))
    # RFC 7009 section 2.1: a token issued to another client is refused
    assert foreign.status_code == 400, foreign.text
    assert foreign.json()["error"] == "unauthorized_client"
    assert grants.store.grant("grt_alice").status == "active"
    assert c.get("/v1/revocations", headers=hdr("douyin")).json() == []

    own = c.post("/v1/oauth2/revoke", data={"token": token}, headers=hdr("douyin"))
    assert own.status_code == 200, own.text
    job = own.json()["job"]
    assert own.json()["revoked"] is True and job
    assert grants.store.grant("grt_alice").status != "active"
    mine = c.get("/v1/revocations", headers=hdr("douyin")).json()
    assert [j["job_id"] for j in mine] == [job] and mine[0]["grant_id"] == "grt_alice"
    assert mine[0]["state"] == "quarantined" and mine[0]["expected"]["tokens"] >= 1
    assert c.get("/v1/revocations", headers=hdr("duoshan")).json() == []
    # revoked: the token no longer exchanges
    after = _exchange(c, "key-douyin-lite", token)
    assert after.status_code == 400, after.text  # type: ignore[attr-defined]


def test_token_endpoints_without_registry(client: TestClient) -> None:
    """No grant registry: no token-exchange grant and no revocable token type (RFC 6749 5.2,
    RFC 7009 2.2.1), 400 with code PG540; the revocations list keeps its provguard body."""
    r = client.post("/v1/oauth2/revoke", data={"token": "t"}, headers=hdr("douyin"))
    assert r.status_code == 400 and r.json()["error"] == "unsupported_token_type"
    assert r.json()["code"] == "PG540"
    form = {"grant_type": TOKEN_EXCHANGE_GRANT, "subject_token": "t"}
    r = client.post("/v1/oauth2/token", data=form, headers=hdr("douyin"))
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"
    r = client.get("/v1/revocations", headers=hdr("douyin"))
    assert r.status_code == 409 and r.json()["error"]["code"] == "PG540"


# ------------------------------------------------------------------------------ schema


def test_openapi_lists_the_new_endpoints(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for p in (
        "/v1/oauth2/token",
        "/v1/oauth2/revoke",
        "/v1/revocations",
        "/v1/scans",
        "/v1/scans/batch",
        "/v1/campaigns",
        "/v1/campaigns/{campaign_id}",
        "/v1/campaigns/{campaign_id}/subjects",
    ):
        assert p in paths, p
    err = paths["/v1/scans"]["post"]["responses"]["401"]
    assert err["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")


def test_concurrent_token_requests_audit_each_event_once(
    full: tuple[TestClient, Path, str],
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    c, store, token = full

    def attempt(i: int) -> int:
        key = KEYS["duoshan"] if i % 2 else "key-douyin-lite"
        return int(_exchange(c, key, token).status_code)  # type: ignore[attr-defined]

    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(attempt, range(24)))
    assert codes.count(400) == 24 - codes.count(200)
    grants = c.app.state.provguard.grants  # type: ignore[attr-defined]
    assert len(grants.store.transfer_attempts("grt_alice")) == 24
    assert grants.store.outbox() == []  # every event delivered
    c.get("/v1/audit/verify", headers=hdr("auditor"))
    log = SqliteAuditLog(store / "control.db", create=False)
    ids = [e.payload["event_id"] for e in log.entries() if "event_id" in e.payload]
    assert len(ids) == len(set(ids)) >= 24  # each outbox event appended exactly once
    assert log.verify().ok


# ------------------------------------------------------------------------------ RFC errors


@pytest.mark.parametrize(
    ("form", "error", "needle"),
    [
        # RFC 6749 section 5.2: any grant type but token exchange, even without its parameters
        ({"grant_type": "password", "username": "a", "password": "b"}, "unsupported_grant_type",
         "grant_type must be"),
        ({"grant_type": "client_credentials"}, "unsupported_grant_type", "grant_type must be"),
        # missing or malformed parameters: invalid_request
        ({}, "invalid_request", "grant_type is required"),
        ({"grant_type": TOKEN_EXCHANGE_GRANT}, "invalid_request", "subject_token is required"),
        ({"grant_type": TOKEN_EXCHANGE_GRANT, "subject_token": "x" * 5000}, "invalid_request",
         "subject_token"),
        ({"grant_type": TOKEN_EXCHANGE_GRANT, "subject_token": "t", "actor_token": "a"},
         "invalid_request", "delegation"),
        ({"grant_type": TOKEN_EXCHANGE_GRANT, "subject_token": "t", "subject_token_type": "x"},
         "invalid_request", "subject_token_type"),
        # RFC 8693 section 2.2.2
        ({"grant_type": TOKEN_EXCHANGE_GRANT, "subject_token": "t", "resource": "https://x"},
         "invalid_target", "resource"),
        ({"grant_type": TOKEN_EXCHANGE_GRANT, "subject_token": "t", "scope": "read"},
         "invalid_scope", "scope"),
        ({"grant_type": TOKEN_EXCHANGE_GRANT, "subject_token": "not-a-token"},
         "invalid_request", ""),
    ],
)  # fmt: skip
def test_token_endpoint_errors_are_rfc_6749_bodies(
    full: tuple[TestClient, Path, str], form: dict[str, str], error: str, needle: str
) -> None:
    c, _store, _token = full
    r = c.post("/v1/oauth2/token", data=form, headers=hdr("duoshan"))
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"] == error and body["code"].startswith("PG15"), body
    assert needle in body["error_description"]
    assert set(body) <= {"error", "error_description", "code", "rule", "instrument"}
    assert r.headers["cache-control"] == "no-store" and r.headers["pragma"] == "no-cache"


def test_revoke_endpoint_errors_and_the_rest_keeps_provguard_bodies(
    full: tuple[TestClient, Path, str],
) -> None:
    c, _store, _token = full
    missing = c.post("/v1/oauth2/revoke", data={}, headers=hdr("douyin"))
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"
    assert "token" in missing.json()["error_description"]
    wrong_method = c.get("/v1/oauth2/token", headers=hdr("douyin"))
    assert wrong_method.status_code == 405 and wrong_method.json()["error"] == "invalid_request"
    # the rest of the API: provguard bodies, 422 for a malformed request
    bad = c.post("/v1/decisions", json={"action": 1}, headers=hdr("douyin"))
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "PG140"
    schema = c.get("/openapi.json").json()["paths"]
    token_400 = schema["/v1/oauth2/token"]["post"]["responses"]["400"]
    assert token_400["content"]["application/json"]["schema"]["$ref"].endswith("/OAuthErrorBody")
    assert "403" not in schema["/v1/oauth2/token"]["post"]["responses"]


# ------------------------------------------------------------------------------ RFC 6749 3.2

FORM = {"content-type": "application/x-www-form-urlencoded"}


def test_repeated_form_parameter_is_invalid_request(full: tuple[TestClient, Path, str]) -> None:
    """RFC 6749 section 3.2: parameters MUST NOT be included more than once -> 400
    invalid_request (PG150), whichever value comes last; nothing is exchanged or revoked."""
    c, _store, token = full
    grants = c.app.state.provguard.grants  # type: ignore[attr-defined]
    both = (
        f"grant_type=password&grant_type={TOKEN_EXCHANGE_GRANT}&subject_token={token}",
        f"grant_type={TOKEN_EXCHANGE_GRANT}&subject_token={token}&grant_type=password",
        f"grant_type={TOKEN_EXCHANGE_GRANT}&subject_token={token}&subject_token=other",
    )
    for body in both:
        r = c.post("/v1/oauth2/token", content=body, headers={**hdr("douyin"), **FORM})
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"] == "invalid_request" and r.json()["code"] == "PG150"
        assert "more than once" in r.json()["error_description"]
        assert r.headers["cache-control"] == "no-store"
    r = c.post(
        "/v1/oauth2/revoke",
        content=f"token={token}&token={token}",
        headers={**hdr("douyin"), **FORM},
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_request", r.text
    assert "'token'" in r.json()["error_description"]
    assert grants.store.grant("grt_alice").status == "active"  # nothing revoked
    # each refusal is in the audit chain, as at the grant registry's own server
    log = SqliteAuditLog(_store / "control.db", create=False)
    refused = [e.payload for e in log.entries(kind="grant.refused")]
    log.close()
    assert [(p["code"], p["door"], p["client"]) for p in refused if p["code"] == "PG150"] == [
        ("PG150", "token_exchange", "douyin")
    ] * 3 + [("PG150", "revoke", "douyin")]
    # unauthenticated: still 401 first; once each: the same form is accepted
    r = c.post("/v1/oauth2/revoke", content=f"token={token}&token={token}", headers=FORM)
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    ok = c.post("/v1/oauth2/revoke", content=f"token={token}", headers={**hdr("douyin"), **FORM})
    assert ok.status_code == 200 and ok.json()["revoked"] is True, ok.text


def test_repeated_parameter_without_registry_is_also_refused(client: TestClient) -> None:
    body = f"grant_type=password&grant_type={TOKEN_EXCHANGE_GRANT}&subject_token=t"
    r = client.post("/v1/oauth2/token", content=body, headers={**hdr("douyin"), **FORM})
    assert r.status_code == 400 and r.json()["error"] == "invalid_request", r.text

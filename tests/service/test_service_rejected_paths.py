"""Session 7 (fresh user 9, G19): every refusal of a valid key's request *for its input* that a
handler raises after validation is audit-logged as ``request.rejected`` (code, error class,
status, method, path, key) -- not only the 422s of request validation. Before, an unknown scan
provider, an unknown origin in a (batch) decision request, an auditor key's request without
``app``, impossible grant times and a repeated OAuth parameter (without a grant registry) were
answered 4xx and left no trace. Refusals another entry already records (``decision.refused``,
``grant.refused``) are not written twice; 401/403/404 answers are not input refusals.

Also G12: ``/healthz`` ``written_by_this_process`` is the number of entries this process wrote
(``last_seq_written`` the seq of the newest), not the log's last entry number."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.grants.model import ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT
from provguard.service import ServiceSettings, create_app
from provguard.service.app import REJECTED_KIND

from .conftest import DENY_BODY, api_keys, build_small_store, hdr
from .test_service_endpoints import grant_db  # noqa: F401  (fixture)

ROOT = Path(__file__).parents[2]
PAIR = {
    "subject_id": 1,
    "handle": "wxAlice",
    "provider_handle": "wxAlice",
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rejected") / "out"
    build_small_store(root, ROOT / "policies")
    return root


@pytest.fixture(scope="module")
def svc(folder: Path) -> Iterator[TestClient]:
    settings = ServiceSettings(
        store=folder, policy=ROOT / "policies", api_keys=api_keys(), ack="committed"
    )
    with TestClient(create_app(settings)) as c:
        yield c


def _head(folder: Path) -> int:
    with SqliteAuditLog(folder / "control.db", create=False) as log:
        head = log.head()
    return 0 if head is None else head.seq


def _after(folder: Path, seq: int) -> list[tuple[str, dict[str, Any]]]:
    with SqliteAuditLog(folder / "control.db", create=False) as log:
        return [(e.kind, dict(e.payload)) for e in log.entries(start=seq + 1)]


def _one_rejection(
    svc: TestClient, folder: Path, method: str, path: str, who: str, **kw: Any
) -> tuple[Any, dict[str, Any]]:
    """Send the request; return the response and the single entry it appended, which must be
    a ``request.rejected`` entry."""
    before = _head(folder)
    r = svc.request(method, path, **{"headers": hdr(who), **kw})
    new = _after(folder, before)
    assert [k for k, _ in new] == [REJECTED_KIND], (r.status_code, r.text, new)
    return r, new[0][1]


def _check(entry: dict[str, Any], code: str, status: int, path: str, who: str) -> None:
    assert (entry["code"], entry["status"], entry["method"], entry["path"]) == (
        code,
        status,
        "POST",
        path,
    )
    assert entry["client_app"] == ("" if who == "auditor" else who)
    assert entry["key"] == {"douyin": "douyin-prod", "auditor": "court-auditor"}[who]


def test_unknown_scan_provider(svc: TestClient, folder: Path) -> None:
    r, entry = _one_rejection(
        svc, folder, "POST", "/v1/scans", "douyin", json={**PAIR, "provider": "WeChat "}
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "PG140"
    _check(entry, "PG140", 422, "/v1/scans", "douyin")
    assert entry["error"] == "RequestError" and "unknown provider origin" in entry["reason"]
    assert entry["errors"] == []
    assert "wxAlice" not in repr(entry)  # the handles are not in the entry


def test_unknown_scan_provider_in_a_batch(svc: TestClient, folder: Path) -> None:
    pairs = [{**PAIR, "provider": "wechat"}, {**PAIR, "provider": "weixin"}]
    r, entry = _one_rejection(
        svc, folder, "POST", "/v1/scans/batch", "douyin", json={"pairs": pairs}
    )
    assert r.status_code == 422
    _check(entry, "PG140", 422, "/v1/scans/batch", "douyin")
    assert entry["reason"].startswith("pairs[1]: unknown provider origin 'weixin'")


def test_unknown_origin_in_a_batch_decision(svc: TestClient, folder: Path) -> None:
    batch = {"requests": [DENY_BODY, {**DENY_BODY, "origins": ["wechatt"]}]}
    r, entry = _one_rejection(svc, folder, "POST", "/v1/decisions/batch", "douyin", json=batch)
    assert r.status_code == 422 and r.json()["error"]["code"] == "PG140"
    _check(entry, "PG140", 422, "/v1/decisions/batch", "douyin")
    assert entry["reason"].startswith("requests[1]: unknown origin(s) 'wechatt'")


def test_unknown_origin_in_a_decision(svc: TestClient, folder: Path) -> None:
    body = {**DENY_BODY, "origins": ["wechatt"]}
    r, entry = _one_rejection(svc, folder, "POST", "/v1/decisions", "douyin", json=body)
    assert r.status_code == 422
    _check(entry, "PG140", 422, "/v1/decisions", "douyin")


def test_unknown_category_in_a_decision(svc: TestClient, folder: Path) -> None:
    body = {**DENY_BODY, "category": "user.avatarr"}
    r, entry = _one_rejection(svc, folder, "POST", "/v1/decisions", "douyin", json=body)
    assert r.status_code == 422
    _check(entry, "PG140", 422, "/v1/decisions", "douyin")
    assert "user.avatarr" in entry["reason"]


def test_auditor_request_without_app(svc: TestClient, folder: Path) -> None:
    r, entry = _one_rejection(svc, folder, "POST", "/v1/decisions", "auditor", json=DENY_BODY)
    assert r.status_code == 422
    _check(entry, "PG140", 422, "/v1/decisions", "auditor")
    assert entry["role"] == "auditor" and "must name the 'app'" in entry["reason"]


def test_impossible_grant_times(svc: TestClient, folder: Path) -> None:
    now = datetime.now(UTC)
    body = {
        "action": "transfer",
        "category": "grant.login",
        "origins": ["wechat"],
        "recipient": "duoshan",
        "grant_granted_at": now.isoformat(),
        "grant_first_used_by_recipient_at": (now - timedelta(days=1)).isoformat(),
    }
    r, entry = _one_rejection(svc, folder, "POST", "/v1/decisions", "douyin", json=body)
    assert r.status_code == 422
    _check(entry, "PG140", 422, "/v1/decisions", "douyin")
    assert "precedes 'grant_granted_at'" in entry["reason"]


@pytest.mark.parametrize("path", ["/v1/oauth2/token", "/v1/oauth2/revoke"])
def test_repeated_oauth_parameter_without_a_registry(
    svc: TestClient, folder: Path, path: str
) -> None:
    form = "token=a&token=b&subject_token=a&subject_token=b"
    r, entry = _one_rejection(
        svc,
        folder,
        "POST",
        path,
        "douyin",
        content=form,
        headers={**hdr("douyin"), "content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    _check(entry, r.json()["code"], 400, path, "douyin")
    assert entry["error"] == "GrantInputError"


def test_validation_refusals_still_name_their_locations(svc: TestClient, folder: Path) -> None:
    r, entry = _one_rejection(
        svc, folder, "POST", "/v1/scans", "douyin", json={**PAIR, "provider": 7}
    )
    assert r.status_code == 422
    _check(entry, "PG140", 422, "/v1/scans", "douyin")
    assert entry["error"] == "RequestValidationError"
    assert ["body", "provider"] in [e["loc"] for e in entry["errors"]]


def test_what_is_not_an_input_refusal_writes_no_rejection(svc: TestClient, folder: Path) -> None:
    before = _head(folder)
    assert svc.post("/v1/scans", json={**PAIR, "provider": "x"}).status_code == 401  # no key
    assert svc.get("/v1/grants", headers=hdr("auditor")).status_code == 403
    assert svc.get("/v1/grants/nope", headers=hdr("douyin")).status_code == 404
    assert _after(folder, before) == []
    # another app: refused 403 and recorded once, as decision.refused
    r = svc.post("/v1/decisions", json={**DENY_BODY, "app": "duoshan"}, headers=hdr("douyin"))
    assert r.status_code == 403
    assert [k for k, _ in _after(folder, before)] == ["decision.refused"]
    # a good scan is one scan entry
    before = _head(folder)
    ok = svc.post("/v1/scans", json={**PAIR, "provider": "wechat"}, headers=hdr("douyin"))
    assert ok.status_code == 200 and ok.json()["copy_match"] is True
    assert [k for k, _ in _after(folder, before)] == ["scan"]


def test_a_refusal_the_grant_registry_records_is_not_written_twice(
    tmp_path: Path,
    grant_db: tuple[str, Path, str],  # noqa: F811
) -> None:
    """With a grant registry the token endpoints' refusals are ``grant.refused`` entries (the
    gate's, the repeated-parameter check's, and -- new -- a revocation refused as the registry's
    own ``/oauth2/revoke`` refuses it), never also ``request.rejected``."""
    db, key_file, token = grant_db
    root = tmp_path / "out"
    build_small_store(root, ROOT / "policies")
    settings = ServiceSettings(
        store=root,
        policy=ROOT / "policies",
        api_keys=api_keys(),
        grant_db=db,
        token_key_file=key_file,
        ack="committed",
    )
    with TestClient(create_app(settings)) as c:
        before = _head(root)
        form = {
            "grant_type": TOKEN_EXCHANGE_GRANT,
            "subject_token": "not-a-token",
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "scope": "x",
        }
        r = c.post("/v1/oauth2/token", data=form, headers=hdr("duoshan"))
        assert r.status_code == 400 and r.json()["error"] == "invalid_scope"
        twice = "token=a&token=b"
        r = c.post(
            "/v1/oauth2/revoke",
            content=twice,
            headers={**hdr("douyin"), "content-type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 400
        # duoshan revoking a token of douyin's grant: refused, and the grant stays active
        r = c.post("/v1/oauth2/revoke", data={"token": token}, headers=hdr("duoshan"))
        assert r.status_code == 400 and r.json()["error"] == "unauthorized_client"
        mine = c.get("/v1/grants/grt_alice", headers=hdr("douyin"))
        assert mine.status_code == 200 and mine.json()["status"] == "active"
        refusals = [
            (k, p["code"], p.get("door"))
            for k, p in _after(root, before)
            if k in ("grant.refused", REJECTED_KIND)  # (the outbox also sends grant.login)
        ]
        assert refusals == [
            ("grant.refused", "PG150", "token_exchange"),
            ("grant.refused", "PG150", "revoke"),
            ("grant.refused", r.json()["code"], "revoke"),
        ]


# ------------------------------------------------------------------------------ G12


def test_healthz_counts_this_process_entries(folder: Path) -> None:
    """Two services over one log (as two workers): each counts what it wrote, whatever the
    other appended in between; ``last_seq_written`` is the newest seq of its own."""
    settings = ServiceSettings(
        store=folder, policy=ROOT / "policies", api_keys=api_keys(), ack="committed"
    )
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        start = _head(folder)
        assert start > 10  # the log's head is far from what a fresh process wrote
        ha = a.get("/healthz").json()["audit"]
        assert (ha["written_by_this_process"], ha["last_seq_written"]) == (0, 0)
        assert ha["last_seq"] == start
        for _ in range(3):
            assert a.post("/v1/decisions", json=DENY_BODY, headers=hdr("douyin")).status_code == 200
        assert b.post("/v1/decisions", json=DENY_BODY, headers=hdr("douyin")).status_code == 200
        assert (
            a.post("/v1/scans", json={**PAIR, "provider": "qqq"}, headers=hdr("douyin")).status_code
            == 422
        )
        ha = a.get("/healthz").json()["audit"]
        hb = b.get("/healthz").json()["audit"]
        assert ha["written_by_this_process"] == 4  # 3 decisions + 1 request.rejected
        assert ha["last_seq_written"] == start + 5 == ha["last_seq"]
        assert hb["written_by_this_process"] == 1
        assert hb["last_seq_written"] == start + 4
        assert ha["committed"] == 4


def test_healthz_with_the_audit_off_counts_its_marker(folder: Path) -> None:
    settings = ServiceSettings(
        store=folder, policy=ROOT / "policies", api_keys=api_keys(), audit_mode="off"
    )
    with TestClient(create_app(settings)) as c:
        h = c.get("/healthz").json()["audit"]
        assert h["mode"] == "off"
        assert h["written_by_this_process"] == 1  # the service.audit_off marker
        assert h["last_seq_written"] == h["last_seq"] == _head(folder)

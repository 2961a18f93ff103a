"""``GET /v1/grants`` and the dashboard's grants page over both grant stores: the control
store's sandbox grants and the registry of the job's grants stage (real sign-ins over HTTP on a
slice of ego-Facebook), each row labelled with its store; tenant isolation across both."""

from __future__ import annotations

import re
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from provguard.service import ServiceSettings, create_app

from .conftest import (
    KEYS,
    api_keys,
    build_small_store,
    copy_registry,
    hdr,
    run_small_grants_stage,
)

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    db, result = run_small_grants_stage(tmp_path_factory.mktemp("grants-stage"))
    return db, result


@pytest.fixture
def served(tmp_path: Path, stage: tuple[Path, Any]) -> Iterator[tuple[TestClient, Path, Any]]:
    root = tmp_path / "out"
    build_small_store(root, ROOT / "policies")
    copy_registry(stage[0], root / "grants.db")
    settings = ServiceSettings(store=root, policy=ROOT / "policies", api_keys=api_keys())
    with TestClient(create_app(settings)) as c:
        yield c, root, stage[1]


def _registry_ids(root: Path, app: str) -> list[str]:
    with sqlite3.connect(root / "grants.db") as conn:
        rows = conn.execute(
            "SELECT grant_id FROM oauth_grants WHERE app_id = ? ORDER BY grant_id", (app,)
        ).fetchall()
    conn.close()
    return [r[0] for r in rows]


def test_one_view_over_both_stores(served: tuple[TestClient, Path, Any]) -> None:
    c, root, result = served
    page = c.get("/v1/grants", headers=hdr("douyin")).json()
    # 4 sandbox grants of douyin in control.db + the stage's 16 sign-ins to douyin
    assert (
        page["totals"]
        == {"sandbox": 4, "registry": result.signed_in}
        == {
            "sandbox": 4,
            "registry": 16,
        }
    )
    assert page["total"] == 20 and len(page["grants"]) == 20
    stores = [g["store"] for g in page["grants"]]
    assert stores == ["sandbox"] * 4 + ["registry"] * 16  # sandbox first, then the registry
    sandbox = page["grants"][:4]
    assert [g["grant_id"] for g in sandbox] == ["grt_0", "grt_1", "grt_2", "grt_3"]
    assert all(isinstance(g["subject_id"], int) and g["openid"] is None for g in sandbox)
    registry = page["grants"][4:]
    assert [g["grant_id"] for g in registry] == _registry_ids(root, "douyin")
    assert all(g["subject_id"] is None and g["openid"] for g in registry)
    assert Counter(g["status"] for g in registry) == {"active": 12, "purged": 4}
    assert Counter(g["provider"] for g in registry) == Counter(p for _, p, _, _ in result.exchanges)
    assert all(g["granted_at"].endswith("+00:00") for g in page["grants"])


def test_paging_crosses_the_store_boundary(served: tuple[TestClient, Path, Any]) -> None:
    c, _root, _ = served
    everything = c.get("/v1/grants", headers=hdr("douyin")).json()["grants"]
    ids = [g["grant_id"] for g in everything]
    for offset, limit in ((0, 3), (2, 5), (4, 4), (18, 10), (25, 5)):
        page = c.get(f"/v1/grants?offset={offset}&limit={limit}", headers=hdr("douyin")).json()
        assert [g["grant_id"] for g in page["grants"]] == ids[offset : offset + limit]
        assert page["total"] == 20
    only = c.get("/v1/grants?store=registry&status=purged", headers=hdr("douyin")).json()
    assert only["totals"] == {"sandbox": 0, "registry": 4} and only["total"] == 4
    assert {g["store"] for g in only["grants"]} == {"registry"}
    sandbox = c.get("/v1/grants?store=sandbox", headers=hdr("douyin")).json()
    assert sandbox["totals"] == {"sandbox": 4, "registry": 0}


def _exchanged_to(root: Path, app: str, effect: str) -> dict[str, str]:
    """{grant id: first attempt time} of the registry's token exchanges to ``app`` with
    ``effect``, read with plain SQL."""
    with sqlite3.connect(root / "grants.db") as conn:
        rows = conn.execute(
            "SELECT grant_id, MIN(at) FROM transfer_attempts WHERE to_app = ? AND effect = ?"
            " AND kind = 'token_exchange' GROUP BY grant_id",
            (app, effect),
        ).fetchall()
    conn.close()
    return {r[0]: r[1] for r in rows}


def test_tenant_isolation_across_both_stores(served: tuple[TestClient, Path, Any]) -> None:
    c, root, result = served
    duoshan = c.get("/v1/grants", headers=hdr("duoshan")).json()
    # duoshan: 2 sandbox grants of its own + douyin's grt_0 (grandfathered sandbox transfer);
    # no sign-ins of its own in the registry, but the 8 douyin grants of its permitted token
    # exchanges (C6). The 8 denied exchanges gave it nothing and stay invisible.
    permitted = _exchanged_to(root, "duoshan", "permit")
    denied = _exchanged_to(root, "duoshan", "deny")
    assert len(permitted) == result.exchanges_permitted == 8 and len(denied) == 8
    assert duoshan["totals"] == {"sandbox": 3, "registry": 8}
    own = [g for g in duoshan["grants"] if g["relation"] == "own"]
    assert {g["app_id"] for g in own} == {"duoshan"} and len(own) == 2
    a_denied = sorted(denied)[0]
    theirs = c.get(f"/v1/grants/{a_denied}", headers=hdr("duoshan"))
    missing = c.get("/v1/grants/no-such-grant", headers=hdr("duoshan"))
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"]["code"] == missing.json()["error"]["code"] == "PG530"
    mine = c.get(f"/v1/grants/{a_denied}", headers=hdr("douyin"))
    assert mine.status_code == 200 and mine.json()["store"] == "registry"
    assert mine.json()["relation"] == "own" and mine.json()["openid"]
    auditor = c.get("/v1/grants", headers=hdr("auditor"))
    assert auditor.status_code == 403


def test_a_recipient_sees_the_grants_it_received(served: tuple[TestClient, Path, Any]) -> None:
    """C6: duoshan's key lists the douyin grants of its 8 permitted RFC 8693 exchanges (the
    tokens issued to it as audience), labelled ``received``, with the holder's openid hidden
    and the status as it is now (the revoked one shows ``purged``)."""
    c, root, _ = served
    permitted = _exchanged_to(root, "duoshan", "permit")
    page = c.get("/v1/grants?relation=received", headers=hdr("duoshan")).json()
    assert page["totals"] == {"sandbox": 1, "registry": 8} and page["total"] == 9
    sandbox, registry = page["grants"][:1], page["grants"][1:]
    assert [(g["grant_id"], g["app_id"], g["received_via"]) for g in sandbox] == [
        ("grt_0", "douyin", ["sandbox_transfer"])
    ]
    assert sandbox[0]["received_at"].startswith("2019-02-01T00:00:00")
    assert [g["grant_id"] for g in registry] == sorted(permitted)
    with sqlite3.connect(root / "grants.db") as conn:
        status = dict(conn.execute("SELECT grant_id, status FROM oauth_grants").fetchall())
    conn.close()
    for g in registry:
        assert g["relation"] == "received" and g["app_id"] == "douyin"
        assert g["openid"] is None and g["received_via"] == ["token_exchange"]
        assert g["status"] == status[g["grant_id"]]
        stored = permitted[g["grant_id"]]
        assert g["received_at"][:19] == stored.replace(" ", "T")[:19]
    assert sum(g["status"] == "purged" for g in registry) == 1
    one = c.get(f"/v1/grants/{registry[0]['grant_id']}", headers=hdr("duoshan")).json()
    assert one == registry[0]
    own = c.get("/v1/grants?relation=own", headers=hdr("duoshan")).json()
    assert own["totals"] == {"sandbox": 2, "registry": 0}
    # douyin received nothing: its listing is unchanged and all its own
    douyin = c.get("/v1/grants?relation=received", headers=hdr("douyin")).json()
    assert douyin["total"] == 0


@pytest.fixture
def with_registry(
    tmp_path: Path, stage: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient, Path]]:
    """The folder of :func:`served`, served with its registry as ``--grant-db`` (token
    operations on), so ``/v1/revocations`` answers."""
    from provguard.grants.crypto import generate_key

    monkeypatch.delenv("PROVGUARD_TOKEN_KEY", raising=False)
    root = tmp_path / "out"
    build_small_store(root, ROOT / "policies")
    copy_registry(stage[0], root / "grants.db")
    key_file = tmp_path / "token.key"
    key_file.write_text(generate_key())
    settings = ServiceSettings(
        store=root,
        policy=ROOT / "policies",
        api_keys=api_keys(),
        grant_db=str(root / "grants.db"),
        token_key_file=key_file,
    )
    with TestClient(create_app(settings)) as c:
        yield c, root


def test_a_recipient_sees_the_revocations_of_grants_it_received(
    with_registry: tuple[TestClient, Path],
) -> None:
    """C6: of the stage's 4 revoked douyin grants, the one duoshan received by a permitted
    exchange is in duoshan's ``/v1/revocations`` (``relation: received``); douyin sees all 4
    as its own; the 3 others stay invisible to duoshan."""
    c, root = with_registry
    permitted = _exchanged_to(root, "duoshan", "permit")
    with sqlite3.connect(root / "grants.db") as conn:
        jobs = dict(conn.execute("SELECT grant_id, job_id FROM revocation_jobs").fetchall())
    conn.close()
    assert len(jobs) == 4
    douyin = c.get("/v1/revocations", headers=hdr("douyin"))
    assert douyin.status_code == 200, douyin.text
    assert sorted(j["job_id"] for j in douyin.json()) == sorted(jobs.values())
    assert {j["relation"] for j in douyin.json()} == {"own"}
    duoshan = c.get("/v1/revocations", headers=hdr("duoshan")).json()
    held = sorted(g for g in jobs if g in permitted)
    assert len(held) == 1
    assert [(j["grant_id"], j["job_id"], j["relation"]) for j in duoshan] == [
        (held[0], jobs[held[0]], "received")
    ]
    assert duoshan[0]["state"] == "purged"


def test_dashboard_grants_page_shows_both_stores_and_the_exchanges(
    served: tuple[TestClient, Path, Any],
) -> None:
    c, _root, result = served
    c.post("/dashboard/login", data={"key": KEYS["auditor"]}, follow_redirects=False)
    html = c.get("/dashboard/grants").text
    pattern = r'<tr data-key="([^"]+)">(?:<td>[^<]*</td>){4}<td class="n">(\d+)</td>'
    rows = {k: int(v) for k, v in re.findall(pattern, html)}
    assert rows["sandbox|douyin|wechat|active"] == 2 and rows["sandbox|duoshan|qq|revoked"] == 1
    registry = {k: v for k, v in rows.items() if k.startswith("registry|")}
    assert sum(registry.values()) == 16
    assert sum(v for k, v in registry.items() if k.endswith("|purged")) == result.revoked
    assert 'data-testid="signins-completed">16<' in html
    assert 'data-testid="exchanges-denied">8<' in html
    assert 'data-testid="exchanges-grandfathered">8<' in html
    assert "no-login-grant-transfer" in html


def test_dashboard_grants_page_names_the_registry_with_a_space(
    served: tuple[TestClient, Path, Any], client: TestClient
) -> None:
    """C8: "over HTTP (<registry>)", not "over HTTP(<registry>)" (a --grant-db registry and
    the folder's own grants.db)."""
    for c in (served[0], client):
        c.post("/dashboard/login", data={"key": KEYS["auditor"]}, follow_redirects=False)
        html = c.get("/dashboard/grants").text
        text = " ".join(re.sub(r"<[^>]+>", "", html).split())
        assert "over HTTP(" not in text
        m = re.search(r"real sign-ins over HTTP \(([^)]*)\)\.", text)
        assert m is not None, text[:400]
        assert m.group(1).endswith("grants.db") or "://" in m.group(1), m.group(1)

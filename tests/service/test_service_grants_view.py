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


def test_tenant_isolation_across_both_stores(served: tuple[TestClient, Path, Any]) -> None:
    c, root, _ = served
    duoshan = c.get("/v1/grants", headers=hdr("duoshan")).json()
    # duoshan has 2 sandbox grants and no sign-ins of its own in the registry: the douyin grants
    # whose tokens it tried to exchange are not its grants
    assert duoshan["totals"] == {"sandbox": 2, "registry": 0}
    assert {g["app_id"] for g in duoshan["grants"]} == {"duoshan"}
    a_registry_grant = _registry_ids(root, "douyin")[0]
    mine = c.get(f"/v1/grants/{a_registry_grant}", headers=hdr("douyin"))
    assert mine.status_code == 200 and mine.json()["store"] == "registry"
    theirs = c.get(f"/v1/grants/{a_registry_grant}", headers=hdr("duoshan"))
    missing = c.get("/v1/grants/no-such-grant", headers=hdr("duoshan"))
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"]["code"] == missing.json()["error"]["code"] == "PG530"
    auditor = c.get("/v1/grants", headers=hdr("auditor"))
    assert auditor.status_code == 403


def test_dashboard_grants_page_shows_both_stores_and_the_exchanges(
    served: tuple[TestClient, Path, Any],
) -> None:
    c, _root, result = served
    c.cookies.set("provguard_key", KEYS["auditor"])
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
        c.cookies.set("provguard_key", KEYS["auditor"])
        html = c.get("/dashboard/grants").text
        text = " ".join(re.sub(r"<[^>]+>", "", html).split())
        assert "over HTTP(" not in text
        m = re.search(r"real sign-ins over HTTP \(([^)]*)\)\.", text)
        assert m is not None, text[:400]
        assert m.group(1).endswith("grants.db") or "://" in m.group(1), m.group(1)

"""The HTTP service states nothing the report withholds (fresh user 12: M1, L1, M3, L2).

The main job runs once on the first 600 lines of the real ego-Facebook graph; each test edits
a copy of its output folder by hand in SQLite, as the findings did, and serves it. The
campaign endpoints and the grant views' ``received`` relation must answer 503 ``PG340`` with
the discrepancy (never the edited figures) while the table disagrees with the chain; the
dashboard pages must show the report's "[PG340] Withheld" statement, not "no campaign" / "no
transfers"; on the untouched copy every answer equals what the tables (and the chain) hold.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from collections.abc import Iterator
from html import unescape
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from provguard.config import RunSettings
from provguard.job.run import run_main_job
from provguard.report.from_store import build_model_from_store
from provguard.service import ServiceSettings, create_app
from provguard.service.app import ServiceState

from .conftest import DENY_BODY, KEYS, api_keys, hdr

CAMPAIGN = "duoshan-no-platform-profile@2019-06-30"
POLICY = Path(__file__).parents[2] / "policies"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("withheld")
    lines = (Path(__file__).parents[2] / "data/graphs/snap-ego-facebook.txt").read_text()
    graph = work / "ego-facebook-600.txt"
    graph.write_text("\n".join(lines.splitlines()[:600]) + "\n")
    out = work / "demo"
    run_main_job(RunSettings(out=out, graph=graph, policy=POLICY))
    return out


def _copy(demo: Path, tmp_path: Path, *sql: str) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(demo, out)
    _edit(out, *sql)
    return out


def _edit(folder: Path, *sql: str) -> None:
    con = sqlite3.connect(folder / "control.db")
    for statement in sql:
        con.execute(statement)
    con.commit()
    con.close()


def _serve(folder: Path, *, registry: bool = False) -> Iterator[TestClient]:
    settings = ServiceSettings(
        store=folder,
        policy=POLICY,
        api_keys=api_keys(),
        grant_db=str(folder / "grants.db") if registry else None,
        token_key_file=folder / "token.key" if registry else None,
    )
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def pristine(demo: Path, tmp_path: Path) -> Iterator[tuple[Path, TestClient]]:
    folder = _copy(demo, tmp_path)
    for c in _serve(folder):
        yield folder, c


def _scalar(folder: Path, sql: str) -> object:
    con = sqlite3.connect(folder / "control.db")
    try:
        return con.execute(sql).fetchone()[0]
    finally:
        con.close()


def _login(c: TestClient) -> None:
    r = c.post("/dashboard/login", data={"key": KEYS["auditor"]}, follow_redirects=False)
    assert r.status_code == 303


def _page(c: TestClient, path: str) -> str:
    r = c.get(path)
    assert r.status_code == 200, r.text
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", r.text)).split())


def _state(c: TestClient) -> ServiceState:
    state: ServiceState = c.app.state.provguard  # type: ignore[attr-defined]
    return state


# ------------------------------------------------------------------ M1: campaign endpoints


def test_pristine_campaign_is_served_as_the_chain_records_it(
    pristine: tuple[Path, TestClient],
) -> None:
    folder, c = pristine
    r = c.get(f"/v1/campaigns/{CAMPAIGN}", headers=hdr("auditor"))
    assert r.status_code == 200, r.text
    body = r.json()
    # the figures equal the table and the report rebuilt from the same folder (differential)
    con = sqlite3.connect(folder / "control.db")
    table = dict(
        con.execute(
            "SELECT state, count(*) FROM campaign_targets WHERE campaign_id = ? GROUP BY state",
            (CAMPAIGN,),
        ).fetchall()
    )
    con.close()
    assert {k: v for k, v in body["states"].items() if v} == table
    model = build_model_from_store(folder)
    assert model.campaigns is not None
    assert {k: v for k, v in model.campaigns[0].states.items() if v} == table
    assert table.get("notified", 0) > 0 and "changed" not in table  # what the job leaves
    page = c.get(f"/v1/campaigns/{CAMPAIGN}/subjects?limit=3", headers=hdr("duoshan")).json()
    assert len(page["subjects"]) == 3 and page["chain"].startswith("not chain-backed: which")


def test_edited_campaign_targets_are_refused_with_pg340(demo: Path, tmp_path: Path) -> None:
    folder = _copy(
        demo, tmp_path, "UPDATE campaign_targets SET state='changed' WHERE state='notified'"
    )
    changed = _scalar(folder, "SELECT count(*) FROM campaign_targets WHERE state='changed'")
    assert isinstance(changed, int) and changed > 0
    for c in _serve(folder):
        r = c.get(f"/v1/campaigns/{CAMPAIGN}", headers=hdr("auditor"))
        assert r.status_code == 503
        err = r.json()["error"]
        assert err["code"] == "PG340" and "progress" not in r.text
        d = err["discrepancies"][0]
        assert (d["table"], d["key"], d["field"]) == ("campaigns", CAMPAIGN, "campaign_targets")
        assert d["table_value"].startswith(f"changed {changed}")
        assert f"notified {changed}" in d["chain_value"] and d["seq"] > 0
        # an app key: the same refusal, without the discrepancies (they mix apps)
        for path in (
            f"/v1/campaigns/{CAMPAIGN}",
            f"/v1/campaigns/{CAMPAIGN}/subjects?limit=2",
            "/v1/campaigns",
        ):
            r = c.get(path, headers=hdr("duoshan"))
            assert r.status_code == 503 and r.json()["error"]["code"] == "PG340", path
            assert "discrepancies" not in r.json()["error"] and '"changed"' not in r.text
        # the dashboard says withheld, never "no campaign"
        _login(c)
        page = _page(c, "/dashboard/campaigns")
        assert "[PG340] Withheld: the control store's campaigns table disagrees" in page
        assert "No remediation campaign" not in page


# ----------------------------------------------------- L1 / M3: transfers and received grants


def test_edited_transfers_withhold_received_grants_and_the_dashboard(
    demo: Path, tmp_path: Path
) -> None:
    denied = _scalar(demo, "SELECT grant_id FROM transfers WHERE decision='deny' LIMIT 1")
    assert isinstance(denied, str)
    folder = _copy(
        demo, tmp_path, "UPDATE transfers SET decision='permit', excepted=1 WHERE decision='deny'"
    )
    for c in _serve(folder):
        for query in ("relation=received", "", "store=sandbox"):
            r = c.get(f"/v1/grants?limit=1&{query}", headers=hdr("duoshan"))
            assert r.status_code == 503 and r.json()["error"]["code"] == "PG340", query
            assert "transfers" in r.json()["error"]["message"] and "grants" not in r.json()
        # the registry's own relation does not rest on control.db's transfers
        assert c.get("/v1/grants?relation=own", headers=hdr("duoshan")).status_code == 200
        r = c.get(f"/v1/grants/{denied}", headers=hdr("duoshan"))
        assert r.status_code == 503 and r.json()["error"]["code"] == "PG340"
        r = c.get(f"/v1/grants/{denied}", headers=hdr("auditor"))  # no app: 403/401, not data
        assert r.status_code != 200
        _login(c)
        grants = _page(c, "/dashboard/grants")
        assert "[PG340] Withheld: the control store's transfers table disagrees" in grants
        assert "No transfers recorded" not in grants
        main = _page(c, "/dashboard")
        assert "[PG340] Withheld: the control store's transfers table disagrees" in main


def test_pristine_received_grants_are_the_permitted_transfers(
    pristine: tuple[Path, TestClient],
) -> None:
    folder, c = pristine
    permitted = _scalar(
        folder,
        "SELECT count(DISTINCT t.grant_id) FROM transfers t JOIN grants g USING (grant_id) "
        "WHERE t.to_app='duoshan' AND t.decision='permit' AND g.app_id != 'duoshan'",
    )
    r = c.get("/v1/grants?limit=5&relation=received&store=sandbox", headers=hdr("duoshan"))
    assert r.status_code == 200, r.text
    assert r.json()["totals"]["sandbox"] == permitted and isinstance(permitted, int)
    assert all(g["relation"] == "received" for g in r.json()["grants"])
    denied = _scalar(folder, "SELECT grant_id FROM transfers WHERE decision='deny' LIMIT 1")
    r = c.get(f"/v1/grants/{denied}", headers=hdr("duoshan"))
    assert r.status_code == 404 and r.json()["error"]["code"] == "PG530"


# ------------------------------------------------------------------ L2: the sandbox grants


def test_sandbox_grant_statuses_carry_the_not_chain_backed_caveat(
    pristine: tuple[Path, TestClient],
) -> None:
    folder, c = pristine
    _edit(folder, "UPDATE grants SET status='revoked'")
    _login(c)
    page = _page(c, "/dashboard/grants")
    assert "not chain-backed The sandbox rows are counted from the control store's grants" in page
    assert "the control store's sandbox grants (not shown as figures)" in page
    sandbox = re.findall(
        r'<tr data-key="sandbox\|[^"]+\|(\w+)">.*?</tr>', c.get("/dashboard/grants").text
    )
    assert sandbox and set(sandbox) == {"revoked"}  # the edit is shown, as the store's word:
    rows = re.findall(r'<tr data-key="(\w+)\|[^"]*">(.*?)</tr>', c.get("/dashboard/grants").text)
    assert all(("not chain-backed" in cells) == (store == "sandbox") for store, cells in rows)


# ------------------------------------------------------------------ the per-process cache


def test_the_check_is_cached_and_an_edit_under_the_running_service_is_seen(
    pristine: tuple[Path, TestClient],
) -> None:
    folder, c = pristine
    path = f"/v1/campaigns/{CAMPAIGN}"
    assert c.get(path, headers=hdr("auditor")).status_code == 200
    guard = _state(c).chain_guard()
    before = guard.stats()
    for _ in range(3):
        assert c.get(path, headers=hdr("auditor")).status_code == 200
    after = guard.stats()
    assert after.checks == before.checks and after.hits == before.hits + 3
    # another process edits the table while the service runs: the next request re-checks
    _edit(folder, "UPDATE campaign_targets SET state='changed' WHERE state='notified'")
    r = c.get(path, headers=hdr("auditor"))
    assert r.status_code == 503 and r.json()["error"]["code"] == "PG340"
    assert guard.stats().checks == after.checks + 1
    # and undone: served again
    _edit(folder, "UPDATE campaign_targets SET state='notified' WHERE state='changed'")
    r = c.get(path, headers=hdr("auditor"))
    assert r.status_code == 200 and json.loads(r.text)["states"]["changed"] == 0
    # a decision appended by the service itself also invalidates (the head seq moved)
    n = guard.stats().checks

    assert c.post("/v1/decisions", json=DENY_BODY, headers=hdr("douyin")).status_code == 200
    writer = _state(c).writer
    assert writer is not None and writer.flush(timeout=10.0) is not False
    assert c.get(path, headers=hdr("auditor")).status_code == 200
    assert guard.stats().checks == n + 1


def test_edited_registry_tables_withhold_3a_3b_and_registry_received_grants(
    demo: Path, tmp_path: Path
) -> None:
    folder = _copy(demo, tmp_path)
    con = sqlite3.connect(folder / "grants.db")
    permitted = con.execute(
        "SELECT count(*) FROM transfer_attempts WHERE effect='permit' AND to_app='duoshan'"
    ).fetchone()[0]
    assert permitted > 0  # the job's grandfathered exchanges
    con.execute("UPDATE transfer_attempts SET effect='permit' WHERE effect='deny'")
    con.execute("UPDATE revocation_jobs SET state='open'")
    con.commit()
    con.close()
    for c in _serve(folder, registry=True):
        r = c.get("/v1/grants?store=registry&relation=received", headers=hdr("duoshan"))
        assert r.status_code == 503 and r.json()["error"]["code"] == "PG340"
        assert "transfer_attempts" in r.json()["error"]["message"]
        # the sandbox's received grants rest on control.db's transfers, which agree
        r = c.get("/v1/grants?store=sandbox&relation=received&limit=1", headers=hdr("duoshan"))
        assert r.status_code == 200, r.text
        r = c.get("/v1/revocations", headers=hdr("duoshan"))
        assert r.status_code == 503 and r.json()["error"]["code"] == "PG340"
        assert "revocation_jobs" in r.json()["error"]["message"]
        _login(c)
        page = _page(c, "/dashboard/grants")
        assert "[PG340] Withheld: the grant registry's transfer_attempts table disagrees" in page
        assert "No grant registry with sign-ins" not in page
        assert "No grant registry with revocation jobs" not in page
        assert "[PG340] Withheld: the grant registry's revocation_jobs table disagrees" in page

"""The dashboard in headless Debian Chromium, driven by Playwright: pages load, the figures match
the store, and a denial made through the API appears."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from provguard.report.from_store import build_model_from_store
from provguard.service import ServiceSettings, create_app
from provguard.service.runner import ThreadedServer

from .conftest import DENY_BODY, KEYS, api_keys

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() or shutil.which("chromium") is None,
    reason="Debian package 'chromium' is not installed (/usr/bin/chromium)",
)
playwright_sync = pytest.importorskip("playwright.sync_api")

FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def server(store: Path, repo_root: Path) -> Iterator[ThreadedServer]:
    settings = ServiceSettings(
        store=store, policy=repo_root / "policies", api_keys=api_keys(), dashboard_refresh=0
    )
    with ThreadedServer(create_app(settings)) as srv:
        yield srv


def _num(text: str) -> int:
    return int(text.replace(",", "").strip())


def test_dashboard_live(server: ThreadedServer, store: Path, tmp_path: Path) -> None:
    expected = build_model_from_store(store)
    with playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(server.url + "/dashboard")
            assert page.url.endswith("/dashboard/login")  # no key, no dashboard
            page.fill("#key", KEYS["douyin"])
            page.click("button[type=submit]")
            assert "not an auditor key" in page.inner_text("body")
            page.fill("#key", KEYS["auditor"])
            page.click("button[type=submit]")
            page.wait_for_selector("[data-testid=total-decisions]")
            total = _num(page.inner_text("[data-testid=total-decisions]"))
            denials = _num(page.inner_text("[data-testid=total-denials]"))
            assert total == sum(r.count for r in expected.decision_counts) == 23
            assert denials == sum(r.count for r in expected.decision_counts if r.effect == "deny")
            assert expected.audit is not None
            assert _num(page.inner_text("[data-testid=audit-entries]")) == expected.audit.entries
            assert page.inner_text("[data-testid=head-hash]") == expected.audit.head_hash
            assert "chain intact" in page.inner_text("[data-testid=chain-status]")
            rows_before = page.locator("[data-testid=recent-denials] tbody tr[data-seq]").count()
            seqs_before = page.locator("[data-testid=recent-denials] tr[data-seq]").first
            first_before = int(seqs_before.get_attribute("data-seq") or 0)
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

            r = httpx.post(
                server.url + "/v1/decisions",
                json=DENY_BODY,
                headers={"X-API-Key": KEYS["douyin"]},
                timeout=30,
            )
            assert r.status_code == 200 and r.json()["effect"] == "deny"

            page.reload()
            assert _num(page.inner_text("[data-testid=total-decisions]")) == total + 1
            assert _num(page.inner_text("[data-testid=total-denials]")) == denials + 1
            newest = page.locator("[data-testid=recent-denials] tbody tr[data-seq]").first
            assert int(newest.get_attribute("data-seq") or 0) == 25 > first_before
            assert "douyin" in newest.inner_text()
            assert "no-platform-profile-in-friend-recommendation" in newest.inner_text()
            assert page.locator("[data-testid=recent-denials] tbody tr[data-seq]").count() == min(
                rows_before + 1, 20
            )
            row = page.locator(
                "[data-testid=by-rule] tr[data-key='no-platform-profile-in-friend-recommendation']"
            )
            assert _num(row.locator("td").nth(1).inner_text()) == 11
        finally:
            browser.close()

"""The dashboard's grants and campaign pages in headless Debian Chromium (Playwright): the
figures shown are the stores' figures."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from provguard.report.from_store import build_model_from_store
from provguard.service import ServiceSettings, create_app
from provguard.service.runner import ThreadedServer

from .conftest import KEYS, T0, add_campaign, add_revocations, api_keys

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() or shutil.which("chromium") is None,
    reason="Debian package 'chromium' is not installed (/usr/bin/chromium)",
)
playwright_sync = pytest.importorskip("playwright.sync_api")

FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


@pytest.fixture
def server(store: Path, repo_root: Path) -> Iterator[ThreadedServer]:
    add_revocations(store)
    add_campaign(store)
    settings = ServiceSettings(
        store=store, policy=repo_root / "policies", api_keys=api_keys(), dashboard_refresh=0
    )
    with ThreadedServer(create_app(settings)) as srv:
        yield srv


def _num(text: str) -> int:
    return int(text.replace(",", "").strip())


def test_grants_and_campaign_pages_match_the_store(
    server: ThreadedServer, store: Path, tmp_path: Path
) -> None:
    expected = build_model_from_store(store, generated_at=T0 + timedelta(days=1))
    assert expected.campaigns and expected.transfers and expected.revocations
    with playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(server.url + "/dashboard/campaigns")
            assert page.url.endswith("/dashboard/login")  # auditors only
            page.fill("#key", KEYS["auditor"])
            page.click("button[type=submit]")
            page.click("nav >> text=Campaigns")
            page.wait_for_selector("[data-testid=campaign]")
            c = expected.campaigns[0]
            section = page.locator(f"[data-campaign='{c.campaign_id}']")
            assert _num(section.locator("[data-testid=campaign-targets]").inner_text()) == 7
            for state, n in c.states.items():
                assert _num(section.locator(f"[data-testid=state-{state}]").inner_text()) == n
            assert section.locator("svg.chart g.col").count() == len(c.history)
            page.screenshot(path=str(tmp_path / "campaigns.png"), full_page=True)

            page.click("nav >> text=Grants")
            page.wait_for_selector("[data-testid=grants]")
            t = expected.transfers
            assert _num(page.inner_text("[data-testid=transfers-total]")) == t.total
            assert _num(page.inner_text("[data-testid=transfers-denied]")) == t.denied
            assert (
                _num(page.inner_text("[data-testid=transfers-grandfathered]"))
                == t.grandfathered_permitted
            )
            r = expected.revocations
            assert _num(page.inner_text("[data-testid=revocations-jobs]")) == r.jobs == 3
            assert _num(page.inner_text("[data-testid=revocations-purged]")) == r.purged == 2
            grants = page.locator("[data-testid=grants] tbody tr[data-key]")
            rows = {
                grants.nth(i).get_attribute("data-key"): _num(
                    grants.nth(i).locator("td").nth(4).inner_text()
                )
                for i in range(grants.count())
            }
            # the small store: 4 douyin + 2 duoshan sandbox grants, one duoshan (qq) revoked;
            # the registry (grants.db): 3 douyin sign-ins, all revoked (2 purged)
            sandbox = {k: v for k, v in rows.items() if k and k.startswith("sandbox|")}
            registry = {k: v for k, v in rows.items() if k and k.startswith("registry|")}
            assert sum(sandbox.values()) == 6 and sum(registry.values()) == 3
            assert rows["sandbox|duoshan|qq|revoked"] == 1
            s = expected.sign_ins
            assert s is not None and s.completed == 3 and s.exchanges_total == 0
            assert _num(page.inner_text("[data-testid=signins-completed]")) == 3
            denied = page.locator("[data-testid=exchanges-denied]")
            assert _num(denied.inner_text()) == 0
            # zero denials are not shown in red
            assert "deny" not in (denied.get_attribute("class") or "")
            # g2 is quarantined and its deadline (T0 + 15 days) has passed by now: a real
            # overdue purge, shown in red
            overdue = page.locator("[data-testid=revocations-overdue]")
            assert _num(overdue.inner_text()) == 1
            assert "deny" in (overdue.get_attribute("class") or "")
            page.screenshot(path=str(tmp_path / "grants.png"), full_page=True)
        finally:
            browser.close()

"""The dashboard in a real headless Chromium against a real `fogcoord serve`."""

from __future__ import annotations

import importlib.util
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from fogcoord.auth.models import PrincipalKind
from fogcoord.client import FogClient
from tests.served import Served, finish, start
from tests.services import services_required

if TYPE_CHECKING:
    from playwright.async_api import Browser

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("FOGCOORD_TEST_CHROMIUM", "/usr/bin/chromium")
EVENT_TIMEOUT_MS = 5_000


def need_browser() -> None:
    """Skip without Chromium or Playwright, unless FOGCOORD_REQUIRE_SERVICES=1 forbids it."""
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright package is not installed (pip install playwright)")
    if not missing:
        return
    reason = "; ".join(missing)
    if services_required():
        pytest.fail(f"{reason} and FOGCOORD_REQUIRE_SERVICES=1 forbids skipping")
    pytest.skip(reason)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    need_browser()
    server = start(tmp_path / "data")
    yield server
    finish(server.proc)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    need_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield chromium
        finally:
            await chromium.close()


async def test_dashboard_shows_the_system_and_new_events_live(
    served: Served, browser: Browser, tmp_path: Path
) -> None:
    page = await browser.new_page(viewport={"width": 1400, "height": 1600})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # a blocked inline style or script (the page's CSP) shows only as a console error
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

    await page.goto(f"{served.url}/?key={served.key}")
    await page.wait_for_selector('#status[data-state="connected"]', timeout=10_000)
    # the key does not stay in the address bar once read
    assert "key=" not in page.url
    # the coordinator's own start-up is already in the snapshot: services announced themselves
    await page.wait_for_selector("#events li.event", timeout=EVENT_TIMEOUT_MS)
    await page.wait_for_selector("#services .service[data-id]", timeout=10_000)

    shot = tmp_path / "dashboard.png"
    await page.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 20_000  # a blank page compresses to a few kB

    async with FogClient(served.url, served.key) as admin:
        issued = await admin.create_key(kind=PrincipalKind.REQUESTER, name="dashboard-watcher")
    async with FogClient(served.url, issued.key) as requester:
        wallet = await requester.create_wallet()
    key = f"wallet_created:{wallet.wallet_id}"
    row = page.locator(f'#events li.event[data-type="wallet_created"][data-key="{key}"]')
    await row.wait_for(state="visible", timeout=EVENT_TIMEOUT_MS)
    assert wallet.wallet_id in (await row.inner_text())
    await page.screenshot(path=str(tmp_path / "dashboard-after-event.png"), full_page=True)
    assert not errors, errors

    # an open stream must not hold up a graceful stop
    started = time.monotonic()
    served.proc.send_signal(signal.SIGINT)
    assert served.proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 5.0
    await page.wait_for_selector(
        '#status[data-state="reconnecting"], #status[data-state="offline"]', timeout=10_000
    )


async def test_dashboard_asks_for_a_key_and_refuses_a_wrong_one(
    served: Served, browser: Browser
) -> None:
    page = await browser.new_page()
    await page.goto(f"{served.url}/")
    await page.wait_for_selector("#login:not([hidden])", timeout=5_000)
    await page.fill("#login-key", "fc_0000000000000000_wrong")
    await page.click("#login button")
    await page.wait_for_selector("#login-error:not([hidden])", timeout=5_000)
    await page.fill("#login-key", served.key)
    await page.click("#login button")
    await page.wait_for_selector('#status[data-state="connected"]', timeout=10_000)
    assert await page.locator("#login").is_hidden()

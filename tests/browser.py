"""Headless Chromium for the page tests: Debian's build, driven by Playwright.

Every request the page makes to a host other than 127.0.0.1 is refused and
recorded, so a test can prove a page needs nothing from elsewhere. Each test
may save screenshots under ``test-output/screenshots``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, Playwright, Route, sync_playwright

CHROMIUM = os.environ.get("FAMPROV_TEST_CHROMIUM", "/usr/bin/chromium")
OUTPUT = Path(os.environ.get("FAMPROV_TEST_OUTPUT", "test-output"))
# The flags that keep Chromium from reaching out on its own at start.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]


@dataclass
class BrowserPage:
    """A fresh page, and the outside requests it tried to make."""

    page: Page
    name: str
    blocked: list[str] = field(default_factory=list)

    def screenshot(self, label: str) -> Path:
        path = OUTPUT / "screenshots" / f"{self.name}-{label}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path), full_page=True)
        return path


def launch(playwright: Playwright) -> Browser:
    if not Path(CHROMIUM).exists():
        reason = f"Chromium not found at {CHROMIUM} (make test installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)


def open_page(browser: Browser, test_name: str) -> Iterator[BrowserPage]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", test_name).strip("-")
    opened = BrowserPage(context.new_page(), name)

    def only_loopback(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).hostname == "127.0.0.1" or url.startswith("data:"):
            route.continue_()
        else:
            opened.blocked.append(url)
            route.abort("blockedbyclient")

    context.route("**/*", only_loopback)
    try:
        yield opened
    finally:
        context.close()


# One browser per test module, not per session: while Playwright's sync API
# is open it keeps an event loop running on the main thread, and tests in
# other modules call asyncio.run there.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def browser_page(
    browser: Browser, request: pytest.FixtureRequest
) -> Iterator[BrowserPage]:
    """A page in a context of its own; ``blocked`` lists refused requests."""
    yield from open_page(browser, request.node.name)

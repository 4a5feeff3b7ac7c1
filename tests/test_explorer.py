"""The API explorer at ``/docs``, in headless Chromium with other hosts refused."""

from __future__ import annotations

import re

import httpx
from playwright.sync_api import ConsoleMessage, expect

from browser import BrowserPage
from famprov.api.openapi import EXPLORER
from support import LiveServer, Partner


def test_explorer_shows_the_operations_and_tries_one_out(
    server: LiveServer, partner: Partner, browser_page: BrowserPage
) -> None:
    page = browser_page.page
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        # The browser reports the 401 the test asks for as a failed load.
        if message.type == "error" and "status of 401" not in message.text:
            problems.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.goto(server.url + "/docs")

    operations = page.locator(".opblock-get")
    expect(operations).to_have_count(2)
    expect(page.locator(".opblock-summary-path").first).to_have_text(
        "/bi_api/v1/services/partner/create-license"
    )
    expect(page.locator(".opblock-summary-path").nth(1)).to_have_text("/create-license")
    browser_page.screenshot("operations")

    # Try it out on the short path, with the definition's example values and
    # a well-formed hash that is wrong for this partner's salt.
    operation = operations.nth(1)
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()
    hash_field = operation.locator("tr[data-param-name='hash'] input")
    hash_field.fill("0" * 64)
    operation.locator("tr[data-param-name='partner_name'] input").fill(partner.name)
    operation.get_by_role("button", name="Execute").click()

    live = operation.locator(".live-responses-table .response")
    expect(live.locator(".response-col_status")).to_have_text("401")
    body = live.locator(".response-col_description pre").first
    expect(body).to_contain_text('"message": "Invalid Hash Value - UnAuthorized"')
    expect(body).to_contain_text('"success": false')
    request_url = operation.locator(".request-url pre").inner_text()
    assert request_url.startswith(server.url + "/create-license?")
    browser_page.screenshot("try-it-out-401")

    assert browser_page.blocked == []
    assert problems == []


def test_explorer_page_sends_a_strict_content_security_policy(
    server: LiveServer,
) -> None:
    page = httpx.get(server.url + "/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    directives = dict(
        re.match(r"\s*(\S+)\s*(.*)", part).groups()  # type: ignore[union-attr]
        for part in policy.split(";")
    )
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert "unsafe-inline" not in policy
    assert "unsafe-eval" not in policy
    assert "<script>" not in page.text  # every script is a file of its own

    for asset in re.findall(r'(?:src|href)="(/docs/assets/[^"]+)"', page.text):
        answer = httpx.get(server.url + asset)
        assert answer.status_code == 200, asset
        # Whole, however large (the bundle is over a megabyte, sent in
        # pieces through the server's gathered writes).
        local = EXPLORER / asset.removeprefix("/docs/assets/")
        assert answer.content == local.read_bytes(), asset

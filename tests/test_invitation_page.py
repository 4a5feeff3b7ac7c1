"""The page behind the vault URL, in headless Chromium and over plain HTTP:
looking changes nothing, accepting needs the page's own form, dead links say
so and nothing more."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from playwright.sync_api import Route, expect
from sqlalchemy import Engine

from browser import BrowserPage
from famprov.cli import main
from famprov.clock import FixedClock
from famprov.config import Settings
from support import V1_PATH, LiveServer, Partner, free_port

PRODUCTS = (
    "Family plan for up to 5 members",
    "Dark-web monitoring (BreachWatch)",
    "10 GB of file storage",
)


def license_json(order: str) -> dict[str, object]:
    shown = CliRunner().invoke(main, ["license", "show", order, "--json"])
    assert shown.exit_code == 0, shown.output
    result: dict[str, object] = json.loads(shown.stdout)
    return result


def grant(http: httpx.Client, partner: Partner, **fields: str) -> tuple[str, str]:
    """Grant a license; return its order number and the page's address on the
    test server."""
    body = http.get(V1_PATH, params=partner.params(**fields)).json()
    token = body["vault_url"].rsplit("/", 1)[1]
    base = str(http.base_url).rstrip("/")
    return body["order_number"], f"{base}/invite/{token}"


def form_token(page_html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page_html)
    assert match is not None
    return match.group(1)


def test_open_the_link_nothing_changes_then_accept(
    env: dict[str, str],
    http: httpx.Client,
    partner: Partner,
    clock: FixedClock,
    browser_page: BrowserPage,
) -> None:
    order, url = grant(http, partner)
    page = browser_page.page

    answer = page.goto(url)
    assert answer is not None
    assert answer.status == 200
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "Hello Ann, your family plan is waiting"
    )
    for product in PRODUCTS:
        expect(page.get_by_role("listitem").filter(has_text=product)).to_be_visible()
    expect(page.get_by_text("10 March 2027")).to_be_visible()
    assert page.locator("html").get_attribute("lang") == "en"
    browser_page.screenshot("invitation")
    # Opening, reloading and a link checker's HEAD change nothing.
    page.reload()
    assert http.head(url).status_code == 200
    before = license_json(order)
    assert (before["status"], before["accepted_at"]) == ("invited", None)

    page.get_by_role("button", name="Accept the invitation").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("You have accepted, Ann")
    assert page.url == url  # post, redirect, get: a reload posts nothing
    browser_page.screenshot("accepted")
    after = license_json(order)
    assert after["status"] == "active"
    assert after["accepted_at"] == clock.now().isoformat()
    assert browser_page.blocked == []


def test_the_page_fits_a_phone(
    http: httpx.Client, partner: Partner, browser_page: BrowserPage
) -> None:
    _, url = grant(http, partner, first_name="Maximiliane-Konstanze")
    page = browser_page.page
    page.set_viewport_size({"width": 360, "height": 740})
    page.goto(url)
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    button = page.get_by_role("button", name="Accept the invitation")
    box = button.bounding_box()
    assert box is not None
    assert box["height"] >= 44  # a comfortable target for a finger
    assert box["x"] >= 0
    assert box["x"] + box["width"] <= 360
    browser_page.screenshot("phone")


# WCAG 2 relative luminance and contrast ratio, from the computed colours.
CONTRAST = """
(element) => {
  const rgb = (css) => css.match(/\\d+(\\.\\d+)?/g).slice(0, 3).map(Number);
  const lum = ([r, g, b]) => {
    const c = [r, g, b].map((v) => {
      v /= 255;
      return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
  };
  let back = element;
  while (getComputedStyle(back).backgroundColor === "rgba(0, 0, 0, 0)") {
    back = back.parentElement;
  }
  const a = lum(rgb(getComputedStyle(element).color));
  const b = lum(rgb(getComputedStyle(back).backgroundColor));
  return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
}
"""


def test_text_and_button_meet_wcag_aa_contrast(
    http: httpx.Client, partner: Partner, browser_page: BrowserPage
) -> None:
    _, url = grant(http, partner)
    page = browser_page.page
    page.goto(url)
    for selector in ("h1", "main p", "li", ".note", "button"):
        ratio = page.locator(selector).first.evaluate(CONTRAST)
        assert ratio >= 4.5, (selector, ratio)
    # The focus ring shows where the keyboard is.
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.textContent")
    assert focused == "Accept the invitation"
    outline = page.locator("button").evaluate("b => getComputedStyle(b).outlineStyle")
    assert outline == "solid"


def test_a_form_on_another_origin_cannot_accept(
    env: dict[str, str],
    http: httpx.Client,
    partner: Partner,
    browser_page: BrowserPage,
) -> None:
    order, url = grant(http, partner)
    page = browser_page.page
    page.goto(url)  # the person's browser holds the page's cookie
    evil = f"http://127.0.0.1:{free_port()}/win-a-prize"

    def attacker(route: Route) -> None:
        route.fulfill(
            content_type="text/html",
            body=(
                f'<form method="post" action="{url}">'
                '<input type="hidden" name="csrf_token" value="guess">'
                '<button type="submit">Claim</button></form>'
            ),
        )

    page.route(evil, attacker)
    page.goto(evil)
    page.get_by_role("button", name="Claim").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "Your acceptance did not go through"
    )
    browser_page.screenshot("forbidden")
    assert license_json(order)["status"] == "invited"


def test_accept_needs_the_cookie_the_form_and_our_origin(
    env: dict[str, str], http: httpx.Client, partner: Partner
) -> None:
    order, url = grant(http, partner)
    shown = http.get(url)
    token = form_token(shown.text)
    cookie = shown.headers["set-cookie"]
    assert f"famprov-csrf={token}" in cookie
    for attribute in ("HttpOnly", "Path=/", "SameSite=strict"):
        assert attribute.lower() in cookie.lower()
    assert shown.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in shown.headers["content-security-policy"]
    assert shown.headers["referrer-policy"] == "same-origin"
    origin = str(http.base_url).rstrip("/")
    jar = {"famprov-csrf": token}
    refused = [
        ({}, {"csrf_token": token}, {"Origin": origin}),  # no cookie
        (jar, {}, {"Origin": origin}),  # no form value
        (jar, {"csrf_token": "x" * 43}, {"Origin": origin}),  # values differ
        (jar, {"csrf_token": token}, {}),  # neither Origin nor Referer
        (jar, {"csrf_token": token}, {"Origin": "null"}),
        (jar, {"csrf_token": token}, {"Origin": "http://evil.example"}),
        (jar, {"csrf_token": token}, {"Referer": "http://evil.example/a"}),
    ]
    oversized = {"csrf_token": token, "padding": "x" * 2000}
    refused.append((jar, oversized, {"Origin": origin}))
    for cookies, form, headers in refused:
        with httpx.Client(cookies=cookies) as other:
            answer = other.post(url, data=form, headers=headers)
        assert answer.status_code == 403, (cookies, form, headers)
        assert "did not go through" in answer.text
    assert license_json(order)["status"] == "invited"

    with httpx.Client(cookies=jar) as person:
        by_referer = person.post(
            url, data={"csrf_token": token}, headers={"Referer": url}
        )
    assert by_referer.status_code == 303
    assert license_json(order)["status"] == "active"


def test_a_second_accept_changes_nothing(
    env: dict[str, str], http: httpx.Client, partner: Partner, clock: FixedClock
) -> None:
    order, url = grant(http, partner)
    token = form_token(http.get(url).text)
    origin = {"Origin": str(http.base_url).rstrip("/")}
    first = http.post(url, data={"csrf_token": token}, headers=origin)
    assert first.status_code == 303
    accepted_at = license_json(order)["accepted_at"]

    clock.set(clock.now() + timedelta(hours=2))
    second = http.post(url, data={"csrf_token": token}, headers=origin)
    assert second.status_code == 303
    assert license_json(order)["accepted_at"] == accepted_at
    assert "You have accepted" in http.get(url).text


def test_revoked_expired_and_unknown_links_say_so_and_nothing_more(
    env: dict[str, str],
    http: httpx.Client,
    partner: Partner,
    clock: FixedClock,
    browser_page: BrowserPage,
) -> None:
    revoked, revoked_url = grant(http, partner, first_name="Zebulon")
    assert CliRunner().invoke(main, ["license", "revoke", revoked]).exit_code == 0
    page = browser_page.page

    answer = page.goto(revoked_url)
    assert answer is not None
    assert answer.status == 410
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "This invitation is no longer valid"
    )
    content = page.content()
    for private in ("Zebulon", "acme", "2027", revoked):
        assert private not in content
    browser_page.screenshot("revoked")

    base, revoked_token = revoked_url.rsplit("/", 1)
    # The revoked license's order number with another secret is no link to
    # it (a 404, where its own token is a 410); so is a number nobody holds.
    forged = revoked_token[:12] + "A" * 43
    unknowns = ("A" * 43, "short", "A" * 42 + "%21", forged, "0" * 12 + "A" * 43)
    for unknown in unknowns:
        answer = page.goto(f"{base}/{unknown}")
        assert answer is not None
        assert answer.status == 404
        expect(page.get_by_role("heading", level=1)).to_have_text(
            "There is no invitation at this address"
        )
    browser_page.screenshot("unknown")

    _, live_url = grant(http, partner, transaction_id="2", email="bo@example.com")
    token = form_token(http.get(live_url).text)
    clock.set(datetime(2027, 3, 10, 9, 30, tzinfo=UTC))  # the term's last moment
    answer = page.goto(live_url)
    assert answer is not None
    assert answer.status == 410
    browser_page.screenshot("expired")
    late = http.post(
        live_url,
        data={"csrf_token": token},
        headers={"Origin": str(http.base_url).rstrip("/")},
    )
    assert late.status_code == 410
    assert browser_page.blocked == []


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_other_methods_are_refused(
    server: LiveServer, partner: Partner, method: str
) -> None:
    with httpx.Client(base_url=server.url) as http:
        _, url = grant(http, partner)
        assert http.request(method, url).status_code == 405


def test_an_operator_folder_replaces_a_page_template(
    settings: Settings,
    clock: FixedClock,
    engine: Engine,
    partner: Partner,
    tmp_path: Path,
) -> None:
    folder = tmp_path / "templates"
    (folder / "pages").mkdir(parents=True)
    (folder / "pages" / "invitation.html").write_text(
        '{% extends "pages/base.html" %}{% block content %}'
        "<h1>Welcome to Acme Rewards, {{ first_name }}</h1>"
        '<form method="post"><input type="hidden" name="csrf_token" '
        'value="{{ csrf_token }}"><button>Yes please</button></form>'
        "{% endblock %}"
    )
    custom = Settings(**{**settings.model_dump(), "template_folder": folder})
    with LiveServer(custom, clock) as live, httpx.Client(base_url=live.url) as http:
        _, url = grant(http, partner, first_name="<Ann>")
        page = http.get(url)
        assert "<h1>Welcome to Acme Rewards, &lt;Ann&gt;</h1>" in page.text
        assert "<button>Yes please</button>" in page.text
        # The pages not replaced are still famprov's own.
        assert "There is no invitation" in http.get(url[:-1] + "!").text

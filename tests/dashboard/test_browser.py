"""The dashboard in a real browser (issue 9): headless Chromium drives a `relay serve` process through the pages an
operator uses: log in, see the pools, change a weight and see it persisted and audited, find a message and open its
timeline, watch the overview refresh in place, and read it all at phone width.

Every test leaves a screenshot in test-artifacts/screenshots/ (kept by CI, also when it fails). With
RELAY_DOCS_SCREENSHOTS=1 the tests also write the docs' pictures to docs/screenshots/.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Dialog, Locator, Page, ViewportSize, expect, sync_playwright

from tests.support.browser import (
    ARTIFACTS,
    DESKTOP,
    PHONE,
    SENDER,
    DashboardServer,
    artifact_name,
    dashboard_server,
    docs_screenshot,
    horizontal_overflow,
    require_chromium,
)
from tests.support.dashboard import ADMIN_KEY, OPERATOR_KEY, VIEWER_KEY

pytestmark = pytest.mark.slow

REFRESH_MS = 5000  # relay.js: PERIOD_MS
SECTIONS = {
    "Overview": "/dashboard",
    "Pools": "/dashboard/pools",
    "Workspaces": "/dashboard/workspaces",
    "Messages": "/dashboard/messages",
    "Capacity": "/dashboard/capacity",
    "Events & audit": "/dashboard/activity",
}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = require_chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def server(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashboardServer]:
    """One `relay serve` for the module, with four messages already sent through pool "invite". (It takes the
    browser so that a missing Chromium skips before Relay starts.)"""
    with dashboard_server(tmp_path_factory.mktemp("dashboard")) as running:
        running.submit(4, tag="browser")
        running.wait_sent(4)
        yield running


class Pages:
    """Browser pages of one test, each in its own context (its own cookies); screenshotted when the test ends."""

    def __init__(self, browser: Browser, server: DashboardServer, name: str) -> None:
        self.browser = browser
        self.server = server
        self.name = name
        self.opened: list[Page] = []

    def open(
        self,
        key: str | None = None,
        path: str = "/dashboard",
        *,
        viewport: ViewportSize = DESKTOP,
        clock: bool = False,
    ) -> Page:
        """A page at `path`, logged in through the login form with `key` when given."""
        context = self.browser.new_context(viewport=viewport, base_url=self.server.base_url)
        context.set_default_timeout(10_000)
        page = context.new_page()
        self.opened.append(page)
        if clock:
            page.clock.install()  # timers run on their own, and a test may also move them on
        page.goto(path)
        if key is not None:
            expect(page).to_have_url(re.compile(r"/dashboard/login\?next="))
            page.get_by_label("API key").fill(key)
            page.get_by_role("button", name="Log in").click()
            expect(page).to_have_url(self.server.base_url + path)
        return page

    def snap(self, page: Page, label: str = "") -> None:
        """`page` as it is now, in test-artifacts/screenshots/<test>[-label].png."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        name = artifact_name(f"{self.name}-{label}" if label else self.name)
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def finish(self) -> None:
        try:
            for index, page in enumerate(self.opened):
                self.snap(page, str(index + 1) if index else "")
        finally:
            for page in self.opened:
                page.context.close()


@pytest.fixture
def pages(browser: Browser, server: DashboardServer, request: pytest.FixtureRequest) -> Iterator[Pages]:
    opened = Pages(browser, server, request.node.name)
    yield opened
    opened.finish()


def test_logging_in_through_the_form_opens_the_overview_with_its_charts(pages: Pages) -> None:
    page = pages.open(path="/dashboard")
    expect(page).to_have_url(re.compile(r"/dashboard/login\?next=/dashboard$"))
    page.get_by_label("API key").fill("not-a-key-of-this-relay")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("that API key is not known here")
    expect(page.get_by_label("API key")).to_be_visible()

    page.get_by_label("API key").fill(ADMIN_KEY)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(pages.server.base_url + "/dashboard")
    expect(page.get_by_text("ada · admin")).to_be_visible()
    expect(page.locator("svg.chart")).to_be_visible()
    expect(page.locator("svg.chart rect.ok").first).to_be_attached()  # the four sent messages are drawn
    expect(page.locator("[data-figure]")).to_have_count(4)
    assert int(page.locator('[data-figure="attempts"]').inner_text()) >= 4
    expect(page.locator('[data-figure="success-rate"]')).to_have_text("100.0 %")
    expect(page.locator('[data-pool-available="invite"]')).to_have_text("2 / 2")
    docs_screenshot(page, "overview")


def test_the_pools_page_shows_every_member_with_health_and_capacity(pages: Pages) -> None:
    page = pages.open(VIEWER_KEY, "/dashboard/pools")
    card = page.locator('[data-pool="invite"]')
    expect(card.get_by_role("heading", name=re.compile("invite"))).to_be_visible()
    for member in ("ws-a", "ws-b"):
        row = card.locator(f'[data-member="{member}"]')
        expect(row).to_be_visible()
        expect(row.locator(".badge.health-healthy")).to_have_text("healthy")
        bar = row.locator(".capacity .bar")
        expect(bar).to_be_visible()
        box = bar.bounding_box()
        assert box is not None and box["width"] >= 80
        expect(row.locator(".capacity small")).to_contain_text("left")
    expect(card.locator(".share")).to_have_count(2)
    expect(card.locator(".share-bar.expected")).to_have_count(2)
    docs_screenshot(page, "pools")


def _member_form(page: Page, workspace: str) -> Locator:
    return page.locator(f'form[action="/dashboard/pools/invite/members/{workspace}"]')


def _audit(server: DashboardServer) -> list[dict[str, Any]]:
    answer = server.api("GET", "/api/v1/audit", ADMIN_KEY, params={"target_type": "pool", "target_id": "invite"})
    assert answer.status_code == 200, answer.text
    return list(answer.json())


def test_an_admin_changes_a_weight_after_confirming_and_it_is_persisted_and_audited(pages: Pages) -> None:
    page = pages.open(ADMIN_KEY, "/dashboard/pools/invite")
    questions: list[str] = []

    def accept(dialog: Dialog) -> None:
        questions.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    form = _member_form(page, "ws-b")
    form.get_by_label("weight of ws-b").fill("5")
    form.get_by_role("button", name="Save ws-b").click()
    expect(page.get_by_role("status")).to_have_text("ws-b: weight 5.0, enabled (audited as ada)")
    assert questions == ["Change ws-b in pool invite?"]

    page.reload()
    expect(page.locator('#pool-live [data-member="ws-b"] [data-weight]')).to_have_text("5.0")
    expect(_member_form(page, "ws-b").get_by_label("weight of ws-b")).to_have_value("5.0")
    latest = page.locator('[data-audit-action="update_member"]').first
    expect(latest).to_contain_text("ada")
    expect(latest).to_contain_text("update member")

    entry = _audit(pages.server)[0]
    assert (entry["actor"], entry["action"]) == ("ada", "update_member")
    assert {m["workspace_id"]: m["weight"] for m in entry["after"]["workspaces"]}["ws-b"] == 5.0


def test_dismissing_the_confirmation_changes_nothing(pages: Pages) -> None:
    page = pages.open(ADMIN_KEY, "/dashboard/pools/invite")
    audited = len(_audit(pages.server))
    weight = page.locator('#pool-live [data-member="ws-a"] [data-weight]').inner_text()
    questions: list[str] = []

    def dismiss(dialog: Dialog) -> None:
        questions.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", dismiss)
    form = _member_form(page, "ws-a")
    form.get_by_label("weight of ws-a").fill("9")
    form.get_by_role("button", name="Save ws-a").click()
    assert questions == ["Change ws-a in pool invite?"]
    expect(page).to_have_url(pages.server.base_url + "/dashboard/pools/invite")  # no post, no redirect
    expect(page.get_by_role("status")).to_have_count(0)

    page.reload()
    expect(page.locator('#pool-live [data-member="ws-a"] [data-weight]')).to_have_text(weight)
    assert len(_audit(pages.server)) == audited


def test_a_viewer_sees_the_pool_but_no_change_form(pages: Pages) -> None:
    page = pages.open(VIEWER_KEY, "/dashboard/pools/invite")
    expect(page.get_by_text("vera · viewer")).to_be_visible()
    expect(page.locator('#pool-live [data-member="ws-a"]')).to_be_visible()
    expect(page.get_by_role("heading", name="Change members")).to_have_count(0)
    expect(page.locator("form[data-confirm]")).to_have_count(0)
    expect(page.get_by_label("weight of ws-a")).to_have_count(0)


def test_the_routing_test_form_shows_a_dry_run(pages: Pages) -> None:
    page = pages.open(ADMIN_KEY, "/dashboard/pools/invite")
    form = page.locator('form[method="get"][action="/dashboard/pools/invite"]')
    form.get_by_label("Sender").fill(SENDER)
    form.get_by_label("Simulated decisions").fill("200")
    form.get_by_role("button", name="Test").click()
    result = page.locator("#routing-result")
    expect(result.locator("[data-chosen]")).to_have_text(re.compile(r"^ws-[ab]$"))
    expect(result).to_contain_text("Picks of 200")
    picks = result.locator("tbody tr td:last-child").all_inner_texts()
    assert sum(int(p) for p in picks) == 200
    docs_screenshot(page, "pool")


def test_finding_a_message_opens_its_timeline(pages: Pages) -> None:
    page = pages.open(VIEWER_KEY, "/dashboard/messages")
    search = page.locator("form#message-search")
    search.locator('input[name="sender"]').fill(SENDER)
    search.get_by_role("button", name="Search").click()
    expect(page).to_have_url(re.compile(r"/dashboard/messages\?.*sender=brian%40invite\.com"))
    first = page.locator("tr[data-message]").first
    expect(first).to_be_visible()
    message_id = first.get_attribute("data-message")
    first.locator(f'a[href="/dashboard/messages/{message_id}"]').click()
    expect(page).to_have_url(f"{pages.server.base_url}/dashboard/messages/{message_id}")
    attempt = page.locator('ol.timeline > li[data-attempt="1"]')
    expect(attempt).to_be_visible()
    expect(attempt.locator(".decision")).to_contain_text("invite")
    docs_screenshot(page, "message")


def test_the_overview_refreshes_in_place_without_a_reload(pages: Pages) -> None:
    server = pages.server
    page = pages.open(VIEWER_KEY, "/dashboard", clock=True)
    figure = page.locator('[data-figure="attempts"]')
    before = int(figure.inner_text())
    page.evaluate("window.relayMarker = 'the same document'")
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)

    sent = server.sent_count()
    answer = server.api(
        "POST",
        "/api/v1/messages",
        OPERATOR_KEY,
        json={"from": SENDER, "to": ["ann@example.org"], "subject": "live", "text": "hello"},
    )
    assert answer.status_code == 202, answer.text
    server.wait_sent(sent + 1)
    page.clock.fast_forward(REFRESH_MS)  # the next refresh now, not in up to five seconds
    expect(figure).to_have_text(str(before + 1))

    assert page.evaluate("window.relayMarker") == "the same document"
    assert int(page.evaluate("document.body.dataset.refreshed")) >= 1
    assert navigations == []


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["390x844", "1280x800"])
def test_every_page_fits_the_screen_with_the_nav_in_view(pages: Pages, viewport: ViewportSize) -> None:
    page = pages.open(VIEWER_KEY, "/dashboard/pools", viewport=viewport)
    for path in ("/dashboard/pools", "/dashboard/pools/invite", *SECTIONS.values()):
        page.goto(path)
        pages.snap(page, path.removeprefix("/dashboard").strip("/").replace("/", "-") or "overview")
        nav = page.get_by_role("navigation", name="sections")
        expect(nav).to_be_in_viewport()
        for label in SECTIONS:
            link = nav.get_by_role("link", name=label, exact=True)
            expect(link).to_be_in_viewport()
        assert horizontal_overflow(page) <= 0, f"{path} scrolls sideways at {viewport['width']} px"
        if path == "/dashboard/pools" and viewport == PHONE:
            docs_screenshot(page, "pools-phone")


def test_every_section_opens_from_the_nav(pages: Pages) -> None:
    page = pages.open(VIEWER_KEY, "/dashboard")
    for label, path in SECTIONS.items():
        page.get_by_role("navigation", name="sections").get_by_role("link", name=label, exact=True).click()
        expect(page).to_have_url(pages.server.base_url + path)
        expect(page.locator('nav a[aria-current="page"]')).to_have_text(label)
        expect(page.get_by_role("heading", level=1)).to_be_visible()
        assert horizontal_overflow(page) <= 0, f"{path} scrolls sideways at 1280 px"
        if label in ("Workspaces", "Capacity"):
            docs_screenshot(page, label.lower())

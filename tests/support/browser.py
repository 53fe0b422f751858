"""Real-browser tests of the dashboard: a `relay serve` process the browser can reach, Debian's Chromium driven by
Playwright, logging in through the form, and screenshots kept as test artifacts (and, on request, for the docs).

Chromium missing skips with the reason, or fails under RELAY_REQUIRE_SERVICES=1 (CI installs Debian's `chromium`).
"""

from __future__ import annotations

import os
import re
import smtplib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, ViewportSize

from .dashboard import KEYS, VIEWER_KEY
from .net import free_port, wait_for
from .pools import plain_message, pool
from .relay import RelayProcess, config, sandbox_workspace
from .services import services_required

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "screenshots"
DOCS_SCREENSHOTS = ROOT / "docs" / "screenshots"
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}
SENDER = "brian@invite.com"

__all__ = [
    "ARTIFACTS",
    "DESKTOP",
    "PHONE",
    "SENDER",
    "DashboardServer",
    "artifact_name",
    "dashboard_server",
    "docs_screenshot",
    "horizontal_overflow",
    "require_chromium",
]


def require_chromium() -> str:
    """The Chromium binary the tests launch; skips (or fails under RELAY_REQUIRE_SERVICES=1) when it is missing."""
    if CHROMIUM.exists() and os.access(CHROMIUM, os.X_OK):
        return str(CHROMIUM)
    message = f"{CHROMIUM} is not installed (apt-get install chromium); Playwright cannot download browsers here"
    if services_required():
        pytest.fail(f"{message} (RELAY_REQUIRE_SERVICES=1)")
    pytest.skip(message)


@dataclass
class DashboardServer:
    """A running `relay serve` with the dashboard on `base_url`, pool "invite" (ws-a 3, ws-b 1) and the three keys."""

    process: RelayProcess
    base_url: str

    def api(self, method: str, path: str, key: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"}
        return httpx.request(method, self.base_url + path, headers=headers, timeout=10, **kwargs)

    def sent_count(self) -> int:
        answer = self.api("GET", "/api/v1/messages", VIEWER_KEY, params={"status": "sent", "limit": 500})
        assert answer.status_code == 200, answer.text
        return len(answer.json())

    def submit(self, count: int, *, tag: str, first: int = 0) -> None:
        """Mail from SENDER over SMTP, one session, as a client application sends it."""
        with smtplib.SMTP("127.0.0.1", self.process.smtp_port, timeout=30) as client:
            for n in range(first, first + count):
                client.sendmail(SENDER, ["ann@example.org"], plain_message(SENDER, tag, n))

    def wait_sent(self, count: int) -> None:
        wait_for(lambda: self.sent_count() >= count, timeout=20, interval=0.1, what=f"{count} messages sent")


@contextmanager
def dashboard_server(workdir: Path) -> Iterator[DashboardServer]:
    port = free_port()
    data = config(
        f"sqlite:///{workdir / 'relay.db'}",
        [
            sandbox_workspace("ws-a", ["a.example"], workdir / "outbox-a"),
            sandbox_workspace("ws-b", ["b.example"], workdir / "outbox-b"),
        ],
        http={"port": port, **KEYS},
        load_balancing_pools=[pool("invite", ["invite.com"], [("ws-a", 3.0), ("ws-b", 1.0)])],
    )
    process = RelayProcess(data, workdir, name="relay-dashboard").start()
    try:
        server = DashboardServer(process, f"http://127.0.0.1:{port}")
        wait_for(lambda: _answers(server.base_url + "/healthz"), timeout=15, what="the dashboard's HTTP port")
        yield server
    finally:
        process.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def horizontal_overflow(page: Page) -> int:
    """How many CSS pixels the page is wider than the window (0: no sideways scrolling)."""
    return int(page.evaluate("document.documentElement.scrollWidth - window.innerWidth"))


def artifact_name(node_name: str) -> str:
    """A file name for a test's screenshot: `test_x[390x844]` -> `test_x-390x844`."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", node_name).strip("-")


def docs_screenshots_wanted() -> bool:
    return os.environ.get("RELAY_DOCS_SCREENSHOTS", "") not in ("", "0", "false")


def docs_screenshot(page: Page, name: str) -> None:
    """Under RELAY_DOCS_SCREENSHOTS=1, the whole page as docs/screenshots/<name>.png (the docs' current pictures)."""
    if docs_screenshots_wanted():
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS_SCREENSHOTS / f"{name}.png"), full_page=True)

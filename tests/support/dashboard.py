"""The dashboard of a Relay started in the test, in process, logged in with a key."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from relay.runtime import Relay

VIEWER_KEY = "dashboard-test-viewer-key"
OPERATOR_KEY = "dashboard-test-operator-key"
ADMIN_KEY = "dashboard-test-admin-key"

KEYS = {
    "api_keys": [
        {"name": "vera", "key": VIEWER_KEY},
        {"name": "otto", "key": OPERATOR_KEY, "role": "operator"},
        {"name": "ada", "key": ADMIN_KEY, "role": "admin"},
    ]
}


@asynccontextmanager
async def dashboard_client(relay: Relay, key: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the dashboard; logged in with `key` when given (its session cookie kept)."""
    transport = httpx.ASGITransport(app=relay.api_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        if key is not None:
            answer = await client.post("/dashboard/login", data={"key": key, "next": "/dashboard"})
            assert answer.status_code == 303 and answer.headers["location"] == "/dashboard", answer.text
        yield client


def form_token(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no form token on the page"
    return found.group(1)

"""The HTTP API of a Relay started in the test, in process (ASGI), and the API keys tests give it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from relay.runtime import Relay


@asynccontextmanager
async def api_client(relay: Relay) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=relay.api_app()), base_url="http://t") as client:
        yield client


def viewer_and_admin(viewer_key: str, admin_key: str) -> dict[str, Any]:
    """`http` settings with a viewer key named "dash" and an admin key named "ops"."""
    return {"api_keys": [{"name": "dash", "key": viewer_key}, {"name": "ops", "key": admin_key, "role": "admin"}]}

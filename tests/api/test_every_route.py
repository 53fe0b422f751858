"""Every `/api/v1` route, enumerated from the app's OpenAPI document (a route added later is covered without
editing this test): without a key → 401, a viewer writing → 403, a viewer reading → neither; and the PRD's
endpoints exist with exactly the PRD's paths."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from relay.runtime import Relay
from tests.support.pools import pool
from tests.support.relay import config, sandbox_workspace, start_relay

VIEWER = {"Authorization": "Bearer viewer-key-every-1"}
ADMIN = {"Authorization": "Bearer admin-key-every-2"}

# Viewer operations sent with POST: a dry run changes nothing.
READS_BY_POST = {("POST", "/api/v1/pools/{pool_id}/test")}

PRD_ENDPOINTS = {
    ("GET", "/api/v1/pools"),
    ("POST", "/api/v1/pools"),
    ("GET", "/api/v1/pools/{pool_id}"),
    ("PUT", "/api/v1/pools/{pool_id}"),
    ("DELETE", "/api/v1/pools/{pool_id}"),
    ("POST", "/api/v1/pools/{pool_id}/test"),
    ("POST", "/api/v1/pools/{pool_id}/workspaces"),
    ("PUT", "/api/v1/pools/{pool_id}/workspaces/{workspace_id}"),
    ("DELETE", "/api/v1/pools/{pool_id}/workspaces/{workspace_id}"),
    ("GET", "/api/v1/pools/{pool_id}/status"),
    ("GET", "/api/v1/pools/{pool_id}/metrics"),
    ("GET", "/api/v1/workspaces/{workspace_id}/pools"),
}


@pytest.fixture
async def relay(sqlite_url: str, tmp_path: Path) -> AsyncIterator[Relay]:
    data = config(
        sqlite_url,
        [sandbox_workspace("ws-a", ["joinmednet.org"], tmp_path / "a")],
        load_balancing_pools=[pool("invite", ["invite.com"], [("ws-a", 1.0)])],
        http={
            "api_keys": [
                {"name": "dash", "key": "viewer-key-every-1"},
                {"name": "ops", "key": "admin-key-every-2", "role": "admin"},
            ]
        },
    )
    started = await start_relay(data, tmp_path)
    yield started
    await started.stop()


def operations(relay: Relay) -> list[tuple[str, str]]:
    """From the OpenAPI document: the routes the app serves, as clients see them."""
    paths = relay.api_app().openapi()["paths"]
    return [(method.upper(), path) for path, item in paths.items() if path.startswith("/api/v1/") for method in item]


def concrete(path: str) -> str:
    return (
        path.replace("{pool_id}", "invite")
        .replace("{workspace_id}", "ws-a")
        .replace("{message_id}", "01JZZZZZZZZZZZZZZZZZZZZZZZ")
        .replace("{entry_id}", "1")
    )


async def test_the_prd_endpoints_are_there_exactly(relay: Relay) -> None:
    assert set(operations(relay)) >= PRD_ENDPOINTS


async def test_every_route_needs_a_key_and_viewers_only_read(relay: Relay) -> None:
    routes = operations(relay)
    assert len(routes) >= 25
    transport = httpx.ASGITransport(app=relay.api_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as api:
        for method, path in routes:
            url = concrete(path)
            body = None if method in ("GET", "DELETE") else {}
            anonymous = await api.request(method, url, json=body)
            assert anonymous.status_code == 401, (method, path, anonymous.text)
            assert anonymous.json()["error"]["code"] == "unauthorized"
            as_viewer = await api.request(method, url, json=body, headers=VIEWER)
            if method == "GET" or (method, path) in READS_BY_POST:
                assert as_viewer.status_code not in (401, 403), (method, path, as_viewer.text)
            else:
                assert as_viewer.status_code == 403, (method, path, as_viewer.text)
                assert as_viewer.json()["error"]["code"] == "forbidden"
            # The admin key passes the role check everywhere (what follows is each endpoint's own tests' matter).
            as_admin = await api.request(method, url, json=body, headers=ADMIN)
            assert as_admin.status_code not in (401, 403), (method, path, as_admin.text)


async def test_odd_identifiers_are_4xx_never_500(relay: Relay) -> None:
    transport = httpx.ASGITransport(app=relay.api_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as api:
        for method, url in (
            ("GET", "/api/v1/audit?target_id=%00"),
            ("GET", "/api/v1/pools/a%00b"),
            ("POST", "/api/v1/audit/99999999999999999999/rollback"),
            ("POST", "/api/v1/audit/0/rollback"),
            ("GET", f"/api/v1/audit?target_id={'x' * 300}"),
        ):
            answer = await api.request(method, url, headers=ADMIN)
            assert 400 <= answer.status_code < 500, (method, url, answer.status_code, answer.text)
            assert "error" in answer.json()


async def test_nul_in_a_json_body_is_400_not_500(postgres_url: str, tmp_path: Path) -> None:
    data = config(
        postgres_url,
        [sandbox_workspace("ws-a", ["joinmednet.org"], tmp_path / "a")],
        http={"api_keys": [{"name": "ops", "key": "admin-key-every-2", "role": "admin"}]},
    )
    relay = await start_relay(data, tmp_path)
    try:
        transport = httpx.ASGITransport(app=relay.api_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as api:
            body = {"id": "nul", "name": "a\u0000b", "domain_patterns": ["nul.example"], "workspaces": []}
            answer = await api.post("/api/v1/pools", json=body, headers=ADMIN)
            assert answer.status_code == 400 and answer.json()["error"]["code"] == "bad_request"
            fine = {**body, "name": "ab"}
            assert (await api.post("/api/v1/pools", json=fine, headers=ADMIN)).status_code == 201  # body re-read
    finally:
        await relay.stop()

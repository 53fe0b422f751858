"""How a running Relay follows its configuration (`runtime/live.py`): a SIGHUP that would clash with the
database changes nothing anywhere; a workspace may opt in to a pool that exists only in the database; a change
whose adoption failed is adopted at the next poll; a provider that could not be built is built once it can be."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from relay.routing import Route
from relay.runtime import Relay
from tests.emulators.gmail import ServiceAccount
from tests.support.api import api_client
from tests.support.pools import pool
from tests.support.relay import config, sandbox_workspace, settings_from, start_relay

ADMIN = {"Authorization": "Bearer admin-key-live-6a1b"}


def data(sqlite_url: str, tmp_path: Path) -> dict[str, Any]:
    return config(
        sqlite_url,
        [sandbox_workspace("ws-a", ["a.example"], tmp_path / "a")],
        load_balancing_pools=[pool("invite", ["invite.com"], [("ws-a", 1.0)])],
        http={"api_keys": [{"name": "ops", "key": "admin-key-live-6a1b", "role": "admin"}]},
    )


@pytest.fixture
async def relay(sqlite_url: str, tmp_path: Path) -> AsyncIterator[Relay]:
    started = await start_relay(data(sqlite_url, tmp_path), tmp_path)
    yield started
    await started.stop()


@pytest.fixture
async def api(relay: Relay) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(relay) as client:
        yield client


async def test_a_sighup_that_would_clash_with_the_database_writes_nothing(
    relay: Relay, api: httpx.AsyncClient, sqlite_url: str, tmp_path: Path
) -> None:
    body = sandbox_workspace("news", ["news.example.org"], tmp_path / "news")
    assert (await api.post("/api/v1/workspaces", json=body, headers=ADMIN)).status_code == 201
    clashing = data(sqlite_url, tmp_path)
    clashing["smtp"]["port"] = relay.settings.smtp.port
    clashing["http"]["port"] = relay.settings.http.port
    clashing["workspaces"].append(sandbox_workspace("ws-c", ["news.example.org"], tmp_path / "c"))
    refused = await relay.reload(settings_from(clashing, tmp_path))
    assert refused == [
        'database: workspaces["ws-c"].domains[0]: domain "news.example.org" is already served by workspace "news"'
    ]
    assert await relay.workspace_tables.get("ws-c") is None  # not written: other processes never see it
    assert relay.router.route("x@news.example.org") == Route("direct", "news")


async def test_a_workspace_may_opt_in_to_a_pool_that_exists_only_in_the_database(
    relay: Relay, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    created = {"id": "api-pool", "name": "API", "domain_patterns": ["api-pool.example"], "workspaces": []}
    assert (await api.post("/api/v1/pools", json=created, headers=ADMIN)).status_code == 201
    body = {
        **sandbox_workspace("news", ["news.example.org"], tmp_path / "news"),
        "load_balancing": {"enabled": True, "pools": ["api-pool"]},
    }
    with structlog.testing.capture_logs() as logs:
        assert (await api.post("/api/v1/workspaces", json=body, headers=ADMIN)).status_code == 201
    assert not [e for e in logs if e["event"] == "config.database_invalid"]
    assert relay.router.route("x@news.example.org") == Route("direct", "news")


async def test_a_change_whose_adoption_failed_is_adopted_at_the_next_poll(
    relay: Relay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    news = sandbox_workspace("news", ["news.example.org"], tmp_path / "news")
    await relay.workspace_tables.save(news, actor="another process", action="create", before=None)
    use = relay.pools.use
    failures = []

    async def blink(settings: Any) -> None:
        if not failures:
            failures.append(settings)
            raise ConnectionError("the database blinked")
        await use(settings)

    monkeypatch.setattr(relay.pools, "use", blink)
    with pytest.raises(ConnectionError):
        await relay.live.refresh()
    assert relay.router.route("x@news.example.org") is None
    await relay.live.refresh()
    assert relay.router.route("x@news.example.org") == Route("direct", "news")


async def test_a_provider_that_could_not_be_built_is_built_once_it_can_be(relay: Relay, tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "sa.json"
    gmail = {
        "id": "gm",
        "domains": ["gm.example"],
        "gmail": {"service_account_file": str(key_file), "base_url": "http://127.0.0.1:9"},
    }
    await relay.workspace_tables.save(gmail, actor="another process", action="create", before=None)
    with structlog.testing.capture_logs() as logs:
        await relay.live.refresh()
    assert "gm" not in relay.providers
    [event] = [e for e in logs if e["event"] == "workspace.provider_unavailable"]
    assert event["workspace_id"] == "gm" and "cannot read the key file" in event["error"]
    assert relay.router.route("x@gm.example") == Route("direct", "gm")  # routed; its mail waits for the provider
    key_file.parent.mkdir()
    key_file.write_text(json.dumps(ServiceAccount.generate().key_file("http://127.0.0.1:9/token")))
    await relay.live.refresh()
    assert "gm" in relay.providers


async def test_a_sighup_adding_a_pool_on_an_api_pools_pattern_is_refused(
    relay: Relay, api: httpx.AsyncClient, sqlite_url: str, tmp_path: Path
) -> None:
    created = {"id": "api-pool", "name": "API", "domain_patterns": ["shared.example"], "workspaces": []}
    assert (await api.post("/api/v1/pools", json=created, headers=ADMIN)).status_code == 201
    clashing = data(sqlite_url, tmp_path)
    clashing["smtp"]["port"] = relay.settings.smtp.port
    clashing["http"]["port"] = relay.settings.http.port
    clashing["load_balancing_pools"].append(pool("file-pool", ["shared.example"], [("ws-a", 1.0)]))
    refused = await relay.reload(settings_from(clashing, tmp_path))
    assert refused and 'pattern "shared.example" is already used by pool' in refused[0]
    assert await relay.pool_tables.get("file-pool") is None

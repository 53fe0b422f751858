"""Pool writes through `/api/v1` over a running Relay: admin only, validated like the config file with the
field named, `If-Match` guarded, audited with before and after, and followed by routing at once. A pool changed
through the API is no longer overwritten from the config file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.routing import Route
from relay.runtime import Relay
from tests.support.api import api_client, viewer_and_admin
from tests.support.pools import pool
from tests.support.relay import config, sandbox_workspace, settings_from, start_relay

VIEWER = {"Authorization": "Bearer viewer-key-0b5e"}
ADMIN = {"Authorization": "Bearer admin-key-77d1"}


def data(sqlite_url: str, tmp_path: Path) -> dict[str, Any]:
    return config(
        sqlite_url,
        [
            sandbox_workspace("ws-a", ["joinmednet.org"], tmp_path / "a"),
            sandbox_workspace("ws-b", ["mednet.example"], tmp_path / "b"),
        ],
        load_balancing_pools=[pool("invite", ["invite.com"], [("ws-a", 3.0), ("ws-b", 1.0)])],
        http=viewer_and_admin("viewer-key-0b5e", "admin-key-77d1"),
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


NEWS = {"id": "news", "name": "News", "domain_patterns": ["news.example.org"], "workspaces": [{"workspace_id": "ws-b"}]}


async def test_only_admins_write(api: httpx.AsyncClient) -> None:
    assert (await api.post("/api/v1/pools", json=NEWS)).status_code == 401
    refused = await api.post("/api/v1/pools", json=NEWS, headers=VIEWER)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    for method, path in (
        ("PUT", "/api/v1/pools/invite"),
        ("DELETE", "/api/v1/pools/invite"),
        ("POST", "/api/v1/pools/invite/workspaces"),
        ("PUT", "/api/v1/pools/invite/workspaces/ws-a"),
        ("DELETE", "/api/v1/pools/invite/workspaces/ws-a"),
    ):
        answer = await api.request(method, path, json={}, headers=VIEWER)
        assert answer.status_code == 403, (method, path, answer.text)


async def test_a_created_pool_routes_at_once_and_is_audited(relay: Relay, api: httpx.AsyncClient) -> None:
    assert relay.router.route("x@news.example.org") is None
    created = await api.post("/api/v1/pools", json=NEWS, headers=ADMIN)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["strategy"] == "capacity_weighted" and body["workspaces"] == [
        {"workspace_id": "ws-b", "weight": 1.0, "enabled": True}
    ]
    assert created.headers["etag"] == (await api.get("/api/v1/pools/news", headers=VIEWER)).headers["etag"]
    assert relay.router.route("x@news.example.org") == Route("pool", "news")
    [entry] = (await api.get("/api/v1/audit?target_id=news", headers=VIEWER)).json()
    assert (entry["actor"], entry["action"], entry["before"]) == ("ops", "create", None)
    assert entry["after"]["domain_patterns"] == ["news.example.org"]
    again = await api.post("/api/v1/pools", json=NEWS, headers=ADMIN)
    assert again.status_code == 409 and again.json()["error"]["field"] == "id"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"workspaces": [{"workspace_id": "ghost"}]}, "workspaces[0].workspace_id"),
        ({"workspaces": [{"workspace_id": "ws-b", "weight": -1}]}, "workspaces[0].weight"),
        ({"strategy": "fastest"}, "strategy"),
        ({"domain_patterns": ["invite.com"]}, "domain_patterns[0]"),
        ({"domain_patterns": ["joinmednet.org"]}, "domain_patterns[0]"),
        ({"colour": "blue"}, "colour"),
    ],
)
async def test_invalid_pools_are_422_naming_the_field(
    relay: Relay, api: httpx.AsyncClient, change: dict[str, Any], field: str
) -> None:
    answer = await api.post("/api/v1/pools", json={**NEWS, **change}, headers=ADMIN)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == field
    assert relay.balancer.catalog.get("news") is None  # nothing was written


async def test_if_match_guards_against_lost_updates(api: httpx.AsyncClient) -> None:
    first = await api.get("/api/v1/pools/invite", headers=VIEWER)
    tag = first.headers["etag"]
    document = {k: v for k, v in first.json().items() if k not in ("skipped", "max_ejection_percent")}
    heavier = {**document, "workspaces": [{"workspace_id": "ws-a", "weight": 5}, {"workspace_id": "ws-b"}]}
    changed = await api.put("/api/v1/pools/invite", json=heavier, headers={**ADMIN, "If-Match": tag})
    assert changed.status_code == 200, changed.text
    assert changed.headers["etag"] != tag
    stale = await api.put("/api/v1/pools/invite", json=document, headers={**ADMIN, "If-Match": tag})
    assert stale.status_code == 412 and stale.json()["error"]["code"] == "precondition_failed"
    current = (await api.get("/api/v1/pools/invite", headers=VIEWER)).json()
    assert current["workspaces"][0]["weight"] == 5.0


async def test_membership_add_change_remove_and_delete_are_audited(relay: Relay, api: httpx.AsyncClient) -> None:
    await api.post("/api/v1/pools", json=NEWS, headers=ADMIN)
    added = await api.post("/api/v1/pools/news/workspaces", json={"workspace_id": "ws-a", "weight": 2}, headers=ADMIN)
    assert added.status_code == 201 and len(added.json()["workspaces"]) == 2
    duplicate = await api.post("/api/v1/pools/news/workspaces", json={"workspace_id": "ws-a"}, headers=ADMIN)
    assert duplicate.status_code == 409
    changed = await api.put("/api/v1/pools/news/workspaces/ws-a", json={"enabled": False}, headers=ADMIN)
    assert {m["workspace_id"]: m["enabled"] for m in changed.json()["workspaces"]} == {"ws-a": False, "ws-b": True}
    assert (await api.put("/api/v1/pools/news/workspaces/ghost", json={}, headers=ADMIN)).status_code == 404
    removed = await api.delete("/api/v1/pools/news/workspaces/ws-a", headers=ADMIN)
    assert [m["workspace_id"] for m in removed.json()["workspaces"]] == ["ws-b"]
    assert (await api.delete("/api/v1/pools/news", headers=ADMIN)).status_code == 204
    assert (await api.get("/api/v1/pools/news", headers=VIEWER)).status_code == 404
    assert relay.router.route("x@news.example.org") is None
    entries = (await api.get("/api/v1/audit?target_type=pool&target_id=news", headers=VIEWER)).json()
    assert [e["action"] for e in entries] == ["delete", "remove_member", "update_member", "add_member", "create"]
    delete, remove, update, add, _ = entries
    assert delete["after"] is None and delete["before"]["workspaces"] == [
        {"workspace_id": "ws-b", "weight": 1.0, "enabled": True}
    ]
    assert len(remove["before"]["workspaces"]) == 2 and len(remove["after"]["workspaces"]) == 1
    assert update["after"]["workspaces"][0] == {"workspace_id": "ws-a", "weight": 2.0, "enabled": False}
    assert add["before"]["workspaces"] == [{"workspace_id": "ws-b", "weight": 1.0, "enabled": True}]


async def test_a_pool_changed_through_the_api_is_not_overwritten_by_the_file(
    relay: Relay, api: httpx.AsyncClient, sqlite_url: str, tmp_path: Path
) -> None:
    answer = await api.put("/api/v1/pools/invite/workspaces/ws-b", json={"weight": 7}, headers=ADMIN)
    assert answer.status_code == 200
    reloaded = data(sqlite_url, tmp_path)
    reloaded["smtp"], reloaded["http"] = relay.settings.smtp.model_dump(mode="json"), data(sqlite_url, tmp_path)["http"]
    reloaded["http"]["port"] = relay.settings.http.port
    reloaded["smtp"].pop("users", None)
    assert await relay.reload(settings_from(reloaded, tmp_path)) == []
    view = relay.balancer.catalog.get("invite")
    assert view is not None and {m.workspace_id: m.weight for m in view.members} == {"ws-a": 3.0, "ws-b": 7.0}


async def test_a_rollback_restores_the_earlier_pool_exactly_and_routing_follows(
    relay: Relay, api: httpx.AsyncClient
) -> None:
    original = (await api.get("/api/v1/pools/invite", headers=VIEWER)).json()
    document = {k: v for k, v in original.items() if k not in ("skipped", "max_ejection_percent")}
    moved = {**document, "domain_patterns": ["invite.example"], "workspaces": [{"workspace_id": "ws-b", "weight": 9}]}
    assert (await api.put("/api/v1/pools/invite", json=moved, headers=ADMIN)).status_code == 200
    assert relay.router.route("brian@invite.com") is None
    [change] = (await api.get("/api/v1/audit?target_id=invite", headers=VIEWER)).json()
    assert (await api.post(f"/api/v1/audit/{change['id']}/rollback", headers=VIEWER)).status_code == 403
    done = await api.post(f"/api/v1/audit/{change['id']}/rollback", headers=ADMIN)
    assert done.status_code == 200, done.text
    assert done.json()["action"] == f"rollback:{change['id']}" and done.json()["actor"] == "ops"
    assert done.json()["after"] == change["before"]
    restored = (await api.get("/api/v1/pools/invite", headers=VIEWER)).json()
    assert restored == original
    assert relay.router.route("brian@invite.com") == Route("pool", "invite")
    assert relay.router.route("brian@invite.example") is None


async def test_rolling_back_a_creation_removes_the_pool(relay: Relay, api: httpx.AsyncClient) -> None:
    created = await api.post("/api/v1/pools", json=NEWS, headers=ADMIN)
    assert created.status_code == 201
    [entry] = (await api.get("/api/v1/audit?target_id=news", headers=VIEWER)).json()
    assert (await api.post(f"/api/v1/audit/{entry['id']}/rollback", headers=ADMIN)).status_code == 200
    assert (await api.get("/api/v1/pools/news", headers=VIEWER)).status_code == 404
    assert relay.router.route("x@news.example.org") is None
    assert (await api.post("/api/v1/audit/999999/rollback", headers=ADMIN)).status_code == 404


async def test_the_cli_rolls_back_too(relay: Relay, api: httpx.AsyncClient, tmp_path: Path) -> None:
    import asyncio
    import json
    import subprocess
    import sys

    answer = await api.put("/api/v1/pools/invite/workspaces/ws-b", json={"weight": 7}, headers=ADMIN)
    assert answer.status_code == 200
    [entry] = (await api.get("/api/v1/audit?target_id=invite", headers=VIEWER)).json()
    path = tmp_path / "cli.json"
    path.write_text(json.dumps({"database_url": relay.settings.database_url}))
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "relay.cli", "config", "rollback", str(entry["id"]), "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"restored as before entry {entry['id']}" in result.stdout
    await relay.pools.refresh()
    view = relay.balancer.catalog.get("invite")
    assert view is not None and {m.workspace_id: m.weight for m in view.members} == {"ws-a": 3.0, "ws-b": 1.0}
    latest = (await api.get("/api/v1/audit?target_id=invite&limit=1", headers=VIEWER)).json()[0]
    assert latest["actor"].startswith("cli:") and latest["action"] == f"rollback:{entry['id']}"
    missing = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "relay.cli", "config", "rollback", "424242", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1 and "no audit entry 424242" in missing.stderr


async def test_a_pool_a_workspace_opts_into_cannot_be_deleted(relay: Relay, api: httpx.AsyncClient) -> None:
    assert (await api.post("/api/v1/pools", json=NEWS, headers=ADMIN)).status_code == 201
    shown = (await api.get("/api/v1/workspaces/ws-a", headers=VIEWER)).json()["definition"]
    opted = {**shown, "load_balancing": {"enabled": True, "pools": ["invite", "news"]}}
    assert (await api.put("/api/v1/workspaces/ws-a", json=opted, headers=ADMIN)).status_code == 200
    refused = await api.delete("/api/v1/pools/news", headers=ADMIN)
    assert refused.status_code == 409 and 'unknown pool "news"' in refused.json()["error"]["message"]
    assert relay.router.route("x@joinmednet.org") == Route("direct", "ws-a")

"""Workspaces through `/api/v1/workspaces` over a running Relay: admin-only writes validated like the config file
with the field named, `If-Match` guarded, audited with before and after, secrets write-only, and followed at once
by routing and delivery — the database is the source of truth, the config file only seeds it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.routing import Route
from relay.runtime import Relay
from tests.support.api import api_client, viewer_and_admin
from tests.support.pools import pool, submit_many, wait_for_statuses
from tests.support.relay import config, sandbox_workspace, settings_from, start_relay

VIEWER = {"Authorization": "Bearer viewer-key-4d2a"}
ADMIN = {"Authorization": "Bearer admin-key-9c3e"}


def data(sqlite_url: str, tmp_path: Path) -> dict[str, Any]:
    return config(
        sqlite_url,
        [
            sandbox_workspace("ws-a", ["joinmednet.org"], tmp_path / "a"),
            sandbox_workspace("ws-b", ["mednet.example"], tmp_path / "b"),
        ],
        load_balancing_pools=[pool("invite", ["invite.com"], [("ws-a", 3.0), ("ws-b", 1.0)])],
        fallback_workspace="ws-a",
        http=viewer_and_admin("viewer-key-4d2a", "admin-key-9c3e"),
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


def news(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {**sandbox_workspace("news", ["news.example.org"], tmp_path / "news"), **extra}


async def audit(api: httpx.AsyncClient, workspace_id: str) -> list[dict[str, Any]]:
    answer = await api.get(f"/api/v1/audit?target_type=workspace&target_id={workspace_id}", headers=VIEWER)
    assert answer.status_code == 200
    return list(answer.json())


async def test_reads_need_a_key_and_writes_need_admin(api: httpx.AsyncClient, tmp_path: Path) -> None:
    routes = [
        ("GET", "/api/v1/workspaces"),
        ("GET", "/api/v1/workspaces/ws-a"),
        ("POST", "/api/v1/workspaces"),
        ("PUT", "/api/v1/workspaces/ws-a"),
        ("DELETE", "/api/v1/workspaces/ws-a"),
    ]
    for method, path in routes:
        answer = await api.request(method, path, json=news(tmp_path))
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "unauthorized", (method, path)
    for method, path in routes[2:]:
        answer = await api.request(method, path, json=news(tmp_path), headers=VIEWER)
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "forbidden", (method, path)
    listed = await api.get("/api/v1/workspaces", headers=VIEWER)
    assert listed.status_code == 200
    assert [(w["id"], w["managed_by"]) for w in listed.json()] == [("ws-a", "file"), ("ws-b", "file")]


async def test_a_created_workspace_routes_and_delivers_at_once(
    relay: Relay, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    assert relay.router.route("x@news.example.org") is None
    created = await api.post("/api/v1/workspaces", json=news(tmp_path, display_name="News"), headers=ADMIN)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["managed_by"] == "api" and body["definition"]["display_name"] == "News"
    assert created.headers["etag"] == (await api.get("/api/v1/workspaces/news", headers=VIEWER)).headers["etag"]
    assert relay.router.route("x@news.example.org") == Route("direct", "news")
    await submit_many(relay, "brian@news.example.org", 2, tag="created")
    await wait_for_statuses(relay, {"sent": 2})
    assert len(list((tmp_path / "news").glob("*.eml"))) == 2
    [entry] = await audit(api, "news")
    assert (entry["actor"], entry["action"], entry["before"]) == ("ops", "create", None)
    assert entry["after"]["domains"] == ["news.example.org"]


async def test_a_replaced_workspace_rebuilds_its_provider_and_is_audited(
    relay: Relay, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    current = await api.get("/api/v1/workspaces/ws-b", headers=VIEWER)
    moved = {**current.json()["definition"], "sandbox": {"outbox_dir": str(tmp_path / "b2")}}
    stale = '"v0"'
    refused = await api.put("/api/v1/workspaces/ws-b", json=moved, headers={**ADMIN, "If-Match": stale})
    assert refused.status_code == 412 and refused.json()["error"]["code"] == "precondition_failed"
    answer = await api.put(
        "/api/v1/workspaces/ws-b", json=moved, headers={**ADMIN, "If-Match": current.headers["etag"]}
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["etag"] != current.headers["etag"]
    await submit_many(relay, "brian@mednet.example", 1, tag="moved")
    await wait_for_statuses(relay, {"sent": 1})
    assert len(list((tmp_path / "b2").glob("*.eml"))) == 1 and not (tmp_path / "b").exists()
    [update, create] = await audit(api, "ws-b")
    assert (create["actor"], create["action"]) == ("config-file", "create")
    assert (update["actor"], update["action"]) == ("ops", "update")
    assert update["before"]["sandbox"]["outbox_dir"] == str(tmp_path / "b")
    assert update["after"]["sandbox"]["outbox_dir"] == str(tmp_path / "b2")


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"domains": ["joinmednet.org"]}, "domains[0]", 'already served by workspace "ws-a"'),
        ({"domains": ["not a domain"]}, "domains[0]", "domain"),
        ({"rate_limits": {"workspace_daily": -1}}, "rate_limits.workspace_daily", "greater than or equal"),
        ({"load_balancing": {"pools": ["nope"]}}, "load_balancing.pools[0]", 'unknown pool "nope"'),
        ({"sendgrid": {"api_key": "x"}}, None, "not supported yet"),
    ],
)
async def test_invalid_workspaces_are_refused_with_the_field(
    api: httpx.AsyncClient, tmp_path: Path, change: dict[str, Any], field: str | None, words: str
) -> None:
    answer = await api.post("/api/v1/workspaces", json=news(tmp_path, **change), headers=ADMIN)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid" and words in error["message"]
    if field is not None:
        assert error["field"] == field
    assert (await api.get("/api/v1/workspaces/news", headers=VIEWER)).status_code == 404


async def test_secrets_are_write_only_and_the_mask_keeps_them(
    relay: Relay, api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAY_SECRET_TEST_MANDRILL_KEY", "md-from-env-51f0")
    mailgun = {"id": "mg", "domains": ["mg.example"], "mailgun": {"api_key": "key-literal-0a8b7c"}}
    mandrill = {"id": "md", "domains": ["md.example"], "mandrill": {"api_key": "env:RELAY_SECRET_TEST_MANDRILL_KEY"}}
    for body in (mailgun, mandrill):
        created = await api.post("/api/v1/workspaces", json=body, headers=ADMIN)
        assert created.status_code == 201, created.text
        assert "key-literal-0a8b7c" not in created.text and "md-from-env-51f0" not in created.text
    shown = (await api.get("/api/v1/workspaces/mg", headers=VIEWER)).json()["definition"]
    assert shown["mailgun"]["api_key"] == "********"
    by_reference = (await api.get("/api/v1/workspaces/md", headers=VIEWER)).json()["definition"]
    assert by_reference["mandrill"]["api_key"] == "env:RELAY_SECRET_TEST_MANDRILL_KEY"  # a name, not a secret
    edited = {**shown, "display_name": "Mailgun"}
    assert (await api.put("/api/v1/workspaces/mg", json=edited, headers=ADMIN)).status_code == 200
    stored = await relay.workspace_tables.get("mg")
    assert stored is not None and stored.document["mailgun"]["api_key"] == "key-literal-0a8b7c"
    stored = await relay.workspace_tables.get("md")
    assert stored is not None and stored.document["mandrill"]["api_key"] == "env:RELAY_SECRET_TEST_MANDRILL_KEY"
    everything = json.dumps([(await api.get(p, headers=VIEWER)).text for p in ("/api/v1/workspaces", "/api/v1/audit")])
    assert "key-literal-0a8b7c" not in everything and "md-from-env-51f0" not in everything
    # The mask keeps a stored secret only: on a new workspace it is refused, naming the field.
    masked = await api.post("/api/v1/workspaces", json={**mailgun, "id": "mg2", "domains": ["x.example"]}
                            | {"mailgun": {"api_key": "********"}}, headers=ADMIN)  # fmt: skip
    assert masked.status_code == 422 and masked.json()["error"]["field"] == "mailgun.api_key"


async def test_an_unusable_provider_is_refused_before_it_is_stored(api: httpx.AsyncClient) -> None:
    body = {"id": "gm", "domains": ["gm.example"], "gmail": {"service_account_json": '{"type": "service_account"}'}}
    answer = await api.post("/api/v1/workspaces", json=body, headers=ADMIN)
    assert answer.status_code == 422 and "missing client_email" in answer.json()["error"]["message"]
    assert (await api.get("/api/v1/workspaces/gm", headers=VIEWER)).status_code == 404


async def test_host_paths_are_the_config_files_business(api: httpx.AsyncClient) -> None:
    """An admin key must not point a workspace at another workspace's key file (and a server of its choosing)."""
    body = {"id": "gm", "domains": ["gm.example"], "gmail": {"service_account_file": "/etc/relay/other-sa.json"}}
    answer = await api.post("/api/v1/workspaces", json=body, headers=ADMIN)
    assert answer.status_code == 422 and answer.json()["error"]["field"] == "gmail.service_account_file"
    smtp = {"id": "up", "domains": ["up.example"], "smtp": {"host": "127.0.0.1", "ca_file": "/etc/ssl/x.pem"}}
    answer = await api.post("/api/v1/workspaces", json=smtp, headers=ADMIN)
    assert answer.status_code == 422 and answer.json()["error"]["field"] == "smtp.ca_file"


async def test_odd_numbers_and_tags_are_4xx(api: httpx.AsyncClient, tmp_path: Path) -> None:
    infinite = '{"id": "inf", "domains": ["inf.example"], "sandbox": {}, "health": {"check_interval_seconds": 1e999}}'
    answer = await api.post(
        "/api/v1/workspaces", content=infinite, headers={**ADMIN, "Content-Type": "application/json"}
    )
    assert answer.status_code == 422 and "health.check_interval_seconds" in answer.json()["error"]["field"]
    for tag in ('"v\u00b2"'.encode("latin-1"), ('"v' + "9" * 5000 + '"').encode(), b"garbage"):
        stale = await api.put(
            "/api/v1/workspaces/ws-a",
            json=(await api.get("/api/v1/workspaces/ws-a", headers=VIEWER)).json()["definition"],
            headers={**ADMIN, "If-Match": tag},
        )
        assert stale.status_code == 412, tag


async def test_a_workspace_in_use_or_from_the_file_cannot_be_deleted(api: httpx.AsyncClient, tmp_path: Path) -> None:
    from_file = await api.delete("/api/v1/workspaces/ws-b", headers=ADMIN)
    assert from_file.status_code == 409 and "config file" in from_file.json()["error"]["message"]
    assert (await api.post("/api/v1/workspaces", json=news(tmp_path), headers=ADMIN)).status_code == 201
    member = {"workspace_id": "news", "weight": 1}
    assert (await api.post("/api/v1/pools/invite/workspaces", json=member, headers=ADMIN)).status_code == 201
    in_pool = await api.delete("/api/v1/workspaces/news", headers=ADMIN)
    assert in_pool.status_code == 409 and "invite" in in_pool.json()["error"]["message"]
    assert (await api.delete("/api/v1/pools/invite/workspaces/news", headers=ADMIN)).status_code == 200
    assert (await api.delete("/api/v1/workspaces/news", headers=ADMIN)).status_code == 204
    assert (await api.delete("/api/v1/workspaces/nope", headers=ADMIN)).status_code == 404


async def test_the_fallback_workspace_cannot_be_deleted(relay: Relay, api: httpx.AsyncClient, tmp_path: Path) -> None:
    shown = (await api.get("/api/v1/workspaces/ws-a", headers=VIEWER)).json()["definition"]
    assert (await api.put("/api/v1/workspaces/ws-a", json=shown, headers=ADMIN)).status_code == 200  # API-managed
    assert (await api.delete("/api/v1/pools/invite/workspaces/ws-a", headers=ADMIN)).status_code == 200
    fallback = await api.delete("/api/v1/workspaces/ws-a", headers=ADMIN)
    assert fallback.status_code == 409 and "fallback_workspace" in fallback.json()["error"]["message"]
    assert relay.router.route("x@joinmednet.org") == Route("direct", "ws-a")


async def test_delete_and_its_rollback(relay: Relay, api: httpx.AsyncClient, tmp_path: Path) -> None:
    assert (await api.post("/api/v1/workspaces", json=news(tmp_path), headers=ADMIN)).status_code == 201
    assert (await api.delete("/api/v1/workspaces/news", headers=ADMIN)).status_code == 204
    assert relay.router.route("x@news.example.org") is None
    assert (await api.get("/api/v1/workspaces/news", headers=VIEWER)).status_code == 404
    [deleted, created] = await audit(api, "news")
    assert deleted["action"] == "delete" and deleted["after"] is None
    assert deleted["before"] == created["after"]
    restored = await api.post(f"/api/v1/audit/{deleted['id']}/rollback", headers=ADMIN)
    assert restored.status_code == 200, restored.text
    assert restored.json()["action"] == f"rollback:{deleted['id']}"
    assert relay.router.route("x@news.example.org") == Route("direct", "news")
    # Rolling back the creation removes it again.
    assert (await api.post(f"/api/v1/audit/{created['id']}/rollback", headers=ADMIN)).status_code == 200
    assert relay.router.route("x@news.example.org") is None


async def test_the_file_seeds_the_database_and_then_leaves_api_changes_alone(
    relay: Relay, api: httpx.AsyncClient, sqlite_url: str, tmp_path: Path
) -> None:
    shown = (await api.get("/api/v1/workspaces/ws-b", headers=VIEWER)).json()["definition"]
    taken_over = {**shown, "display_name": "changed through the API"}
    assert (await api.put("/api/v1/workspaces/ws-b", json=taken_over, headers=ADMIN)).status_code == 200
    # A SIGHUP with the original file: ws-b stays as the API left it; a workspace the file adds arrives, one it
    # drops (file-managed) goes.
    reloaded = data(sqlite_url, tmp_path)
    reloaded["smtp"]["port"] = relay.settings.smtp.port
    reloaded["http"]["port"] = relay.settings.http.port
    reloaded["workspaces"].append(sandbox_workspace("extra", ["extra.example"], tmp_path / "extra"))
    assert await relay.reload(settings_from(reloaded, tmp_path)) == []
    assert relay.settings.workspace("ws-b").display_name == "changed through the API"  # type: ignore[union-attr]
    assert relay.router.route("x@extra.example") == Route("direct", "extra")
    reloaded["workspaces"].pop()
    assert await relay.reload(settings_from(reloaded, tmp_path)) == []
    assert relay.router.route("x@extra.example") is None
    [removed, _added] = await audit(api, "extra")
    assert (removed["actor"], removed["action"]) == ("config-file", "delete")


async def test_concurrent_writes_are_serialised(postgres_url: str, tmp_path: Path) -> None:
    """On PostgreSQL (real concurrent transactions): of concurrent creates of one id, one wins and the others are
    409 (not 500); of concurrent replaces with one If-Match, one wins and the others are 412 (no lost update); two
    concurrent creates claiming one domain cannot both succeed. Pool membership edits lose nothing either."""
    relay = await start_relay(data(postgres_url, tmp_path), tmp_path)
    transport = httpx.ASGITransport(app=relay.api_app())
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as api:
            body = news(tmp_path)
            creates = await asyncio.gather(
                *(api.post("/api/v1/workspaces", json=body, headers=ADMIN) for _ in range(4))
            )
            assert sorted(r.status_code for r in creates) == [201, 409, 409, 409]
            current = await api.get("/api/v1/workspaces/ws-b", headers=VIEWER)
            guarded = {**ADMIN, "If-Match": current.headers["etag"]}
            bodies = [{**current.json()["definition"], "display_name": f"edit {i}"} for i in range(4)]
            puts = await asyncio.gather(*(api.put("/api/v1/workspaces/ws-b", json=b, headers=guarded) for b in bodies))
            assert sorted(r.status_code for r in puts) == [200, 412, 412, 412]
            clashing = [sandbox_workspace(f"c{i}", ["same.example"], tmp_path / f"c{i}") for i in range(2)]
            both = await asyncio.gather(*(api.post("/api/v1/workspaces", json=b, headers=ADMIN) for b in clashing))
            assert sorted(r.status_code for r in both) == [201, 422]
            members = [sandbox_workspace(f"m{i}", [f"m{i}.example"], tmp_path / f"m{i}") for i in range(4)]
            for member in members:
                assert (await api.post("/api/v1/workspaces", json=member, headers=ADMIN)).status_code == 201
            adds = await asyncio.gather(
                *(
                    api.post("/api/v1/pools/invite/workspaces", json={"workspace_id": m["id"]}, headers=ADMIN)
                    for m in members
                )
            )
            assert [r.status_code for r in adds] == [201] * 4
            pool_now = (await api.get("/api/v1/pools/invite", headers=VIEWER)).json()
            assert {m["workspace_id"] for m in pool_now["workspaces"]} == {"ws-a", "ws-b", "m0", "m1", "m2", "m3"}
    finally:
        await relay.stop()

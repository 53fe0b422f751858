"""`/api/v1/webhooks`: roles, write-only secrets, audit, the delivery log, and re-enabling a disabled endpoint."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from relay.runtime import Relay
from tests.support.api import api_client, viewer_and_admin
from tests.support.net import async_wait_for
from tests.support.pools import submit_many
from tests.support.receiver import Receiver
from tests.support.relay import config, sandbox_workspace, start_relay

VIEWER = {"Authorization": "Bearer viewer-key-hooks-1"}
ADMIN = {"Authorization": "Bearer admin-key-hooks-2"}
SECRET = "whsec-api-5e8d2b"


@pytest.fixture
async def relay(sqlite_url: str, tmp_path: Path) -> AsyncIterator[Relay]:
    data = config(
        sqlite_url,
        [sandbox_workspace("ws-a", ["a.example"], tmp_path / "a")],
        http=viewer_and_admin("viewer-key-hooks-1", "admin-key-hooks-2"),
    )
    started = await start_relay(data, tmp_path)
    yield started
    await started.stop()


@pytest.fixture
async def api(relay: Relay) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(relay) as client:
        yield client


async def test_webhooks_crud_with_a_write_only_secret_and_a_delivery_log(relay: Relay, api: httpx.AsyncClient) -> None:
    with Receiver() as receiver:
        body = {"id": "hook", "url": receiver.url, "secret": SECRET, "events": ["message.*"]}
        assert (await api.post("/api/v1/webhooks", json=body)).status_code == 401
        assert (await api.post("/api/v1/webhooks", json=body, headers=VIEWER)).status_code == 403
        created = await api.post("/api/v1/webhooks", json=body, headers=ADMIN)
        assert created.status_code == 201, created.text
        assert created.json()["secret_set"] is True and SECRET not in created.text
        too_long = {**body, "id": "long", "url": receiver.url + "?" + "a" * 2100}
        assert (await api.post("/api/v1/webhooks", json=too_long, headers=ADMIN)).status_code == 422
        again = await api.post("/api/v1/webhooks", json=body, headers=ADMIN)
        assert again.status_code == 409 and again.json()["error"]["field"] == "id"

        await submit_many(relay, "ann@a.example", 2, tag="hooks")
        await async_wait_for(lambda: len(receiver.accepted()) >= 4, timeout=15, what="queued and sent, twice")
        log = await api.get("/api/v1/webhooks/hook/deliveries", headers=VIEWER)
        assert log.status_code == 200
        assert {d["event"] for d in log.json()} == {"message.queued", "message.sent"}
        assert all(d["status"] == "delivered" and d["last_status"] == 200 for d in log.json())
        assert all(p.headers.get("x-relay-signature") for p in receiver.accepted())

        # The mask keeps the secret; an API env: reference must be a RELAY_SECRET_ variable.
        kept = await api.put(
            "/api/v1/webhooks/hook", json={**body, "secret": "********", "events": ["*"]}, headers=ADMIN
        )
        assert kept.status_code == 200 and kept.json()["secret_set"] and kept.json()["events"] == ["*"]
        assert (await relay.webhook_store.get("hook")).secret == SECRET  # type: ignore[union-attr]
        leaky = await api.put("/api/v1/webhooks/hook", json={**body, "secret": "env:RELAY_DATABASE_URL"}, headers=ADMIN)
        assert leaky.status_code == 422 and leaky.json()["error"]["field"] == "secret"

        listed = await api.get("/api/v1/webhooks", headers=VIEWER)
        assert [w["id"] for w in listed.json()] == ["hook"] and SECRET not in listed.text
        audit = (await api.get("/api/v1/audit?target_type=webhook", headers=VIEWER)).json()
        assert [e["action"] for e in audit] == ["update", "create"] and SECRET not in json.dumps(audit)
        assert (await api.delete("/api/v1/webhooks/hook", headers=VIEWER)).status_code == 403
        assert (await api.delete("/api/v1/webhooks/hook", headers=ADMIN)).status_code == 204
        assert (await api.get("/api/v1/webhooks/hook", headers=VIEWER)).status_code == 404


async def test_a_disabled_endpoint_is_enabled_again_through_the_api(relay: Relay, api: httpx.AsyncClient) -> None:
    with Receiver() as receiver:
        body = {"id": "hook", "url": receiver.url, "events": ["message.sent"]}
        assert (await api.post("/api/v1/webhooks", json=body, headers=ADMIN)).status_code == 201
        endpoint = await relay.webhook_store.get("hook")
        assert endpoint is not None
        await relay.webhook_store.disable(endpoint, "every delivery failed since yesterday")
        shown = (await api.get("/api/v1/webhooks/hook", headers=VIEWER)).json()
        assert not shown["enabled"] and "every delivery failed" in shown["disabled_reason"]
        enabled = await api.put("/api/v1/webhooks/hook", json={**body, "enabled": True}, headers=ADMIN)
        assert enabled.json()["enabled"] and enabled.json()["disabled_reason"] is None
        await submit_many(relay, "ann@a.example", 1, tag="again")
        await async_wait_for(lambda: receiver.accepted(), timeout=15, what="a post after re-enabling")

"""`/api/v1/messages` over a running Relay: search with filters and paging, a message with its attempts and the
routing decision, and cancelling a waiting message (operators only)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from relay.clock import ManualClock
from relay.runtime import Relay
from tests.support.api import api_client
from tests.support.pools import pool, submit_many, wait_for_statuses
from tests.support.relay import config, sandbox_workspace, start_relay

VIEWER = {"Authorization": "Bearer msg-viewer-1"}
OPERATOR = {"Authorization": "Bearer msg-operator-2"}


@pytest.fixture
async def relay(database_url: str, tmp_path: Path) -> AsyncIterator[Relay]:
    limited = sandbox_workspace("ws-a", ["joinmednet.org"], tmp_path / "a")
    limited["rate_limits"] = {"workspace_daily": 3}
    data = config(
        database_url,
        [limited],
        load_balancing_pools=[pool("invite", ["invite.com"], [("ws-a", 1.0)])],
        http={
            "api_keys": [
                {"name": "dash", "key": "msg-viewer-1"},
                {"name": "desk", "key": "msg-operator-2", "role": "operator"},
            ]
        },
    )
    started = await start_relay(data, tmp_path, clock=ManualClock())
    yield started
    await started.stop()


@pytest.fixture
async def api(relay: Relay) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(relay) as client:
        yield client


async def test_search_read_and_cancel(relay: Relay, api: httpx.AsyncClient) -> None:
    sent = await submit_many(relay, "brian@invite.com", 3, tag="api-msg", recipient="Ann@Example.org")
    await wait_for_statuses(relay, {"sent": 3})
    waiting = await submit_many(relay, "brian@invite.com", 2, tag="api-msg", first=3, recipient="bob@example.org")
    await wait_for_statuses(relay, {"sent": 3, "deferred": 2})  # the workspace's 3 a day are used

    everything = (await api.get("/api/v1/messages", headers=VIEWER)).json()
    assert [m["id"] for m in everything] == sorted([*sent.values(), *waiting.values()], reverse=True)
    assert "raw" not in everything[0]
    deferred = (await api.get("/api/v1/messages?status=deferred", headers=VIEWER)).json()
    assert {m["id"] for m in deferred} == set(waiting.values())
    ann = (await api.get("/api/v1/messages?recipient=ann@EXAMPLE", headers=VIEWER)).json()
    assert {m["id"] for m in ann} == set(sent.values())
    page = (await api.get("/api/v1/messages?limit=2", headers=VIEWER)).json()
    rest = (await api.get(f"/api/v1/messages?limit=10&before={page[-1]['id']}", headers=VIEWER)).json()
    assert [m["id"] for m in page + rest] == [m["id"] for m in everything]

    one = (await api.get(f"/api/v1/messages/{sent[0]}", headers=VIEWER)).json()
    assert one["status"] == "sent" and one["rcpt_to"] == ["Ann@Example.org"]
    [attempt] = one["attempts_detail"]
    assert (attempt["workspace_id"], attempt["pool_id"], attempt["outcome"]) == ("ws-a", "invite", "sent")
    assert attempt["decision"]["strategy"] == "capacity_weighted" and attempt["decision"]["workspace"] == "ws-a"
    assert (await api.get("/api/v1/messages/nope", headers=VIEWER)).status_code == 404

    assert (await api.post(f"/api/v1/messages/{waiting[3]}/cancel", headers=VIEWER)).status_code == 403
    cancelled = await api.post(f"/api/v1/messages/{waiting[3]}/cancel", headers=OPERATOR)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "failed" and 'by "desk"' in cancelled.json()["last_error"]
    refused = await api.post(f"/api/v1/messages/{sent[0]}/cancel", headers=OPERATOR)
    assert refused.status_code == 409 and "this one is sent" in refused.json()["error"]["message"]
    assert (await api.post("/api/v1/messages/nope/cancel", headers=OPERATOR)).status_code == 404

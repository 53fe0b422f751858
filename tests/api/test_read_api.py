"""The `/api/v1` read endpoints over a running Relay (in-process, real database and limits): bearer keys with roles,
the JSON error shape, pools, status, metrics, the dry-run test, a workspace's pools and capacity. Secrets never
appear in a response."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from relay.runtime import Relay
from tests.support.pools import pool, submit_many, wait_for_statuses
from tests.support.relay import config, sandbox_workspace, start_relay

VIEWER_KEY = "viewer-key-9f1c0b7e"
ADMIN_KEY = "admin-key-4d2a8c11"
SENDER = "brian@invite.com"


@pytest.fixture
async def relay(sqlite_url: str, tmp_path: Path) -> AsyncIterator[Relay]:
    workspaces = [
        sandbox_workspace("ws-a", ["joinmednet.org"], tmp_path / "a"),
        sandbox_workspace("ws-b", ["mednet.example"], tmp_path / "b"),
        sandbox_workspace("ws-c", ["other.example"], tmp_path / "c"),
    ]
    workspaces[0]["rate_limits"] = {"workspace_daily": 1000, "per_user_daily": 500}
    data = config(
        sqlite_url,
        workspaces,
        load_balancing_pools=[pool("invite", ["invite.com"], [("ws-a", 3.0), ("ws-b", 1.0)])],
        http={"api_keys": [{"name": "dash", "key": VIEWER_KEY}, {"name": "ops", "key": ADMIN_KEY, "role": "admin"}]},
    )
    started = await start_relay(data, tmp_path)
    yield started
    await started.stop()


@pytest.fixture
async def api(relay: Relay) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=relay.api_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://relay.test") as client:
        yield client


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


READS = [
    "/api/v1/pools",
    "/api/v1/pools/invite",
    "/api/v1/pools/invite/status",
    "/api/v1/pools/invite/metrics",
    "/api/v1/workspaces/ws-a/pools",
    "/api/v1/workspaces/ws-a/capacity",
]


@pytest.mark.parametrize("path", READS)
async def test_every_read_needs_a_known_key(api: httpx.AsyncClient, path: str) -> None:
    missing = await api.get(path)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "unauthorized"
    assert missing.headers["www-authenticate"] == "Bearer"
    unknown = await api.get(path, headers=auth("not-a-key"))
    assert unknown.status_code == 401 and unknown.json()["error"]["message"] == "unknown API key"
    ok = await api.get(path, headers=auth(VIEWER_KEY))
    assert ok.status_code == 200, ok.text


async def test_pools_list_and_get_with_an_etag(api: httpx.AsyncClient) -> None:
    pools = (await api.get("/api/v1/pools", headers=auth(VIEWER_KEY))).json()
    assert [p["id"] for p in pools] == ["invite"]
    got = await api.get("/api/v1/pools/invite", headers=auth(VIEWER_KEY))
    body = got.json()
    assert body["strategy"] == "capacity_weighted" and body["domain_patterns"] == ["invite.com"]
    assert body["workspaces"] == [
        {"workspace_id": "ws-a", "weight": 3.0, "enabled": True},
        {"workspace_id": "ws-b", "weight": 1.0, "enabled": True},
    ]
    assert got.headers["etag"].startswith('"') and len(got.headers["etag"]) == 34
    again = await api.get("/api/v1/pools/invite", headers=auth(VIEWER_KEY))
    assert again.headers["etag"] == got.headers["etag"]


async def test_unknown_things_are_404_in_the_error_shape(api: httpx.AsyncClient) -> None:
    for path in ("/api/v1/pools/nope", "/api/v1/pools/nope/status", "/api/v1/workspaces/nope/pools"):
        answer = await api.get(path, headers=auth(VIEWER_KEY))
        assert answer.status_code == 404
        assert set(answer.json()) == {"error"} and answer.json()["error"]["code"] == "not_found"
    bad = await api.get("/api/v1/pools/invite/metrics?window=soon", headers=auth(VIEWER_KEY))
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "window"


async def test_status_and_metrics_follow_the_mail(relay: Relay, api: httpx.AsyncClient) -> None:
    await submit_many(relay, SENDER, 40, tag="api")
    await wait_for_statuses(relay, {"sent": 40})
    await relay.selections.flush()
    status = (await api.get(f"/api/v1/pools/invite/status?sender={SENDER}", headers=auth(VIEWER_KEY))).json()
    assert status["available_workspaces"] == 2
    members = {m["workspace_id"]: m for m in status["members"]}
    assert members["ws-a"]["health"] == "healthy" and members["ws-a"]["limit"] == 500
    assert sum(status["selections"].values()) == 40
    assert members["ws-a"]["remaining"] == 500 - status["selections"].get("ws-a", 0)
    metrics = (await api.get("/api/v1/pools/invite/metrics?window=15m", headers=auth(VIEWER_KEY))).json()
    assert metrics["selections"] == 40 and metrics["successes"] == 40 and metrics["success_rate"] == 1.0
    shares = {w["workspace_id"]: w for w in metrics["workspaces"]}
    assert shares["ws-a"]["expected_share"] == 0.75 and shares["ws-b"]["expected_share"] == 0.25
    assert sum(w["actual_share"] for w in metrics["workspaces"]) == pytest.approx(1.0)


async def test_the_dry_run_explains_the_decision_without_sending(relay: Relay, api: httpx.AsyncClient) -> None:
    answer = await api.post(
        "/api/v1/pools/invite/test", headers=auth(VIEWER_KEY), json={"sender": SENDER, "count": 2000}
    )
    body = answer.json()
    assert body["chosen"] in {"ws-a", "ws-b"} and body["strategy"] == "capacity_weighted"
    assert sum(body["picks"].values()) == 2000
    assert body["expected_share"]["ws-a"] == pytest.approx(0.75, abs=0.01)
    assert abs(body["picks"]["ws-a"] / 2000 - 0.75) < 0.04
    assert await relay.queue.status_counts() == {}  # nothing was queued or sent


async def test_a_workspace_lists_its_pools_and_capacity(api: httpx.AsyncClient) -> None:
    assert (await api.get("/api/v1/workspaces/ws-a/pools", headers=auth(VIEWER_KEY))).json() == ["invite"]
    assert (await api.get("/api/v1/workspaces/ws-c/pools", headers=auth(VIEWER_KEY))).json() == []
    rows = (await api.get(f"/api/v1/workspaces/ws-a/capacity?sender={SENDER}", headers=auth(VIEWER_KEY))).json()
    assert {r["limit"]: (r["max"], r["used"]) for r in rows} == {
        "ws:ws-a": (1000, 0),
        f"user:ws-a:{SENDER}": (500, 0),
    }


async def test_no_response_carries_a_key(api: httpx.AsyncClient) -> None:
    seen = []
    for path in [*READS, "/openapi.json"]:
        seen.append((await api.get(path, headers=auth(ADMIN_KEY))).text)
    seen.append((await api.post("/api/v1/pools/invite/test", headers=auth(ADMIN_KEY), json={"count": 5})).text)
    text = json.dumps(seen)
    assert VIEWER_KEY not in text and ADMIN_KEY not in text


async def test_the_openapi_document_lists_the_endpoints(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    assert {"/api/v1/pools", "/api/v1/pools/{pool_id}/status", "/api/v1/pools/{pool_id}/test"} <= set(spec["paths"])
    assert (await api.get("/docs")).status_code == 200

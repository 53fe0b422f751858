"""Provider credentials and API keys appear in no API response and no log line, through a whole flow: mail
delivered through an upstream that needs a password, every read endpoint, pool and workspace writes and their
rollbacks."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import structlog

from tests.support.pools import pool, submit_many, wait_for_statuses
from tests.support.relay import config, smtp_workspace, start_relay
from tests.support.sink import SmtpSink

UPSTREAM_PASSWORD = "upstream-secret-6b0f2e9d"
ADMIN_KEY = "admin-secret-key-1e7c"


async def test_no_secret_leaves_the_process(sqlite_url: str, tmp_path: Path) -> None:
    with SmtpSink(users={"relay": UPSTREAM_PASSWORD}) as upstream:
        workspace = smtp_workspace(
            "up", ["joinmednet.org"], upstream.port, username="relay", password=UPSTREAM_PASSWORD
        )
        data = config(
            sqlite_url,
            [workspace],
            load_balancing_pools=[pool("invite", ["invite.com"], [("up", 1.0)])],
            http={"api_keys": [{"name": "ops", "key": ADMIN_KEY, "role": "admin"}]},
        )
        with structlog.testing.capture_logs() as logs:
            relay = await start_relay(data, tmp_path)
            try:
                ids = await submit_many(relay, "brian@invite.com", 3, tag="secrets")
                await wait_for_statuses(relay, {"sent": 3})
                headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
                transport = httpx.ASGITransport(app=relay.api_app())
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as api:
                    bodies = []
                    for path in (
                        "/openapi.json",
                        "/api/v1/pools",
                        "/api/v1/pools/invite",
                        "/api/v1/pools/invite/status",
                        "/api/v1/pools/invite/metrics",
                        "/api/v1/workspaces/up/pools",
                        "/api/v1/workspaces/up/capacity",
                        "/api/v1/messages",
                        f"/api/v1/messages/{ids[0]}",
                        "/api/v1/audit",
                        "/api/v1/workspaces",
                        "/api/v1/workspaces/up",
                    ):
                        answer = await api.get(path, headers=headers)
                        assert answer.status_code == 200, (path, answer.text)
                        bodies.append(answer.text)
                    changed = await api.put("/api/v1/pools/invite/workspaces/up", json={"weight": 2}, headers=headers)
                    bodies.append(changed.text)
                    [entry] = (await api.get("/api/v1/audit?target_type=pool", headers=headers)).json()
                    bodies.append((await api.post(f"/api/v1/audit/{entry['id']}/rollback", headers=headers)).text)
                    # A workspace read, edited and written back: the masked password keeps the stored one.
                    shown = (await api.get("/api/v1/workspaces/up", headers=headers)).json()["definition"]
                    assert shown["smtp"]["password"] == "********"
                    edited = {**shown, "display_name": "Upstream, renamed"}
                    written = await api.put("/api/v1/workspaces/up", json=edited, headers=headers)
                    assert written.status_code == 200, written.text
                    bodies.append(written.text)
                    [entry] = (await api.get("/api/v1/audit?target_type=workspace", headers=headers)).json()[:1]
                    assert entry["before"]["smtp"]["password"] == "********"
                    bodies.append((await api.get("/api/v1/audit", headers=headers)).text)
                    bodies.append((await api.post(f"/api/v1/audit/{entry['id']}/rollback", headers=headers)).text)
                    # Still delivering with the password it kept through both writes.
                    await submit_many(relay, "brian@invite.com", 1, tag="after-edit")
                    await wait_for_statuses(relay, {"sent": 4})
                    bodies.append((await api.post("/api/v1/pools/invite/test", headers=headers, json={})).text)
                    bodies.append((await api.get("/api/v1/pools", headers={"Authorization": "Bearer wrong"})).text)
            finally:
                await relay.stop()
        assert len(upstream.received()) == 4
    everything = json.dumps(bodies) + json.dumps([str(e) for e in logs])
    assert UPSTREAM_PASSWORD not in everything
    assert ADMIN_KEY not in everything

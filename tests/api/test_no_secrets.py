"""Provider credentials and API keys appear in no API response and no log line, through a whole flow: mail
delivered through an upstream that needs a password, every read endpoint, pool and workspace writes and their
rollbacks."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import structlog

from tests.emulators.gmail import ServiceAccount
from tests.support.pools import pool, submit_many, wait_for_statuses
from tests.support.relay import config, smtp_workspace, start_relay
from tests.support.sink import SmtpSink

UPSTREAM_PASSWORD = "upstream-secret-6b0f2e9d"
ADMIN_KEY = "admin-secret-key-1e7c"
MAILGUN_KEY = "key-mailgun-secret-93d1a7"
SERVICE_ACCOUNT = ServiceAccount.generate()
# The middle of the PEM body: any leak of the key, whole or in part, contains it.
PRIVATE_KEY_PART = SERVICE_ACCOUNT.private_pem.splitlines()[5]


async def test_no_secret_leaves_the_process(sqlite_url: str, tmp_path: Path) -> None:
    with SmtpSink(users={"relay": UPSTREAM_PASSWORD}) as upstream:
        workspace = smtp_workspace(
            "up", ["joinmednet.org"], upstream.port, username="relay", password=UPSTREAM_PASSWORD
        )
        # Providers whose API is not there: their health checks fail and are logged, with the keys in hand.
        unreachable = "http://127.0.0.1:9"
        gmail = {
            "id": "gm",
            "domains": ["gm.example"],
            "gmail": {
                "service_account_json": json.dumps(SERVICE_ACCOUNT.key_file(f"{unreachable}/token")),
                "base_url": unreachable,
            },
        }
        mailgun = {"id": "mg", "domains": ["mg.example"], "mailgun": {"api_key": MAILGUN_KEY, "base_url": unreachable}}
        data = config(
            sqlite_url,
            [workspace, gmail, mailgun],
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
                        "/api/v1/workspaces/gm",
                        "/api/v1/workspaces/mg",
                        "/api/v1/workspaces/mg/capacity",
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
                    # Sends that hold the keys and fail: the Gmail token request, the Mailgun call.
                    await submit_many(relay, "ann@gm.example", 1, tag="gmail")
                    await submit_many(relay, "ann@mg.example", 1, tag="mailgun")
                    await wait_for_statuses(relay, {"sent": 4, "deferred": 2})
                    for failed in ("gm", "mg"):
                        bodies.append((await api.get(f"/api/v1/messages?workspace_id={failed}", headers=headers)).text)
                    bodies.append((await api.post("/api/v1/pools/invite/test", headers=headers, json={})).text)
                    bodies.append((await api.get("/api/v1/pools", headers={"Authorization": "Bearer wrong"})).text)
            finally:
                await relay.stop()
        assert len(upstream.received()) == 4
    everything = json.dumps(bodies) + json.dumps([str(e) for e in logs])
    failures = [e for e in logs if e["event"] == "delivery.attempt" and e.get("workspace_id") in ("gm", "mg")]
    assert len(failures) >= 2  # the providers did use their keys, and failed, and that was logged
    for secret in (UPSTREAM_PASSWORD, ADMIN_KEY, MAILGUN_KEY, PRIVATE_KEY_PART, SERVICE_ACCOUNT.key_id):
        assert secret not in everything

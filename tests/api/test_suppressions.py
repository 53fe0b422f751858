"""`/api/v1/suppressions`: the list is visible to viewers and edited by operators; an address listed by hand is
refused at once (SMTP and API), and taking it off lets mail flow again. `suppression.enabled: false` records but
refuses nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.runtime import Relay
from tests.support.api import api_client
from tests.support.inbound import rcpt
from tests.support.pools import wait_for_statuses
from tests.support.relay import config, sandbox_workspace, start_relay

VIEWER = {"Authorization": "Bearer supp-viewer-1"}
OPERATOR = {"Authorization": "Bearer supp-operator-2"}
SENDER = "app@joinmednet.org"


def data(sqlite_url: str, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    return config(
        sqlite_url,
        [sandbox_workspace("ws-a", ["joinmednet.org"], tmp_path / "outbox")],
        http={
            "api_keys": [
                {"name": "dash", "key": "supp-viewer-1"},
                {"name": "ops", "key": "supp-operator-2", "role": "operator"},
            ]
        },
        **overrides,
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


def message(*to: str) -> dict[str, Any]:
    return {"from": SENDER, "to": list(to), "subject": "Hi", "text": "Hello"}


async def test_reading_needs_a_key_and_writing_an_operator(api: httpx.AsyncClient) -> None:
    entry = {"email": "ann@example.org", "detail": "asked by phone"}
    routes = [
        ("GET", "/api/v1/suppressions", None),
        ("GET", "/api/v1/suppressions/ann@example.org", None),
        ("POST", "/api/v1/suppressions", entry),
        ("DELETE", "/api/v1/suppressions/ann@example.org", None),
    ]
    for method, path, body in routes:
        answer = await api.request(method, path, json=body)
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "unauthorized", (method, path)
    for method, path, body in routes[2:]:
        answer = await api.request(method, path, json=body, headers=VIEWER)
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "forbidden", (method, path)
    assert (await api.get("/api/v1/suppressions", headers=VIEWER)).json() == []


async def test_list_add_and_delete(relay: Relay, api: httpx.AsyncClient) -> None:
    added = await api.post(
        "/api/v1/suppressions", json={"email": "Ann@Example.org", "detail": "asked by phone"}, headers=OPERATOR
    )
    assert added.status_code == 201, added.text
    body = added.json()
    assert (body["email"], body["reason"], body["detail"], body["source"]) == (
        "ann@example.org",
        "manual",
        "asked by phone",
        "api:ops",
    )
    assert body["refusal"].startswith("recipient suppressed (manual on ")
    again = await api.post("/api/v1/suppressions", json={"email": "ann@example.org"}, headers=OPERATOR)
    assert again.status_code == 409 and "already on the suppression list" in again.json()["error"]["message"]
    imported = {"email": "gone@example.org", "reason": "hard_bounce", "detail": "from the old relay"}
    assert (await api.post("/api/v1/suppressions", json=imported, headers=OPERATOR)).status_code == 201
    bad = await api.post("/api/v1/suppressions", json={"email": "x@y", "reason": "spam"}, headers=OPERATOR)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "reason"

    everyone = (await api.get("/api/v1/suppressions", headers=VIEWER)).json()
    assert [e["email"] for e in everyone] == ["gone@example.org", "ann@example.org"]  # newest first
    by_reason = (await api.get("/api/v1/suppressions?reason=manual", headers=VIEWER)).json()
    assert [e["email"] for e in by_reason] == ["ann@example.org"]
    by_part = (await api.get("/api/v1/suppressions?email=GONE", headers=VIEWER)).json()
    assert [e["email"] for e in by_part] == ["gone@example.org"]
    one = await api.get("/api/v1/suppressions/ANN@example.org", headers=VIEWER)
    assert one.status_code == 200 and one.json()["email"] == "ann@example.org"

    assert (await api.delete("/api/v1/suppressions/ann@example.org", headers=OPERATOR)).status_code == 204
    assert (await api.delete("/api/v1/suppressions/ann@example.org", headers=OPERATOR)).status_code == 404
    assert (await api.get("/api/v1/suppressions/ann@example.org", headers=VIEWER)).status_code == 404


async def test_a_listed_recipient_is_refused_until_deleted(relay: Relay, api: httpx.AsyncClient) -> None:
    assert (await api.post("/api/v1/suppressions", json={"email": "ann@example.org"}, headers=OPERATOR)).is_success

    [refused] = await rcpt(relay, SENDER, ["ann@example.org"])
    assert refused[0] == 550 and "recipient suppressed (manual on " in refused[1]
    sent = await api.post("/api/v1/messages", json=message("ann@example.org"), headers=OPERATOR)
    assert sent.status_code == 422 and sent.json()["error"]["field"] == "to[0]"

    assert (await api.delete("/api/v1/suppressions/ann@example.org", headers=OPERATOR)).status_code == 204

    assert (await rcpt(relay, SENDER, ["ann@example.org"]))[0][0] == 250
    sent = await api.post("/api/v1/messages", json=message("ann@example.org"), headers=OPERATOR)
    assert sent.status_code == 202, sent.text
    await wait_for_statuses(relay, {"sent": 1})


async def test_a_resend_to_a_listed_recipient_is_refused(relay: Relay, api: httpx.AsyncClient) -> None:
    first = await api.post("/api/v1/messages", json=message("bob@example.org", "ann@example.org"), headers=OPERATOR)
    assert first.status_code == 202
    await wait_for_statuses(relay, {"sent": 1})
    assert (await api.post("/api/v1/suppressions", json={"email": "ann@example.org"}, headers=OPERATOR)).is_success
    resent = await api.post(f"/api/v1/messages/{first.json()['id']}/resend", headers=OPERATOR)
    assert resent.status_code == 422 and resent.json()["error"]["field"] == "rcpt_to[1]"


async def test_with_refusing_switched_off_the_list_is_kept_but_mail_flows(sqlite_url: str, tmp_path: Path) -> None:
    relay = await start_relay(data(sqlite_url, tmp_path, suppression={"enabled": False}), tmp_path)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=relay.api_app()), base_url="http://t") as api:
            listed = await api.post("/api/v1/suppressions", json={"email": "ann@example.org"}, headers=OPERATOR)
            assert listed.status_code == 201
            assert (await rcpt(relay, SENDER, ["ann@example.org"]))[0][0] == 250
            sent = await api.post("/api/v1/messages", json=message("ann@example.org"), headers=OPERATOR)
            assert sent.status_code == 202
            assert len((await api.get("/api/v1/suppressions", headers=VIEWER)).json()) == 1
    finally:
        await relay.stop()

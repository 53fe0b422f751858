"""`POST /api/v1/messages`: a message sent through the API is queued durably and delivered like SMTP mail; a
repeated `Idempotency-Key` returns the first message, even for 100 requests at once."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from relay.runtime import Relay
from relay.store import Messages
from tests.support.api import api_client
from tests.support.pools import wait_for_statuses
from tests.support.relay import config, sandbox_workspace, start_relay

OPERATOR = {"Authorization": "Bearer send-operator-3"}
VIEWER = {"Authorization": "Bearer send-viewer-4"}


@pytest.fixture
async def relay(database_url: str, tmp_path: Path) -> AsyncIterator[Relay]:
    data = config(
        database_url,
        [sandbox_workspace("ws-a", ["joinmednet.org"], tmp_path / "outbox")],
        http={
            "api_keys": [
                {"name": "app", "key": "send-operator-3", "role": "operator"},
                {"name": "dash", "key": "send-viewer-4"},
            ]
        },
    )
    started = await start_relay(data, tmp_path)
    yield started
    await started.stop()


@pytest.fixture
async def api(relay: Relay) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(relay) as client:
        yield client


MESSAGE = {"from": "app@joinmednet.org", "to": ["ann@example.org"], "subject": "Hello", "text": "Hi Ann"}


async def test_a_sent_message_is_queued_and_delivered(relay: Relay, api: httpx.AsyncClient, tmp_path: Path) -> None:
    assert (await api.post("/api/v1/messages", json=MESSAGE, headers=VIEWER)).status_code == 403
    answer = await api.post("/api/v1/messages", json={**MESSAGE, "html": "<p>Hi Ann</p>"}, headers=OPERATOR)
    assert answer.status_code == 202, answer.text
    message_id = answer.json()["id"]
    await wait_for_statuses(relay, {"sent": 1})
    raw = (tmp_path / "outbox" / f"{message_id}.eml").read_bytes()
    assert b"Subject: Hello" in raw and b"multipart/alternative" in raw and b"<p>Hi Ann</p>" in raw
    view = await Messages(relay.db).get(message_id)
    assert view is not None and view.rcpt_to == ("ann@example.org",)


async def test_a_raw_message_goes_byte_for_byte(relay: Relay, api: httpx.AsyncClient, tmp_path: Path) -> None:
    raw = b"From: app@joinmednet.org\r\nTo: bob@example.org\r\nSubject: raw\r\n\r\nexact \xe2\x9c\x93 bytes\r\n"
    body = {"from": "app@joinmednet.org", "to": ["bob@example.org"], "raw": base64.b64encode(raw).decode()}
    answer = await api.post("/api/v1/messages", json=body, headers=OPERATOR)
    assert answer.status_code == 202
    await wait_for_statuses(relay, {"sent": 1})
    assert (tmp_path / "outbox" / f"{answer.json()['id']}.eml").read_bytes() == raw


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"from": "app@unserved.example"}, "from"),
        ({"to": []}, "to"),
        ({"text": None}, "text"),
        ({"raw": "not base64!"}, "raw"),
        ({"headers": {"X-Evil": "a\r\nBcc: eve@example.org"}}, "headers.X-Evil"),
    ],
)
async def test_bad_sends_are_422_naming_the_field(
    api: httpx.AsyncClient, change: dict[str, object], field: str
) -> None:
    body = {**MESSAGE, **change}
    if change.get("raw"):
        body.pop("subject"), body.pop("text")
    answer = await api.post("/api/v1/messages", json=body, headers=OPERATOR)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == field


async def test_one_hundred_concurrent_posts_with_one_key_create_one_message(
    relay: Relay, api: httpx.AsyncClient
) -> None:
    headers = {**OPERATOR, "Idempotency-Key": "invite-2026-12-04-ann"}
    answers = await asyncio.gather(*(api.post("/api/v1/messages", json=MESSAGE, headers=headers) for _ in range(100)))
    assert {a.status_code for a in answers} <= {200, 202}
    assert sum(1 for a in answers if a.status_code == 202) == 1
    assert len({a.json()["id"] for a in answers}) == 1
    await wait_for_statuses(relay, {"sent": 1})
    later = await api.post("/api/v1/messages", json=MESSAGE, headers=headers)
    assert later.status_code == 200 and later.json() == {"id": answers[0].json()["id"], "status": "duplicate"}
    other = await api.post("/api/v1/messages", json=MESSAGE, headers={**OPERATOR, "Idempotency-Key": "another"})
    assert other.status_code == 202 and other.json()["id"] != answers[0].json()["id"]

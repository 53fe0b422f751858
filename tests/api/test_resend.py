"""`POST /api/v1/messages/{id}/resend`: a failed message is queued again as a new copy (same bytes, sender, every
recipient, `resent_from` naming it) that a running worker delivers, while the original keeps its history."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.runtime import Relay
from relay.store import Messages
from relay.store.tables import messages
from tests.support.pools import wait_for_statuses
from tests.support.relay import config, sandbox_workspace, start_relay

OPERATOR = {"Authorization": "Bearer resend-operator-5"}
VIEWER = {"Authorization": "Bearer resend-viewer-6"}
KEYS = {
    "api_keys": [
        {"name": "desk", "key": "resend-operator-5", "role": "operator"},
        {"name": "dash", "key": "resend-viewer-6"},
    ]
}
RAW = (
    b"From: app@joinmednet.org\r\nTo: ann@example.org, bob@example.org\r\nSubject: again\r\n\r\n"
    b"same \xe2\x9c\x93 bytes\r\n"
)
LEGACY_RAW = b"From: old@legacy.example\r\nTo: ann@example.org\r\nSubject: legacy\r\n\r\nbody\r\n"


def relay_config(database_url: str, outbox: Path, domains: list[str], **sandbox: Any) -> dict[str, Any]:
    return config(database_url, [sandbox_workspace("ws-a", domains, outbox, **sandbox)], http=KEYS)


def client(relay: Relay) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=relay.api_app()), base_url="http://t")


async def send_raw(api: httpx.AsyncClient, sender: str, to: list[str], raw: bytes) -> str:
    body = {"from": sender, "to": to, "raw": base64.b64encode(raw).decode(), "metadata": {"campaign": "c-7"}}
    answer = await api.post("/api/v1/messages", json=body, headers=OPERATOR)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


async def failed_originals(database_url: str, tmp_path: Path) -> tuple[str, str]:
    """Two messages that failed for good at a workspace refusing everything (550), from a relay since stopped."""
    failing = await start_relay(
        relay_config(
            database_url,
            tmp_path / "refused",
            ["joinmednet.org", "legacy.example"],
            fail_rate=1.0,
            fail_with="550 5.1.1 mailbox unavailable",
        ),
        tmp_path,
    )
    try:
        async with client(failing) as api:
            original = await send_raw(api, "app@joinmednet.org", ["ann@example.org", "bob@example.org"], RAW)
            legacy = await send_raw(api, "old@legacy.example", ["ann@example.org"], LEGACY_RAW)
        await wait_for_statuses(failing, {"failed": 2})
        # As if ann had been delivered before bob failed: a resend still goes to every recipient.
        async with failing.db.begin() as connection:
            await connection.execute(
                messages.update().where(messages.c.id == original).values(pending_rcpts=["bob@example.org"])
            )
    finally:
        await failing.stop()
    return original, legacy


@pytest.fixture
async def relay(database_url: str, tmp_path: Path) -> AsyncIterator[Relay]:
    """A healthy relay serving only joinmednet.org."""
    started = await start_relay(relay_config(database_url, tmp_path / "outbox", ["joinmednet.org"]), tmp_path)
    yield started
    await started.stop()


async def test_a_failed_message_is_resent_as_a_new_copy_and_delivered(database_url: str, tmp_path: Path) -> None:
    original, legacy = await failed_originals(database_url, tmp_path)
    relay = await start_relay(relay_config(database_url, tmp_path / "outbox", ["joinmednet.org"]), tmp_path)
    try:
        async with client(relay) as api:
            before = (await api.get(f"/api/v1/messages/{original}", headers=VIEWER)).json()
            assert before["status"] == "failed" and before["resent_from"] is None

            answer = await api.post(f"/api/v1/messages/{original}/resend", headers=OPERATOR)
            assert answer.status_code == 202, answer.text
            copy = answer.json()
            assert copy["id"] != original and copy["resent_from"] == original
            assert copy["mail_from"] == "app@joinmednet.org"
            assert copy["rcpt_to"] == ["ann@example.org", "bob@example.org"]
            assert copy["metadata"] == {"campaign": "c-7"} and copy["size"] == len(RAW)
            assert copy["status"] in ("queued", "sending", "sent") and "attempts_detail" in copy

            await wait_for_statuses(relay, {"failed": 2, "sent": 1})  # the worker was woken and delivered it
            outbox = tmp_path / "outbox"
            assert (outbox / f"{copy['id']}.eml").read_bytes() == RAW
            envelope = json.loads((outbox / f"{copy['id']}.json").read_text())
            assert envelope["mail_from"] == "app@joinmednet.org"
            assert envelope["recipients"] == ["ann@example.org", "bob@example.org"]
            assert await Messages(relay.db).raw(copy["id"]) == RAW

            sent = (await api.get(f"/api/v1/messages/{copy['id']}", headers=VIEWER)).json()
            assert sent["status"] == "sent" and sent["resent_from"] == original
            assert [a["outcome"] for a in sent["attempts_detail"]] == ["sent"]
            after = (await api.get(f"/api/v1/messages/{original}", headers=VIEWER)).json()
            assert after == before  # the original and its history are untouched
            listed = {m["id"]: m["resent_from"] for m in (await api.get("/api/v1/messages", headers=VIEWER)).json()}
            assert listed == {copy["id"]: original, original: None, legacy: None}
    finally:
        await relay.stop()


async def test_a_sender_no_longer_served_is_refused_like_a_send(database_url: str, tmp_path: Path) -> None:
    _, legacy = await failed_originals(database_url, tmp_path)
    relay = await start_relay(relay_config(database_url, tmp_path / "outbox", ["joinmednet.org"]), tmp_path)
    try:
        async with client(relay) as api:
            refused = await api.post(f"/api/v1/messages/{legacy}/resend", headers=OPERATOR)
            body = {"from": "old@legacy.example", "to": ["ann@example.org"], "subject": "s", "text": "t"}
            sent = await api.post("/api/v1/messages", json=body, headers=OPERATOR)
            assert refused.status_code == sent.status_code == 422
            assert refused.json() == sent.json()
            assert refused.json()["error"]["field"] == "from"
        assert await relay.queue.status_counts() == {"failed": 2}  # nothing was queued
    finally:
        await relay.stop()


async def test_resend_needs_an_operator_and_a_known_message(relay: Relay, tmp_path: Path) -> None:
    async with client(relay) as api:
        original = await send_raw(api, "app@joinmednet.org", ["ann@example.org"], RAW)
        await wait_for_statuses(relay, {"sent": 1})
        path = f"/api/v1/messages/{original}/resend"

        missing = await api.post(path)
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
        viewer = await api.post(path, headers=VIEWER)
        assert viewer.status_code == 403 and viewer.json()["error"]["code"] == "forbidden"
        unknown = await api.post("/api/v1/messages/01NOSUCHMESSAGE00000000000/resend", headers=OPERATOR)
        assert unknown.status_code == 404
        assert unknown.json() == {"error": {"code": "not_found", "message": 'no message "01NOSUCHMESSAGE00000000000"'}}
        assert await relay.queue.status_counts() == {"sent": 1}

        again = await api.post(path, headers=OPERATOR)  # a sent message may be sent again
        assert again.status_code == 202 and again.json()["resent_from"] == original
        await wait_for_statuses(relay, {"sent": 2})
        assert (tmp_path / "outbox" / f"{again.json()['id']}.eml").read_bytes() == RAW

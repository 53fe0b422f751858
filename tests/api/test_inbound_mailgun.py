"""`POST /webhooks/inbound/mailgun` over a running Relay whose mailgun workspace sends through the Mailgun emulator.

Signatures are made here as Mailgun documents them (user-manual/webhooks/securing-webhooks: the hex HMAC-SHA256
of timestamp + token, keyed with the webhook signing key), not with Relay's code. Payloads have the documented
shape (user-manual/webhooks/webhook-payloads): `{"signature": {...}, "event-data": {...}}`, the message id in
`event-data.message.headers.message-id` without the angle brackets the messages API answered with.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from relay.runtime import Relay
from relay.store import Messages
from tests.emulators.mailgun import MailgunState, create_app
from tests.emulators.server import ServedApp
from tests.support.inbound import listed, outbox, rcpt
from tests.support.mail import submit
from tests.support.net import async_wait_for
from tests.support.relay import config, start_relay

API_KEY = "key-inbound-4c1d9e"
SIGNING_KEY = "whsec-mailgun-7f3a2b19c0"
OTHER_SIGNING_KEY = "whsec-mailgun-other-55aa"
SENDER = "app@joinmednet.org"
OPERATOR = {"Authorization": "Bearer inbound-operator-1"}
PATH = "/webhooks/inbound/mailgun"


@dataclass
class Env:
    relay: Relay
    api: httpx.AsyncClient
    mailgun: MailgunState

    async def send(self, recipients: list[str]) -> tuple[str, str]:
        """SMTP in, Mailgun out: (Relay's message id, the id Mailgun answered, with its angle brackets)."""
        raw = f"From: {SENDER}\r\nTo: {', '.join(recipients)}\r\nSubject: Invite\r\n\r\nHello\r\n".encode()
        message_id = await submit(self.relay.smtp_address, SENDER, recipients, raw)
        messages = Messages(self.relay.db)

        async def sent() -> bool:
            view = await messages.get(message_id)
            return view is not None and view.status == "sent"

        await async_wait_for(sent, timeout=20, what=f"{message_id} to go out through Mailgun")
        [attempt] = await messages.attempts(message_id)
        assert attempt.provider_message_id is not None and attempt.provider_message_id.startswith("<")
        return message_id, attempt.provider_message_id


@pytest.fixture
def mailgun() -> Iterator[tuple[MailgunState, str]]:
    state = MailgunState(api_key=API_KEY, domains={"joinmednet.org": "active", "mg2.example": "active"})
    with ServedApp(create_app(state)) as served:
        yield state, served.url


async def _env(database_url: str, tmp_path: Any, mailgun: tuple[MailgunState, str], **overrides: Any) -> Env:
    state, url = mailgun
    workspaces = [
        {
            "id": "mg",
            "domains": ["joinmednet.org"],
            "mailgun": {"api_key": API_KEY, "base_url": url, "webhook_signing_key": SIGNING_KEY},
        },
        # A second account: its key must verify too, and name its workspace.
        {
            "id": "mg-2",
            "domains": ["mg2.example"],
            "mailgun": {"api_key": API_KEY, "base_url": url, "webhook_signing_key": OTHER_SIGNING_KEY},
        },
    ]
    data = config(
        database_url,
        workspaces,
        http={"api_keys": [{"name": "app", "key": "inbound-operator-1", "role": "operator"}]},
        **overrides,
    )
    relay = await start_relay(data, tmp_path)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=relay.api_app()), base_url="http://t")
    return Env(relay, client, state)


@pytest.fixture
async def env(sqlite_url: str, tmp_path: Any, mailgun: tuple[MailgunState, str]) -> AsyncIterator[Env]:
    started = await _env(sqlite_url, tmp_path, mailgun)
    yield started
    await started.api.aclose()
    await started.relay.stop()


def sign(key: str, timestamp: str, token: str) -> str:
    return hmac.new(key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()


def webhook(event_data: dict[str, Any], *, key: str = SIGNING_KEY, age: float = 0.0, token: str | None = None) -> Any:
    timestamp = str(int(time.time() - age))
    token = token or secrets.token_hex(25)  # "randomly generated string with length 50"
    return {
        "signature": {"timestamp": timestamp, "token": token, "signature": sign(key, timestamp, token)},
        "event-data": event_data,
    }


def event_data(event: str, recipient: str, mailgun_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "event": event,
        "id": secrets.token_urlsafe(16),
        "timestamp": time.time(),
        "log-level": "info",
        "recipient": recipient,
        "recipient-domain": recipient.rpartition("@")[2],
        "message": {"headers": {"message-id": mailgun_id.strip("<>"), "from": SENDER, "subject": "Invite"}},
        **extra,
    }


def hard_bounce(recipient: str, mailgun_id: str) -> dict[str, Any]:
    return event_data(
        "failed",
        recipient,
        mailgun_id,
        severity="permanent",
        reason="bounce",
        **{"delivery-status": {"code": 550, "message": "5.1.1 The email account does not exist", "description": ""}},
    )


async def test_a_bad_signature_is_401_and_records_nothing(env: Env) -> None:
    data = hard_bounce("ann@example.org", "<x@joinmednet.org>")
    for body in (
        webhook(data, key="not-the-key"),
        {"event-data": data},  # no signature at all
        {**webhook(data), "signature": {**webhook(data)["signature"], "signature": "0" * 64}},
    ):
        answer = await env.api.post(PATH, json=body)
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"]["code"] == "unauthorized"
    assert (await env.api.post(PATH, content=b"not json")).status_code == 400
    assert await outbox(env.relay) == [] and await listed(env.relay) == {}


async def test_the_signing_keys_are_write_only(env: Env) -> None:
    shown = await env.api.get("/api/v1/workspaces/mg", headers=OPERATOR)
    assert shown.status_code == 200 and shown.json()["definition"]["mailgun"]["webhook_signing_key"] == "********"
    assert SIGNING_KEY not in shown.text


async def test_a_stale_timestamp_is_401(env: Env) -> None:
    answer = await env.api.post(PATH, json=webhook(hard_bounce("ann@example.org", "<x@y>"), age=3600))
    assert answer.status_code == 401 and "stale" in answer.json()["error"]["message"]
    future = await env.api.post(PATH, json=webhook(hard_bounce("ann@example.org", "<x@y>"), age=-3600))
    assert future.status_code == 401
    assert await listed(env.relay) == {}


async def test_a_replayed_token_is_401(env: Env) -> None:
    first = webhook(event_data("delivered", "ann@example.org", "<unknown@joinmednet.org>"))
    assert (await env.api.post(PATH, json=first)).status_code == 200
    again = await env.api.post(PATH, json=first)
    assert again.status_code == 401 and "replayed" in again.json()["error"]["message"]
    # The signature covers only timestamp and token: the same signature with other event data is refused too.
    forged = {**first, "event-data": hard_bounce("victim@example.org", "<unknown@joinmednet.org>")}
    assert (await env.api.post(PATH, json=forged)).status_code == 401
    assert await listed(env.relay) == {}


async def test_another_workspaces_key_verifies_too(env: Env) -> None:
    answer = await env.api.post(PATH, json=webhook(hard_bounce("zed@example.org", "<nope@x>"), key=OTHER_SIGNING_KEY))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"events": 1, "recorded": 0, "unmatched": 1, "ignored": 0, "suppressed": 1,
                             "duplicate": False}  # fmt: skip
    # No Relay message to key an event by: only the address is listed, by the workspace whose key verified it.
    assert await outbox(env.relay) == []
    row = (await listed(env.relay))["zed@example.org"]
    assert (row["reason"], row["source"], row["message_id"]) == ("hard_bounce", "mailgun:mg-2", None)


async def test_a_hard_bounce_suppresses_and_the_next_message_is_refused(
    database_url: str, tmp_path: Any, mailgun: tuple[MailgunState, str]
) -> None:
    env = await _env(database_url, tmp_path, mailgun)
    try:
        message_id, mailgun_id = await env.send(["ann@example.org", "bob@example.org"])

        answer = await env.api.post(PATH, json=webhook(hard_bounce("ann@example.org", mailgun_id)))

        assert answer.status_code == 200, answer.text
        assert answer.json()["recorded"] == 1 and answer.json()["suppressed"] == 1
        [bounced] = await outbox(env.relay)
        assert (bounced["type"], bounced["message_id"]) == ("message.bounced", message_id)
        data = bounced["payload"]["data"]
        assert bounced["payload"]["event"] == "message.bounced"
        assert (data["message_id"], data["recipient"], data["sender_email"]) == (message_id, "ann@example.org", SENDER)
        assert (data["type"], data["workspace_id"], data["provider"]) == ("hard", "mg", "mailgun")
        assert data["reason"] == "550 5.1.1 The email account does not exist" and data["suppressed"] is True
        assert data["provider_message_id"] == mailgun_id
        row = (await listed(env.relay))["ann@example.org"]
        assert (row["reason"], row["source"], row["message_id"]) == ("hard_bounce", "mailgun:mg", message_id)
        day = f"{row['created_at']:%Y-%m-%d}"
        why = f"recipient suppressed (hard_bounce on {day}; remove it from the suppression list to send again)"

        # The next message to ann: refused at RCPT (any case), while bob still gets mail.
        replies = await rcpt(env.relay, SENDER, ["Ann@Example.org", "bob@example.org"])
        assert replies[0] == (550, f"5.7.1 <Ann@Example.org>: {why}")
        assert replies[1][0] == 250
        # ... and through the API, naming the recipient's field.
        sent = await env.api.post(
            "/api/v1/messages",
            json={"from": SENDER, "to": ["bob@example.org", "ann@example.org"], "subject": "Again", "text": "x"},
            headers=OPERATOR,
        )
        assert sent.status_code == 422, sent.text
        error = sent.json()["error"]
        assert (error["field"], error["code"]) == ("to[1]", "recipient_suppressed")
        assert error["message"] == f"<ann@example.org>: {why}"
    finally:
        await env.api.aclose()
        await env.relay.stop()


async def test_delivered_complained_and_unsubscribed(env: Env) -> None:
    message_id, mailgun_id = await env.send(["dan@example.org", "cat@example.org", "eve@example.org"])
    for event, recipient in (("delivered", "dan@example.org"), ("complained", "cat@example.org"),
                             ("unsubscribed", "eve@example.org")):  # fmt: skip
        answer = await env.api.post(PATH, json=webhook(event_data(event, recipient, mailgun_id)))
        assert answer.status_code == 200 and answer.json()["recorded"] == 1, answer.text

    recorded = [(e["type"], e["message_id"], e["payload"]["data"]["recipient"]) for e in await outbox(env.relay)]
    assert recorded == [
        ("message.delivered", message_id, "dan@example.org"),
        ("message.complained", message_id, "cat@example.org"),
        ("message.unsubscribed", message_id, "eve@example.org"),
    ]
    rows = await listed(env.relay)
    assert {email: row["reason"] for email, row in rows.items()} == {
        "cat@example.org": "complaint",
        "eve@example.org": "unsubscribe",
    }


async def test_events_relay_does_not_map_are_answered_200_and_ignored(env: Env) -> None:
    temporary = event_data("failed", "ann@example.org", "<x@y>", severity="temporary", reason="generic")
    for data in (temporary, event_data("opened", "ann@example.org", "<x@y>"), {"event": "accepted"}):
        answer = await env.api.post(PATH, json=webhook(data))
        assert answer.status_code == 200 and answer.json()["ignored"] == 1, answer.text
    assert await outbox(env.relay) == [] and await listed(env.relay) == {}


async def test_unsubscribes_list_only_when_configured(
    sqlite_url: str, tmp_path: Any, mailgun: tuple[MailgunState, str]
) -> None:
    env = await _env(sqlite_url, tmp_path, mailgun, suppression={"on": ["hard_bounce", "complaint"]})
    try:
        message_id, mailgun_id = await env.send(["eve@example.org"])
        answer = await env.api.post(PATH, json=webhook(event_data("unsubscribed", "eve@example.org", mailgun_id)))
        assert answer.status_code == 200 and answer.json()["suppressed"] == 0
        [event] = await outbox(env.relay)
        assert (event["type"], event["message_id"]) == ("message.unsubscribed", message_id)
        assert event["payload"]["data"]["suppressed"] is False
        assert await listed(env.relay) == {}
        assert (await rcpt(env.relay, SENDER, ["eve@example.org"]))[0][0] == 250
    finally:
        await env.api.aclose()
        await env.relay.stop()

"""`/webhooks/inbound/mandrill` over a running Relay whose mandrill workspace sends through the Mandrill emulator.

The signature is made here from Mandrill's own instructions ("Authenticating webhook requests"), not with Relay's
code: start from the webhook URL exactly as registered, append each POST variable's key and value sorted by key
with no delimiter, HMAC-SHA1 with the webhook key, base64. The body is a form with `mandrill_events`, a JSON
array of message events ("Webhook format", "Message event webhook format").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from relay.runtime import Relay
from relay.store import Messages
from tests.emulators.mandrill import MandrillState, create_app
from tests.emulators.server import ServedApp
from tests.support.inbound import listed, outbox, rcpt
from tests.support.mail import submit
from tests.support.net import async_wait_for
from tests.support.relay import config, start_relay

API_KEY = "md-inbound-key-0a1b2c"
WEBHOOK_KEY = "mandrill-webhook-key-Q6AsTVFGRDyK"
# As registered at Mandrill: the signature covers this string, query and all, not the URL Relay sees.
WEBHOOK_URL = "https://relay.example/webhooks/inbound/mandrill?source=mandrill"
SENDER = "app@joinmednet.org"
PATH = "/webhooks/inbound/mandrill"


def mandrill_signature(key: str, url: str, post: dict[str, str]) -> str:
    signed_data = url
    for name in sorted(post):
        signed_data += name + post[name]
    return base64.b64encode(hmac.new(key.encode(), signed_data.encode(), hashlib.sha1).digest()).decode()


@dataclass
class Env:
    relay: Relay
    api: httpx.AsyncClient

    async def send(self, recipient: str) -> tuple[str, str]:
        """(Relay's message id, the `_id` Mandrill answered for the recipient)."""
        raw = f"From: {SENDER}\r\nTo: {recipient}\r\nSubject: Invite\r\n\r\nHello\r\n".encode()
        message_id = await submit(self.relay.smtp_address, SENDER, [recipient], raw)
        messages = Messages(self.relay.db)

        async def sent() -> bool:
            view = await messages.get(message_id)
            return view is not None and view.status == "sent"

        await async_wait_for(sent, timeout=20, what=f"{message_id} to go out through Mandrill")
        [attempt] = await messages.attempts(message_id)
        assert attempt.provider_message_id
        return message_id, attempt.provider_message_id

    async def post(self, items: list[Any], *, key: str = WEBHOOK_KEY, url: str = WEBHOOK_URL) -> httpx.Response:
        post = {"mandrill_events": json.dumps(items)}
        headers = {
            "X-Mandrill-Signature": mandrill_signature(key, url, post),
            "Content-Type": "application/x-www-form-urlencoded",
        }
        return await self.api.post(PATH, content=urlencode(post), headers=headers)


@pytest.fixture
def served() -> Iterator[str]:
    with ServedApp(create_app(MandrillState(keys={API_KEY}))) as app:
        yield app.url


@pytest.fixture
async def env(sqlite_url: str, tmp_path: Any, served: str) -> AsyncIterator[Env]:
    workspace = {
        "id": "md",
        "domains": ["joinmednet.org"],
        "mandrill": {
            "api_key": API_KEY,
            "base_url": f"{served}/api/1.0",
            "webhook_key": WEBHOOK_KEY,
            "webhook_url": WEBHOOK_URL,
        },
    }
    # A second account whose webhook_url is not set: its signature is checked against the URL Relay sees.
    second = {
        "id": "md-2",
        "domains": ["md2.example"],
        "mandrill": {"api_key": API_KEY, "base_url": f"{served}/api/1.0", "webhook_key": "second-webhook-key"},
    }
    relay = await start_relay(config(sqlite_url, [workspace, second]), tmp_path)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=relay.api_app()), base_url="http://t") as api:
        yield Env(relay, api)
    await relay.stop()


def message_event(event: str, recipient: str, mandrill_id: str, **msg: Any) -> dict[str, Any]:
    state = {"send": "sent", "hard_bounce": "bounced", "soft_bounce": "soft-bounced", "spam": "sent",
             "unsub": "sent", "open": "sent"}[event]  # fmt: skip
    return {
        "event": event,
        "_id": mandrill_id,
        "ts": int(time.time()),
        "msg": {
            "ts": int(time.time()) - 60,
            "_id": mandrill_id,
            "email": recipient,
            "sender": SENDER,
            "subject": "Invite",
            "state": state,
            "tags": [],
            "metadata": {},
            **msg,
        },
    }


async def test_mandrills_url_check_is_answered_200(env: Env) -> None:
    assert (await env.api.head(PATH)).status_code == 200
    assert (await env.api.get(PATH)).status_code == 200


async def test_a_bad_signature_is_401_and_records_nothing(env: Env) -> None:
    items = [message_event("hard_bounce", "ann@example.org", "a" * 32)]
    assert (await env.post(items, key="wrong-key")).status_code == 401
    # Signed for the URL Relay sees rather than the one registered: not what Mandrill signs.
    assert (await env.post(items, url="http://t/webhooks/inbound/mandrill")).status_code == 401
    unsigned = await env.api.post(PATH, data={"mandrill_events": json.dumps(items)})
    assert unsigned.status_code == 401 and unsigned.json()["error"]["code"] == "unauthorized"
    assert await outbox(env.relay) == [] and await listed(env.relay) == {}


async def test_message_events_become_relay_events_and_suppressions(env: Env) -> None:
    sent = {r: await env.send(r) for r in ("ann@example.org", "bob@example.org", "cat@example.org",
                                           "dan@example.org", "eve@example.org")}  # fmt: skip
    items = [
        message_event("hard_bounce", "ann@example.org", sent["ann@example.org"][1], bounce_description="bad_mailbox",
                      diag="smtp;550 5.1.1 The email account that you tried to reach does not exist."),
        message_event("spam", "bob@example.org", sent["bob@example.org"][1]),
        message_event("unsub", "cat@example.org", sent["cat@example.org"][1]),
        message_event("send", "dan@example.org", sent["dan@example.org"][1]),
        message_event("soft_bounce", "eve@example.org", sent["eve@example.org"][1], bounce_description="mailbox_full",
                      diag="smtp;552 5.2.2 Over quota"),
        message_event("open", "dan@example.org", sent["dan@example.org"][1]),  # not mapped
        {"type": "blacklist", "action": "add", "reject": {"email": "x@example.org", "reason": "hard-bounce"}},
    ]  # fmt: skip

    answer = await env.post(items)

    assert answer.status_code == 200, answer.text
    assert answer.json() == {"events": 7, "recorded": 5, "unmatched": 0, "ignored": 2, "suppressed": 3,
                             "duplicate": False}  # fmt: skip
    got = {e["payload"]["data"]["recipient"]: (e["type"], e["message_id"]) for e in await outbox(env.relay)}
    assert got == {
        "ann@example.org": ("message.bounced", sent["ann@example.org"][0]),
        "bob@example.org": ("message.complained", sent["bob@example.org"][0]),
        "cat@example.org": ("message.unsubscribed", sent["cat@example.org"][0]),
        "dan@example.org": ("message.delivered", sent["dan@example.org"][0]),
        "eve@example.org": ("message.bounced", sent["eve@example.org"][0]),
    }
    bounces = {
        e["payload"]["data"]["recipient"]: e["payload"]["data"] for e in await outbox(env.relay, ("message.bounced",))
    }
    assert bounces["ann@example.org"]["type"] == "hard" and bounces["eve@example.org"]["type"] == "soft"
    assert bounces["ann@example.org"]["reason"].startswith("smtp;550 5.1.1")
    rows = await listed(env.relay)
    assert {email: (row["reason"], row["source"]) for email, row in rows.items()} == {
        "ann@example.org": ("hard_bounce", "mandrill:md"),
        "bob@example.org": ("complaint", "mandrill:md"),
        "cat@example.org": ("unsubscribe", "mandrill:md"),
    }
    replies = await rcpt(env.relay, SENDER, ["ann@example.org", "bob@example.org", "dan@example.org"])
    assert [code for code, _ in replies] == [550, 550, 250]
    assert replies[1][1].startswith("5.7.1 <bob@example.org>: recipient suppressed (complaint on ")

    # The same batch again (a retry whose answer was lost): 200, recorded once.
    again = await env.post(items)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert len(await outbox(env.relay)) == 5


async def test_without_webhook_url_the_url_relay_sees_is_signed(env: Env) -> None:
    items = [message_event("hard_bounce", "zed@example.org", "f" * 32)]
    answer = await env.post(items, key="second-webhook-key", url=f"http://t{PATH}")
    assert answer.status_code == 200, answer.text
    assert answer.json()["unmatched"] == 1 and answer.json()["suppressed"] == 1
    assert (await listed(env.relay))["zed@example.org"]["source"] == "mandrill:md-2"


async def test_a_body_that_is_not_mandrills_format_is_400(env: Env) -> None:
    post = {"mandrill_events": "{not json"}
    headers = {"X-Mandrill-Signature": mandrill_signature(WEBHOOK_KEY, WEBHOOK_URL, post)}
    answer = await env.api.post(PATH, data=post, headers=headers)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "bad_request"

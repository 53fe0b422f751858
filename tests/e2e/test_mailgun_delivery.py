"""SMTP in, Mailgun out: an in-process Relay with a mailgun workspace whose base_url is the Mailgun emulator
on a real port. smtplib submits; the emulator records the `to` fields and the `message` file Mailgun would get.

Mailgun's messages.mime takes the recipients only from `to` and sends the MIME as given
(documentation.mailgun.com … post-v3--domain-name--messages-mime), so the MIME must arrive unchanged apart from
the Bcc header, and a Bcc recipient must be in `to` and in no header.
"""

from __future__ import annotations

import email
import email.policy
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from relay.runtime import Relay
from relay.store import Messages
from tests.emulators.mailgun import Delivery, MailgunState, create_app
from tests.emulators.server import ServedApp
from tests.support.mail import leaf_parts, multipart_with_attachment, submit
from tests.support.net import async_wait_for
from tests.support.relay import config, start_relay

KEY = "key-e2e-5f1c0a9b7d3e4f2a"
SENDER = "app@joinmednet.org"


@dataclass
class Env:
    relay: Relay
    mailgun: MailgunState


@pytest.fixture
def mailgun() -> Iterator[tuple[MailgunState, str]]:
    state = MailgunState(api_key=KEY, domains={"joinmednet.org": "active"})
    with ServedApp(create_app(state)) as served:
        yield state, served.url


@pytest.fixture
async def env(sqlite_url: str, tmp_path: Path, mailgun: tuple[MailgunState, str]) -> AsyncIterator[Env]:
    state, url = mailgun
    # No `domain` in the section: Mailgun's sending domain defaults to the workspace's first domain.
    workspace = {"id": "mg", "domains": ["joinmednet.org"], "mailgun": {"api_key": KEY, "base_url": url}}
    relay = await start_relay(config(sqlite_url, [workspace]), tmp_path)
    try:
        yield Env(relay, state)
    finally:
        await relay.stop()


async def delivered(env: Env, message_id: str) -> Delivery:
    messages = Messages(env.relay.db)

    async def sent() -> bool:
        view = await messages.get(message_id)
        return view is not None and view.status == "sent"

    await async_wait_for(sent, timeout=20, what=f"message {message_id} to be sent through Mailgun")
    [delivery] = env.mailgun.deliveries
    [attempt] = await messages.attempts(message_id)
    assert (attempt.outcome, attempt.provider_status, attempt.provider_message_id) == ("sent", "200", delivery.id)
    return delivery


async def test_a_multipart_message_with_a_1_mb_attachment_arrives_unchanged(env: Env) -> None:
    raw, attachment = multipart_with_attachment(SENDER)
    message_id = await submit(env.relay.smtp_address, SENDER, ["ann@example.org", "cat@example.org"], raw)

    delivery = await delivered(env, message_id)

    assert delivery.domain == "joinmednet.org"
    assert delivery.to == ["ann@example.org", "cat@example.org"]
    assert delivery.mime == raw  # byte for byte
    received = leaf_parts(delivery.mime)
    assert [(content_type, name) for content_type, name, _ in received] == [
        ("text/plain", None),
        ("text/html", None),
        ("application/octet-stream", "report.bin"),
    ]
    assert received == leaf_parts(raw)
    assert received[2][2] == attachment
    assert [r.username for r in env.mailgun.requests] == ["api"]


async def test_a_bcc_recipient_is_delivered_but_is_in_no_header_mailgun_receives(env: Env) -> None:
    hidden = "hidden@example.org"
    raw, attachment = multipart_with_attachment(SENDER, bcc=hidden)
    assert f"Bcc: {hidden}\r\n".encode() in raw
    message_id = await submit(env.relay.smtp_address, SENDER, ["ann@example.org", "cat@example.org", hidden], raw)

    delivery = await delivered(env, message_id)

    assert delivery.to == ["ann@example.org", "cat@example.org", hidden]  # delivered: it is in `to`
    assert delivery.mime == raw.replace(f"Bcc: {hidden}\r\n".encode(), b"")  # only the Bcc header is gone
    parsed = email.message_from_bytes(delivery.mime, policy=email.policy.default)
    for part in parsed.walk():
        for name, value in part.items():
            assert hidden not in str(value), f"{name}: {value}"
        assert part.get_all("Bcc") is None
    assert hidden.encode() not in delivery.mime
    assert leaf_parts(delivery.mime)[2][2] == attachment

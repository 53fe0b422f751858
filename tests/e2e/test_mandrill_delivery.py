"""Mandrill end to end: smtplib → in-process Relay → the Mandrill emulator on a real port (ServedApp).

Proves what the issue's acceptance asks of Mandrill: a multipart message with a 1 MB attachment arrives with its
MIME parts unchanged, a Bcc recipient is delivered (in send-raw's `to`) but named in no header, and a 200 that
mixes `sent` and `rejected` is recorded per recipient in `delivery_attempts.recipients` without a second send
to the recipient who already has it (send-raw returns one result per recipient: Mailchimp Transactional
reference, /messages/send-raw).
"""

from __future__ import annotations

import asyncio
import email.policy
import random
import re
import smtplib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from email import message_from_bytes
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any

import pytest

from relay.runtime import Relay
from relay.store import Messages
from tests.emulators.mandrill import Delivery, MandrillState, create_app
from tests.emulators.server import ServedApp
from tests.support.net import async_wait_for
from tests.support.relay import config, start_relay

KEY = "md-e2e-key-0123456789"
SENDER = "app@joinmednet.org"
QUEUED = re.compile(r"queued as ([0-9A-Z]{26})")


@dataclass
class Env:
    relay: Relay
    mandrill: MandrillState

    async def submit(self, recipients: list[str], data: bytes) -> str:
        host, port = self.relay.smtp_address

        def send() -> str:
            with smtplib.SMTP(host, port, timeout=30) as client:
                client.ehlo()
                client.mail(SENDER)
                for recipient in recipients:
                    code, reply = client.rcpt(recipient)
                    assert code == 250, reply
                code, reply = client.data(data)
            assert code == 250, reply
            match = QUEUED.search(reply.decode())
            assert match, reply
            return match.group(1)

        return await asyncio.to_thread(send)

    async def deliveries(self, count: int) -> list[Delivery]:
        await async_wait_for(lambda: len(self.mandrill.deliveries) >= count, timeout=20, what=f"{count} deliveries")
        return list(self.mandrill.deliveries)

    async def settled(self, message_id: str, status: str) -> Any:
        messages = Messages(self.relay.db)

        async def reached() -> Any:
            view = await messages.get(message_id)
            return view if view is not None and view.status == status else None

        return await async_wait_for(reached, timeout=20, what=f"message {message_id} to be {status}")


@pytest.fixture
def emulator() -> Iterator[tuple[MandrillState, ServedApp]]:
    state = MandrillState(keys={KEY})
    with ServedApp(create_app(state)) as served:
        yield state, served


async def _env(database_url: str, tmp_path: Path, emulator: tuple[MandrillState, ServedApp]) -> Env:
    state, served = emulator
    workspace = {
        "id": "mandrill-1",
        "domains": ["joinmednet.org"],
        "mandrill": {"api_key": KEY, "base_url": f"{served.url}/api/1.0"},
    }
    relay = await start_relay(config(database_url, [workspace]), tmp_path)
    return Env(relay, state)


@pytest.fixture
async def env(database_url: str, tmp_path: Path, emulator: tuple[MandrillState, ServedApp]) -> AsyncIterator[Env]:
    started = await _env(database_url, tmp_path, emulator)
    yield started
    await started.relay.stop()


@pytest.fixture
async def sqlite_env(sqlite_url: str, tmp_path: Path, emulator: tuple[MandrillState, ServedApp]) -> AsyncIterator[Env]:
    started = await _env(sqlite_url, tmp_path, emulator)
    yield started
    await started.relay.stop()


def multipart_with_attachment() -> bytes:
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = f"MedNet <{SENDER}>"
    message["To"] = "Ann <ann@example.org>"
    message["Cc"] = "bob@example.org"
    message["Bcc"] = "hidden@example.org"
    message["Subject"] = "Quarterly report — Grüße"
    message["Message-ID"] = "<report-1@joinmednet.org>"
    message.set_content("Plain text part.\nSecond line, naïve café.\n")
    message.add_alternative("<html><body><p>HTML part, <b>naïve</b> café.</p></body></html>\n", subtype="html")
    attachment = random.Random(7).randbytes(1024 * 1024)
    message.add_attachment(attachment, maintype="application", subtype="octet-stream", filename="report.bin")
    return message.as_bytes()


def without_field(raw: bytes, name: bytes) -> bytes:
    """`raw` without its top-level `name:` field (unfolded here: one line), as the worker removes Bcc."""
    head, _, body = raw.partition(b"\r\n\r\n")
    kept = [line for line in head.split(b"\r\n") if not line.lower().startswith(name.lower() + b":")]
    return b"\r\n".join(kept) + b"\r\n\r\n" + body


def parts(raw: bytes) -> list[tuple[str, dict[str, str], bytes | None]]:
    """Every MIME part: content type, its header fields, and its decoded payload (None for containers)."""
    message = message_from_bytes(raw, policy=email.policy.compat32)
    return [
        (part.get_content_type(), dict(part.items()), None if part.is_multipart() else part.get_payload(decode=True))
        for part in message.walk()
    ]


def all_header_text(message: Message) -> str:
    return "\n".join(f"{name}: {value}" for part in message.walk() for name, value in part.items())


async def test_a_1mb_multipart_message_arrives_unchanged_and_bcc_is_delivered_but_unnamed(sqlite_env: Env) -> None:
    original = multipart_with_attachment()
    assert len(original) > 1024 * 1024
    recipients = ["ann@example.org", "bob@example.org", "hidden@example.org"]
    message_id = await sqlite_env.submit(recipients, original)
    await sqlite_env.settled(message_id, "sent")
    [delivery] = await sqlite_env.deliveries(1)

    assert delivery.to == recipients  # the Bcc recipient is in the envelope Mandrill delivers to
    assert delivery.from_email == SENDER
    # Byte for byte what the client sent, minus the Bcc field: every MIME part, boundary and header unchanged.
    assert delivery.raw == without_field(original, b"Bcc")
    expected = parts(original)
    top_kind, top_headers, top_payload = expected[0]
    expected[0] = (top_kind, {k: v for k, v in top_headers.items() if k != "Bcc"}, top_payload)
    assert [kind for kind, _, _ in expected] == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "text/html",
        "application/octet-stream",
    ]
    assert parts(delivery.raw) == expected
    received = message_from_bytes(delivery.raw, policy=email.policy.compat32)
    attachment = [p for p in received.walk() if p.get_filename() == "report.bin"]
    assert attachment[0].get_payload(decode=True) == random.Random(7).randbytes(1024 * 1024)
    assert "hidden@example.org" not in all_header_text(received)
    assert b"hidden@example.org" not in delivery.raw


async def test_a_rejected_recipient_next_to_a_sent_one_is_recorded_and_not_retried(env: Env) -> None:
    env.mandrill.answer("gone@example.org", "rejected", reject_reason="hard-bounce")
    raw = b"From: app@joinmednet.org\r\nTo: ok@example.org, gone@example.org\r\nSubject: s\r\n\r\nbody\r\n"
    message_id = await env.submit(["ok@example.org", "gone@example.org"], raw)
    view = await env.settled(message_id, "sent")
    assert view.last_error == "refused for good: gone@example.org: rejected: hard-bounce"

    [attempt] = await Messages(env.relay.db).attempts(message_id)
    assert attempt.outcome == "sent"
    assert attempt.recipients == {"ok@example.org": "sent", "gone@example.org": "rejected: hard-bounce"}
    assert attempt.provider_message_id == env.mandrill.deliveries[0].results[0]["_id"]
    # One send, and `sent` is final: nothing is scheduled to go to ok@ again (or to gone@, refused for good).
    assert view.next_attempt_at is None
    assert len(env.mandrill.deliveries) == 1
    assert len(await Messages(env.relay.db).attempts(message_id)) == 1


async def test_a_soft_bounce_is_retried_for_that_recipient_only(env: Env) -> None:
    env.mandrill.answer("later@example.org", "rejected", reject_reason="soft-bounce", times=1)
    raw = b"From: app@joinmednet.org\r\nTo: ok@example.org, later@example.org\r\nSubject: s\r\n\r\nbody\r\n"
    message_id = await env.submit(["ok@example.org", "later@example.org"], raw)
    await env.settled(message_id, "sent")
    deliveries = await env.deliveries(2)
    assert [d.to for d in deliveries] == [["ok@example.org", "later@example.org"], ["later@example.org"]]
    assert deliveries[1].raw == raw

    attempts = await Messages(env.relay.db).attempts(message_id)
    assert [(a.outcome, a.recipients) for a in attempts] == [
        ("sent", {"ok@example.org": "sent", "later@example.org": "rejected: soft-bounce"}),
        ("sent", {"later@example.org": "sent"}),
    ]


async def test_an_hourly_quota_hold_is_accepted_and_pauses_the_workspace(env: Env) -> None:
    """notes §5: `queued` for `hourly-quota-exhausted` is sent (Mandrill holds it) and the workspace is
    quota-limited: later mail waits for the hour instead of piling up in Mandrill's backlog."""
    env.mandrill.answer("a@example.org", "queued", queued_reason="hourly-quota-exhausted", times=1)
    raw = b"From: app@joinmednet.org\r\nTo: a@example.org\r\nSubject: s\r\n\r\nbody\r\n"
    first = await env.submit(["a@example.org"], raw)
    view = await env.settled(first, "sent")
    assert view.next_attempt_at is None  # accepted: never sent again
    state = (await env.relay.states.all())["mandrill-1"]
    assert state.state == "paused"
    assert state.recheck_at is not None
    wait = (state.recheck_at - state.changed_at).total_seconds()
    assert 3599 <= wait <= 3601
    second = await env.submit(["b@example.org"], raw)
    later = await env.settled(second, "deferred")
    assert later.last_error is not None
    assert later.last_error.startswith('workspace "mandrill-1" is throttled: 200 quota-limited')
    assert await Messages(env.relay.db).attempts(second) == []
    assert len(env.mandrill.deliveries) == 1

"""SMTP in, Gmail API out: an in-process Relay with a gmail workspace whose base_url and key `token_uri` point at
the Gmail emulator on a real port. smtplib submits; the emulator verifies the signed JWT-bearer grant and the
bearer token, and keeps the bytes Gmail received and what a recipient would see.

Gmail has no envelope: it delivers to the To, Cc and Bcc headers and removes Bcc from delivered copies
(developers.google.com/gmail/api/guides/sending; notes §1). So the MIME must arrive unchanged, and an
envelope-only recipient must reach Gmail in a Bcc header and appear in no header a recipient sees.
"""

from __future__ import annotations

import email
import email.policy
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from relay.mime import remove_fields
from relay.runtime import Relay
from relay.store import Messages
from tests.emulators.gmail import GMAIL_SEND, GmailState, ServiceAccount, StoredMessage, create_app
from tests.emulators.server import ServedApp
from tests.support.mail import leaf_parts, multipart_with_attachment, submit
from tests.support.net import async_wait_for
from tests.support.relay import config, start_relay

SENDER = "app@joinmednet.org"


@dataclass
class Env:
    relay: Relay
    gmail: GmailState
    account: ServiceAccount


@pytest.fixture(scope="module")
def account() -> ServiceAccount:
    return ServiceAccount.generate()


@pytest.fixture
def gmail(account: ServiceAccount) -> Iterator[tuple[GmailState, str]]:
    state = GmailState([account], domains=["joinmednet.org"])
    with ServedApp(create_app(state)) as served:
        yield state, served.url


@pytest.fixture
async def env(
    sqlite_url: str, tmp_path: Path, gmail: tuple[GmailState, str], account: ServiceAccount
) -> AsyncIterator[Env]:
    state, url = gmail
    key_file = tmp_path / "service-account.json"
    key_file.write_text(json.dumps(account.key_file(f"{url}/token")))
    workspace = {
        "id": "gw",
        "domains": ["joinmednet.org"],
        "gmail": {"service_account_file": str(key_file), "base_url": url},
    }
    relay = await start_relay(config(sqlite_url, [workspace]), tmp_path)
    try:
        yield Env(relay, state, account)
    finally:
        await relay.stop()


async def delivered(env: Env, message_id: str) -> StoredMessage:
    messages = Messages(env.relay.db)

    async def sent() -> bool:
        view = await messages.get(message_id)
        return view is not None and view.status == "sent"

    await async_wait_for(sent, timeout=20, what=f"message {message_id} to be sent through Gmail")
    [stored] = env.gmail.messages
    [attempt] = await messages.attempts(message_id)
    assert (attempt.outcome, attempt.provider_status, attempt.provider_message_id) == ("sent", "200", stored.id)
    return stored


async def test_a_multipart_message_with_a_1_mb_attachment_arrives_unchanged(env: Env) -> None:
    raw, attachment = multipart_with_attachment(SENDER, message_id="<gmail-report-1@joinmednet.org>", seed=11)
    message_id = await submit(env.relay.smtp_address, SENDER, ["ann@example.org", "cat@example.org"], raw)

    stored = await delivered(env, message_id)

    assert stored.raw == raw  # byte for byte: every envelope recipient is already in To/Cc, so no Bcc
    assert stored.delivered == raw and not stored.from_rewritten
    assert stored.user == SENDER and sorted(stored.recipients) == ["ann@example.org", "cat@example.org"]
    received = leaf_parts(stored.raw)
    assert [(content_type, name) for content_type, name, _ in received] == [
        ("text/plain", None),
        ("text/html", None),
        ("application/octet-stream", "report.bin"),
    ]
    assert received == leaf_parts(raw)
    assert received[2][2] == attachment
    # The grant the emulator verified (RS256 signature, iss, sub, scope, aud, lifetime) and the upload it took.
    [grant] = [call for call in env.gmail.token_calls if call.status == 200]
    assert grant.claims is not None
    assert (grant.claims["iss"], grant.claims["sub"], grant.claims["scope"]) == (
        env.account.client_email,
        SENDER,
        GMAIL_SEND,
    )
    [upload] = env.gmail.send_calls
    assert (upload.path, upload.query, upload.status) == (
        "/upload/gmail/v1/users/me/messages/send",
        "uploadType=media",
        200,
    )


async def test_bcc_recipients_are_delivered_but_in_no_header_a_recipient_sees(env: Env) -> None:
    # One hidden recipient came with a Bcc header in the submitted message, one only in the envelope.
    in_header, envelope_only = "hidden@example.org", "secret@example.net"
    raw, attachment = multipart_with_attachment(
        SENDER, bcc=in_header, message_id="<gmail-report-1@joinmednet.org>", seed=11
    )
    without_bcc = raw.replace(f"Bcc: {in_header}\r\n".encode(), b"")
    assert without_bcc != raw
    message_id = await submit(
        env.relay.smtp_address, SENDER, ["ann@example.org", "cat@example.org", in_header, envelope_only], raw
    )

    stored = await delivered(env, message_id)

    # What Gmail received: one Bcc field naming both, and otherwise the message as submitted minus its own Bcc.
    assert stored.raw == f"Bcc: {in_header},\r\n {envelope_only}\r\n".encode() + without_bcc
    assert remove_fields(stored.raw, ["Bcc"]) == without_bcc
    assert sorted(stored.recipients) == sorted(["ann@example.org", "cat@example.org", in_header, envelope_only])
    # What a recipient sees: no trace of either hidden address, in any header of any part or anywhere else.
    assert stored.delivered == without_bcc
    parsed = email.message_from_bytes(stored.delivered, policy=email.policy.default)
    for part in parsed.walk():
        for name, value in part.items():
            assert in_header not in str(value) and envelope_only not in str(value), f"{name}: {value}"
        assert part.get_all("Bcc") is None
    assert in_header.encode() not in stored.delivered and envelope_only.encode() not in stored.delivered
    assert leaf_parts(stored.delivered)[2][2] == attachment

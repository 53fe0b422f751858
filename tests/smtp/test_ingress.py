"""SMTP ingress end to end: policy replies, limits, durable 250, byte-exact delivery, smuggling, database loss.

Relay runs in-process (same event loop); clients are stdlib smtplib in a thread, or a raw socket where
smtplib would hide the bytes on the wire. Delivered bytes are checked at a real upstream SMTP sink (the
`smtp` provider) and in the sandbox outbox.
"""

from __future__ import annotations

import asyncio
import email.policy
import json
import random
import re
import smtplib
import socket
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from relay.mime import header_values, split_header_block
from relay.runtime import Relay
from relay.smtp import RelaySMTP
from relay.store import Messages
from relay.store.tables import messages
from tests.support.net import async_wait_for
from tests.support.relay import config, sandbox_workspace, smtp_workspace, start_relay
from tests.support.services import POSTGRES_HOST, POSTGRES_PORT, require
from tests.support.sink import SmtpSink
from tests.support.tcp_proxy import TcpProxy

QUEUED = re.compile(r"2\.0\.0 Ok: queued as ([0-9A-Z]{26})")


@dataclass
class Env:
    relay: Relay
    sink: SmtpSink
    outbox: Path

    @property
    def address(self) -> tuple[str, int]:
        return self.relay.smtp_address


@pytest.fixture
async def env(sqlite_url: str, sink: SmtpSink, outbox: Path, tmp_path: Path) -> AsyncIterator[Env]:
    """Relay with two workspaces: `up.test` goes to an upstream SMTP sink, `box.test` to the sandbox outbox."""
    data = config(
        sqlite_url,
        [smtp_workspace("upstream", ["up.test"], sink.port), sandbox_workspace("box", ["box.test"], outbox)],
        smtp={"max_message_size": 4 * 1024 * 1024},
    )
    relay = await start_relay(data, tmp_path)
    try:
        yield Env(relay, sink, outbox)
    finally:
        await relay.stop()


# --- clients ---------------------------------------------------------------------------------------------------------


def _submit(address: tuple[str, int], sender: str, recipients: list[str], data: bytes) -> tuple[int, str]:
    with smtplib.SMTP(*address, local_hostname="client.test", timeout=30) as client:
        client.ehlo()
        code, reply = client.mail(sender)
        assert code == 250, reply
        for recipient in recipients:
            code, reply = client.rcpt(recipient)
            assert code == 250, reply
        code, reply = client.data(data)
        return code, reply.decode()


async def submit(address: tuple[str, int], sender: str, recipients: list[str], data: bytes) -> str:
    """Send one message with smtplib; return the queue id from `250 2.0.0 Ok: queued as <id>`."""
    code, reply = await asyncio.to_thread(_submit, address, sender, recipients, data)
    assert code == 250, reply
    match = QUEUED.fullmatch(reply)
    assert match, f"not the promised 250 reply: {reply!r}"
    return match.group(1)


async def session(address: tuple[str, int], steps: Any) -> Any:
    """Run `steps(client)` on an smtplib session that already said EHLO, in a thread."""

    def run() -> Any:
        with smtplib.SMTP(*address, local_hostname="client.test", timeout=30) as client:
            client.ehlo()
            return steps(client)

    return await asyncio.to_thread(run)


class RawClient:
    """A blocking socket client that sends exactly the bytes it is given."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=30)
        self.file = self.sock.makefile("rb")

    def reply(self) -> bytes:
        lines = []
        while True:
            line = self.file.readline()
            assert line, f"connection closed after {lines!r}"
            lines.append(line)
            if line[3:4] != b"-":
                return b"".join(lines)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def rest(self) -> bytes:
        """Everything the server still sends until it closes the connection."""
        return self.file.read()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


async def delivered(env: Env, queue_id: str, via: str) -> tuple[bytes, list[str]]:
    """(bytes, envelope recipients) as the provider handed them on: at the sink or in the outbox."""
    if via == "smtp":
        [received] = await async_wait_for(env.sink.received, what="the upstream sink to receive the message")
        return received.data, received.rcpt_tos
    eml = env.outbox / f"{queue_id}.eml"
    await async_wait_for(eml.exists, what=f"{eml.name} in the outbox")
    envelope = json.loads((env.outbox / f"{queue_id}.json").read_text())
    return eml.read_bytes(), envelope["recipients"]


SENDERS = {"smtp": "app@up.test", "sandbox": "app@box.test"}
VIA = pytest.mark.parametrize("via", ["smtp", "sandbox"])


# --- sender policy and limits ----------------------------------------------------------------------------------------


async def test_unauthenticated_client_outside_allowed_networks_gets_530(
    sqlite_url: str, outbox: Path, tmp_path: Path
) -> None:
    data = config(
        sqlite_url, [sandbox_workspace("box", ["box.test"], outbox)], smtp={"allowed_networks": ["10.0.0.0/8"]}
    )
    relay = await start_relay(data, tmp_path)
    try:
        code, reply = await session(relay.smtp_address, lambda c: c.mail("app@box.test"))
        assert code == 530, reply
        assert reply.startswith(b"5.7.0")
    finally:
        await relay.stop()


async def test_allowed_network_client_may_send_without_auth(env: Env) -> None:
    code, _ = await session(env.address, lambda c: c.mail("app@box.test"))
    assert code == 250


@pytest.mark.parametrize("sender", ["app@unknown.test", "app@box.test.evil", "app@sub.box.test"])
async def test_sender_domain_no_route_serves_gets_550_571(env: Env, sender: str) -> None:
    code, reply = await session(env.address, lambda c: c.mail(sender))
    assert code == 550, reply
    assert reply.startswith(b"5.7.1")


async def test_null_sender_is_refused(env: Env) -> None:
    def steps(client: smtplib.SMTP) -> tuple[tuple[int, bytes], tuple[int, bytes]]:
        return client.mail(""), client.rcpt("you@dest.test")

    (code, reply), (rcpt_code, _) = await session(env.address, steps)
    assert code == 550, reply
    assert reply.startswith(b"5.7.1")
    assert rcpt_code == 503  # no transaction was started


async def test_size_parameter_over_the_limit_gets_552_534(env: Env) -> None:
    limit = 4 * 1024 * 1024

    def steps(client: smtplib.SMTP) -> tuple[Any, Any, Any]:
        advertised = client.esmtp_features.get("size")
        over = client.mail("app@box.test", [f"SIZE={limit + 1}"])
        client.rset()
        return advertised, over, client.mail("app@box.test", [f"SIZE={limit}"])

    advertised, (code, reply), (ok_code, _) = await session(env.address, steps)
    assert advertised == str(limit)
    assert code == 552, reply
    assert reply.startswith(b"5.3.4")
    assert ok_code == 250  # exactly the limit is fine


async def test_data_over_the_limit_gets_552_and_is_not_stored(env: Env) -> None:
    limit = 4 * 1024 * 1024
    big = b"From: app@box.test\r\nSubject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * (limit // 1000 + 10)

    def steps(client: smtplib.SMTP) -> tuple[Any, Any]:
        client.mail("app@box.test")
        client.rcpt("you@dest.test")
        too_big = client.data(big)
        client.mail("app@box.test")  # the session goes on after the refusal
        client.rcpt("you@dest.test")
        return too_big, client.data(b"Subject: small\r\n\r\nsmall\r\n")

    (code, reply), (ok_code, ok_reply) = await session(env.address, steps)
    assert code == 552, reply
    assert reply.startswith(b"5.3.4")
    assert ok_code == 250, ok_reply
    async with env.relay.db.begin() as connection:
        sizes = (await connection.execute(sa.select(messages.c.size))).scalars().all()
    assert sizes == [len(b"Subject: small\r\n\r\nsmall\r\n")]


async def test_the_101st_recipient_gets_452_453(env: Env) -> None:
    recipients = [f"r{n}@dest.test" for n in range(101)]

    def steps(client: smtplib.SMTP) -> tuple[list[tuple[int, bytes]], tuple[int, bytes]]:
        client.mail("app@box.test")
        replies = [client.rcpt(r) for r in recipients]
        return replies, client.data(b"Subject: many\r\n\r\nhello\r\n")

    replies, (code, reply) = await session(env.address, steps)
    assert [c for c, _ in replies[:100]] == [250] * 100
    assert replies[100][0] == 452, replies[100]
    assert replies[100][1].startswith(b"4.5.3")
    assert code == 250
    queue_id = QUEUED.fullmatch(reply.decode()).group(1)  # type: ignore[union-attr]
    stored = await Messages(env.relay.db).get(queue_id)
    assert stored is not None
    assert list(stored.rcpt_to) == recipients[:100]


# --- 250 means durable -----------------------------------------------------------------------------------------------


async def test_250_is_sent_only_once_the_row_is_committed(
    env: Env, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = make_url(sqlite_url).database
    committed_at_reply: dict[str, bool] = {}
    original_push = RelaySMTP.push

    async def push(self: RelaySMTP, status: Any) -> None:
        text = status.decode() if isinstance(status, bytes) else str(status)
        if text.startswith("250 2.0.0 Ok: queued as "):
            # A separate plain reader at the very moment the reply goes out: in WAL mode it sees committed rows
            # only, and it does not wait for a writer the way a BEGIN IMMEDIATE transaction would.
            with sqlite3.connect(database) as reader:
                queue_id = text.rsplit(" ", 1)[1]
                row = reader.execute("SELECT id FROM messages WHERE id = ?", (queue_id,)).fetchone()
            committed_at_reply[queue_id] = row is not None
        await original_push(self, status)

    monkeypatch.setattr(RelaySMTP, "push", push)
    raw = b"From: app@box.test\r\nTo: you@dest.test\r\nSubject: durable\r\n\r\nhello\r\n"

    queue_id = await submit(env.address, "app@box.test", ["you@dest.test"], raw)

    assert committed_at_reply == {queue_id: True}
    stored = await Messages(env.relay.db).get(queue_id)
    assert stored is not None
    assert (stored.mail_from, stored.rcpt_to, stored.size) == ("app@box.test", ("you@dest.test",), len(raw))
    assert await Messages(env.relay.db).raw(queue_id) == raw


async def test_database_unavailable_gives_451_and_accepts_again_once_it_is_back(
    postgres_url: str, outbox: Path, tmp_path: Path
) -> None:
    require("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
    proxy = TcpProxy(POSTGRES_HOST, POSTGRES_PORT).start()
    proxied = make_url(postgres_url).set(port=proxy.port).render_as_string(hide_password=False)
    raw = b"From: app@box.test\r\nSubject: db\r\n\r\nhello\r\n"
    relay = await start_relay(config(proxied, [sandbox_workspace("box", ["box.test"], outbox)]), tmp_path)
    try:
        before = await submit(relay.smtp_address, "app@box.test", ["you@dest.test"], raw)

        proxy.cut()  # every pooled connection is reset and new ones are refused
        code, reply = await asyncio.to_thread(_submit, relay.smtp_address, "app@box.test", ["you@dest.test"], raw)
        assert code == 451, reply
        assert reply.startswith("4.3.0")

        proxy.start()  # same port again: pool_pre_ping replaces the dead connections
        after = await submit(relay.smtp_address, "app@box.test", ["you@dest.test"], raw)

        for queue_id in (before, after):
            assert await Messages(relay.db).get(queue_id) is not None
        async with relay.db.begin() as connection:
            assert (await connection.execute(sa.select(sa.func.count()).select_from(messages))).scalar() == 2
    finally:
        await relay.stop()
        proxy.cut()


# --- bytes on the way through ----------------------------------------------------------------------------------------


def multipart_with_attachment(sender: str) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "you@dest.test"
    message["Subject"] = "Quarterly report"
    message["Message-ID"] = "<report-1@relay.test>"
    message.set_content("Hello,\n.a line that starts with a dot\n..and one with two\n.\nRegards\n")
    message.add_alternative("<p>Hello,</p>\n<p>.dotted</p>\n", subtype="html")
    message.add_attachment(
        random.Random(20240607).randbytes(1_000_000),
        maintype="application",
        subtype="octet-stream",
        filename="report.bin",
    )
    return message.as_bytes(policy=email.policy.SMTP)


@VIA
async def test_multipart_with_a_1mb_attachment_arrives_byte_for_byte(env: Env, via: str) -> None:
    raw = multipart_with_attachment(SENDERS[via])
    assert len(raw) > 1_300_000
    assert raw.endswith(b"\r\n")
    assert b"\r\n.a line" in raw  # lines that smtplib must dot-stuff and Relay unstuff
    assert b"\r\n.\r\n" in raw

    queue_id = await submit(env.address, SENDERS[via], ["you@dest.test"], raw)

    data, recipients = await delivered(env, queue_id, via)
    assert data == raw
    assert recipients == ["you@dest.test"]


@VIA
async def test_8bit_body_bytes_are_preserved(env: Env, via: str) -> None:
    raw = (
        (
            f"From: {SENDERS[via]}\r\nTo: you@dest.test\r\nSubject: 8bit\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        ).encode()
        + "Grüße, naïve café — 日本語 ✓\r\n".encode()
        + b"not utf-8: \xff\xfe\xe9\x80\r\n"
    )

    queue_id = await submit(env.address, SENDERS[via], ["you@dest.test"], raw)

    data, _ = await delivered(env, queue_id, via)
    assert data == raw


@VIA
async def test_bcc_recipient_is_delivered_but_appears_in_no_header(env: Env, via: str) -> None:
    sender = SENDERS[via]
    bcc_field = b"Bcc: hidden@dest.test,\r\n secret@dest.test\r\n"  # folded: every line of the field must go
    head = f"From: {sender}\r\nTo: you@dest.test\r\n".encode()
    tail = b"Subject: with bcc\r\n\r\nBody mentions Bcc: nobody.\r\n"
    raw = head + bcc_field + tail
    recipients = ["you@dest.test", "hidden@dest.test", "secret@dest.test"]

    queue_id = await submit(env.address, sender, recipients, raw)

    data, delivered_to = await delivered(env, queue_id, via)
    assert delivered_to == recipients
    assert data == head + tail
    header_block, _ = split_header_block(data)
    assert b"hidden@" not in header_block
    assert b"secret@" not in header_block


@VIA
@pytest.mark.parametrize("tags", ['["welcome", "onboarding"]', "welcome, onboarding"], ids=["json", "comma"])
async def test_x_mc_headers_become_metadata_and_are_removed(env: Env, via: str, tags: str) -> None:
    sender = SENDERS[via]
    raw = (
        f"From: {sender}\r\nX-MC-Tags: {tags}\r\nTo: you@dest.test\r\n"
        'X-MC-Metadata: {"user_id": 42,\r\n "plan": "pro"}\r\n'
        "Subject: tagged\r\n\r\nThe body may say X-MC-Tags: untouched\r\n"
    ).encode()
    expected = (
        f"From: {sender}\r\nTo: you@dest.test\r\nSubject: tagged\r\n\r\nThe body may say X-MC-Tags: untouched\r\n"
    ).encode()

    queue_id = await submit(env.address, sender, ["you@dest.test"], raw)

    stored = await Messages(env.relay.db).get(queue_id)
    assert stored is not None
    assert stored.metadata == {"tags": ["welcome", "onboarding"], "metadata": {"user_id": 42, "plan": "pro"}}
    data, _ = await delivered(env, queue_id, via)
    assert data == expected
    assert header_values(data, "X-MC-Tags") == header_values(data, "X-MC-Metadata") == []


# --- SMTP smuggling --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ending", [b"\n.\n", b"\r\n.\n", b"\n.\r\n"], ids=["LF.LF", "CRLF.LF", "LF.CRLF"])
async def test_smtp_smuggling_does_not_end_data(env: Env, ending: bytes) -> None:
    first = b"From: app@box.test\r\nTo: you@dest.test\r\nSubject: first\r\n\r\nfirst body"
    smuggled = (
        b"MAIL FROM:<admin@box.test>\r\nRCPT TO:<victim@dest.test>\r\nDATA\r\n"
        b"From: admin@box.test\r\nTo: victim@dest.test\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n"
    )

    def conversation() -> tuple[list[bytes], bytes, bytes]:
        client = RawClient(env.address)
        try:
            replies = [client.reply()]
            for command in (b"EHLO client.test", b"MAIL FROM:<app@box.test>", b"RCPT TO:<you@dest.test>", b"DATA"):
                client.send(command + b"\r\n")
                replies.append(client.reply())
            client.send(first + ending + smuggled + b".\r\n")
            after_data = client.reply()
            client.send(b"QUIT\r\n")
            return replies, after_data, client.rest()
        finally:
            client.close()

    replies, after_data, rest = await asyncio.to_thread(conversation)

    assert [r[:3] for r in replies] == [b"220", b"250", b"250", b"250", b"354"]
    match = QUEUED.fullmatch(after_data.decode()[4:].rstrip("\r\n"))
    assert after_data.startswith(b"250 "), after_data
    assert match, after_data
    assert rest.startswith(b"221"), rest  # no replies to smuggled commands came before QUIT's
    assert rest.count(b"\r\n") == 1, rest
    async with env.relay.db.begin() as connection:
        rows = (await connection.execute(sa.select(messages.c.id, messages.c.rcpt_to))).all()
    assert [(r.id, r.rcpt_to) for r in rows] == [(match.group(1), ["you@dest.test"])]
    raw = await Messages(env.relay.db).raw(match.group(1))
    assert raw is not None
    assert b"MAIL FROM:<admin@box.test>\r\nRCPT TO:<victim@dest.test>\r\nDATA\r\n" in raw
    assert raw.endswith(b"smuggled body\r\n")

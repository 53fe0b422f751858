"""AUTH brute force: a few attempts per session, then 421 and the connection is closed; failures are logged.

Clients are stdlib smtplib in a thread, from 127.0.0.1 while `allowed_networks` is 10.0.0.0/8, so only AUTH
lets them send. `auth_require_tls` is false so that no certificate is needed; the limit is the same over TLS.
"""

from __future__ import annotations

import asyncio
import base64
import smtplib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from relay.runtime import Relay
from relay.smtp.server import AUTH_ATTEMPTS_PER_SESSION
from tests.support.relay import config, sandbox_workspace, start_relay

USER, PASSWORD = "app", "s3cret-pw!"
WRONG = "guess-number-"
MESSAGE = b"From: app@box.test\r\nTo: you@dest.test\r\nSubject: many\r\n\r\nhello\r\n"


@pytest.fixture
async def relay(sqlite_url: str, outbox: Path, tmp_path: Path) -> AsyncIterator[Relay]:
    smtp = {
        "users": [{"username": USER, "password": PASSWORD}],
        "allowed_networks": ["10.0.0.0/8"],
        "auth_require_tls": False,
    }
    running = await start_relay(
        config(sqlite_url, [sandbox_workspace("box", ["box.test"], outbox)], smtp=smtp), tmp_path
    )
    try:
        yield running
    finally:
        await running.stop()


async def in_session(relay: Relay, steps: Callable[[smtplib.SMTP], Any]) -> Any:
    def run() -> Any:
        client = smtplib.SMTP(*relay.smtp_address, local_hostname="client.test", timeout=10)
        try:
            client.ehlo()
            return steps(client)
        finally:
            client.close()

    return await asyncio.to_thread(run)


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def login(client: smtplib.SMTP, user: str, password: str) -> tuple[int, bytes]:
    """AUTH LOGIN, step by step: one AUTH command, however many lines."""
    code, reply = client.docmd("AUTH", "LOGIN")
    assert code == 334, (code, reply)
    code, reply = client.docmd(base64.b64encode(user.encode()).decode())
    assert code == 334, (code, reply)
    return client.docmd(base64.b64encode(password.encode()).decode())


def attempt(client: smtplib.SMTP, mechanism: str, user: str, password: str) -> tuple[int, bytes]:
    if mechanism == "PLAIN":
        return client.docmd("AUTH", f"PLAIN {plain(user, password)}")
    return login(client, user, password)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_too_many_auth_attempts_get_421_and_the_connection_is_closed(relay: Relay, mechanism: str) -> None:
    def steps(client: smtplib.SMTP) -> tuple[list[tuple[int, bytes]], tuple[int, bytes], bool]:
        failures = [attempt(client, mechanism, USER, f"{WRONG}{i}") for i in range(AUTH_ATTEMPTS_PER_SESSION)]
        # Even the right password is refused now: the session has used up its attempts.
        over = client.docmd("AUTH", f"PLAIN {plain(USER, PASSWORD)}")
        try:
            client.noop()
        except smtplib.SMTPServerDisconnected:
            closed = True
        else:
            closed = False
        return failures, over, closed

    with structlog.testing.capture_logs() as logs:
        failures, (code, reply), closed = await in_session(relay, steps)

    assert [c for c, _ in failures] == [535] * AUTH_ATTEMPTS_PER_SESSION
    assert code == 421, reply
    assert reply.startswith(b"4.7.0"), reply
    assert closed
    failed = [e for e in logs if e["event"] == "smtp.auth_failed"]
    assert len(failed) == AUTH_ATTEMPTS_PER_SESSION
    assert all(e["log_level"] == "warning" for e in failed)
    assert {(e["peer"], e["username"], e["mechanism"]) for e in failed} == {("127.0.0.1", USER, mechanism)}
    assert any(e["event"] == "smtp.command_limit" and e["command"] == "AUTH" for e in logs)
    assert WRONG not in repr(logs)  # never the password
    assert PASSWORD not in repr(logs)


async def test_a_few_mistakes_still_let_the_right_password_in(relay: Relay) -> None:
    def steps(client: smtplib.SMTP) -> tuple[list[int], tuple[int, bytes]]:
        mistakes = [attempt(client, "PLAIN", USER, "typo")[0] for _ in range(AUTH_ATTEMPTS_PER_SESSION - 1)]
        return mistakes, attempt(client, "PLAIN", USER, PASSWORD)

    mistakes, (code, reply) = await in_session(relay, steps)
    assert mistakes == [535] * (AUTH_ATTEMPTS_PER_SESSION - 1)
    assert code == 235, reply


async def test_a_new_connection_starts_with_a_fresh_allowance(relay: Relay) -> None:
    def exhaust(client: smtplib.SMTP) -> None:
        for _ in range(AUTH_ATTEMPTS_PER_SESSION):
            attempt(client, "PLAIN", USER, "wrong")

    await in_session(relay, exhaust)
    code, reply = await in_session(relay, lambda client: attempt(client, "PLAIN", USER, PASSWORD))
    assert code == 235, reply


async def test_unknown_users_are_logged_without_control_characters(relay: Relay) -> None:
    with structlog.testing.capture_logs() as logs:
        code, _ = await in_session(relay, lambda client: attempt(client, "PLAIN", "mallory\nforged=1", "x"))
    assert code == 535
    assert [e["username"] for e in logs if e["event"] == "smtp.auth_failed"] == ["mallory\\nforged=1"]


async def test_one_session_may_send_many_messages(relay: Relay) -> None:
    # aiosmtpd's default budget for commands without their own limit is 20 per session; a sender that keeps
    # its connection open for a batch must not run into it.
    count = 30

    def steps(client: smtplib.SMTP) -> list[int]:
        codes = [client.login(USER, PASSWORD)[0]]
        for _ in range(count):
            codes.append(client.noop()[0])
            codes.append(client.rset()[0])
            codes.append(client.mail("app@box.test")[0])
            codes.append(client.rcpt("you@dest.test")[0])
            codes.append(client.data(MESSAGE)[0])
        return codes

    codes = await in_session(relay, steps)
    assert codes == [235] + [250] * (5 * count)

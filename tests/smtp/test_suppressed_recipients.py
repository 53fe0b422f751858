"""RCPT TO a suppressed recipient: `550 5.7.1` with the reason and what to do, the other recipients of the same
message accepted and delivered. The check is in memory: a listing written by another Relay process on the same
database is followed within about a second, and so is its removal."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from relay.runtime import Relay
from relay.store import Messages, Suppression
from tests.support.inbound import rcpt
from tests.support.mail import submit
from tests.support.net import async_wait_for
from tests.support.pools import wait_for_statuses
from tests.support.relay import config, sandbox_workspace, start_relay

SENDER = "app@joinmednet.org"


def listing(email: str, reason: str = "hard_bounce") -> Suppression:
    at = datetime(2026, 12, 5, 9, 30, tzinfo=UTC)
    return Suppression(email, reason, "test", "mailgun:mg", None, at)


async def _relay(url: str, tmp_path: Path, name: str) -> Relay:
    data = config(url, [sandbox_workspace("ws-a", ["joinmednet.org"], tmp_path / "outbox")], instance_name=name)
    return await start_relay(data, tmp_path)


async def test_a_suppressed_recipient_is_refused_and_the_others_get_the_message(
    sqlite_url: str, tmp_path: Path
) -> None:
    relay = await _relay(sqlite_url, tmp_path, "a")
    try:
        assert await relay.suppressions.add(listing("gone@example.org"))

        replies = await rcpt(relay, SENDER, ["ann@example.org", "GONE@example.org"])

        assert replies == [
            (250, "2.1.5 Ok"),
            (
                550,
                "5.7.1 <GONE@example.org>: recipient suppressed (hard_bounce on 2026-12-05; remove it from the "
                "suppression list to send again)",
            ),
        ]
        with pytest.raises(AssertionError, match="recipient suppressed"):  # `submit` asserts a 250 per RCPT
            await submit(relay.smtp_address, SENDER, ["gone@example.org"], b"Subject: x\r\n\r\nx\r\n")
        message_id = await submit(relay.smtp_address, SENDER, ["ann@example.org"], b"Subject: x\r\n\r\nx\r\n")
        await wait_for_statuses(relay, {"sent": 1})
        view = await Messages(relay.db).get(message_id)
        assert view is not None and view.rcpt_to == ("ann@example.org",)
    finally:
        await relay.stop()


async def test_another_processs_listing_and_removal_are_followed(sqlite_url: str, tmp_path: Path) -> None:
    first, second = await _relay(sqlite_url, tmp_path, "a"), await _relay(sqlite_url, tmp_path, "b")
    try:
        assert await first.suppressions.add(listing("cat@example.org", "complaint"))

        async def refused_by_second() -> bool:
            return (await rcpt(second, SENDER, ["cat@example.org"]))[0][0] == 550

        await async_wait_for(refused_by_second, timeout=5, interval=0.2, what="the second process to refuse cat")

        assert await first.suppressions.remove("cat@example.org")

        async def accepted_by_second() -> bool:
            return (await rcpt(second, SENDER, ["cat@example.org"]))[0][0] == 250

        await async_wait_for(accepted_by_second, timeout=5, interval=0.2, what="the second process to accept cat")
    finally:
        await first.stop()
        await second.stop()

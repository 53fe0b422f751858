"""What each class of upstream answer does to a message, through a real upstream SMTP server."""

from __future__ import annotations

import asyncio
import itertools
import smtplib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from relay.runtime import Relay
from relay.store import Messages
from tests.support.net import async_wait_for
from tests.support.relay import config, smtp_workspace, start_relay
from tests.support.sink import SmtpSink

MESSAGE = b"From: app@joinmednet.org\r\nTo: a@example.org\r\nSubject: outcome\r\n\r\nbody\r\n"


@pytest.fixture
async def relay(database_url: str, tmp_path: Path, sink: SmtpSink) -> AsyncIterator[Relay]:
    workspace = smtp_workspace("upstream", ["joinmednet.org"], sink.port)
    data = config(
        database_url,
        [workspace],
        delivery={
            "retry": {"base_seconds": 0.3, "max_attempts": 4, "quota_retry_seconds": 0.2, "auth_recheck_seconds": 60}
        },
    )
    started = await start_relay(data, tmp_path)
    yield started
    await started.stop()


async def submit(relay: Relay, recipients: list[str], raw: bytes = MESSAGE) -> str:
    host, port = relay.smtp_address

    def send() -> str:
        with smtplib.SMTP(host, port) as client:
            client.ehlo()
            client.mail("app@joinmednet.org")
            for recipient in recipients:
                client.rcpt(recipient)
            code, reply = client.data(raw)
        assert code == 250, reply
        return reply.decode().rsplit(" ", 1)[1]

    return await asyncio.to_thread(send)


async def settled(relay: Relay, message_id: str, status: str, timeout: float = 15) -> Any:
    messages = Messages(relay.db)

    async def reached() -> Any:
        view = await messages.get(message_id)
        return view if view is not None and view.status == status else None

    return await async_wait_for(reached, timeout=timeout, what=f"message {message_id} to be {status}")


async def test_temporary_failures_back_off_then_deliver(relay: Relay, sink: SmtpSink) -> None:
    sink.behaviour.data_replies = ["451 4.3.0 Try again later", "451 4.3.0 Try again later"]
    message_id = await submit(relay, ["a@example.org"])
    view = await settled(relay, message_id, "sent")
    attempts = await Messages(relay.db).attempts(message_id)
    assert [(a.attempt_number, a.outcome, a.provider_status) for a in attempts] == [
        (1, "retry", "451"),
        (2, "retry", "451"),
        (3, "sent", "250"),
    ]
    gaps = [(b.started_at - a.finished_at).total_seconds() for a, b in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.15 - 0.01  # first retry: at least half of base_seconds (0.3)
    assert gaps[1] >= 0.30 - 0.01  # second retry: at least half of twice the base
    assert view.attempts == 3
    assert len(sink.received()) == 1
    assert attempts[-1].provider_message_id == "SINK1"


async def test_unknown_recipient_fails_without_retry(relay: Relay, sink: SmtpSink) -> None:
    sink.behaviour.rcpt_replies["nobody@example.org"] = "550 5.1.1 No such user"
    message_id = await submit(relay, ["nobody@example.org"])
    view = await settled(relay, message_id, "failed")
    assert view.last_error is not None and "5.1.1" in view.last_error
    assert [a.outcome for a in await Messages(relay.db).attempts(message_id)] == ["permanent"]
    assert view.next_attempt_at is None
    assert sink.received() == []


async def test_partial_refusal_delivers_the_rest_and_retries_only_the_deferred(relay: Relay, sink: SmtpSink) -> None:
    sink.behaviour.rcpt_replies["later@example.org"] = "450 4.2.0 Mailbox busy"
    sink.behaviour.rcpt_replies["gone@example.org"] = "550 5.1.1 No such user"
    message_id = await submit(relay, ["now@example.org", "later@example.org", "gone@example.org"])
    await async_wait_for(lambda: len(sink.received()) == 1, what="first delivery")
    assert sink.received()[0].rcpt_tos == ["now@example.org"]
    del sink.behaviour.rcpt_replies["later@example.org"]
    await settled(relay, message_id, "sent")
    assert [r.rcpt_tos for r in sink.received()] == [["now@example.org"], ["later@example.org"]]
    # The permanent refusal of one recipient is not lost: it stays on the message and its first attempt.
    first = (await Messages(relay.db).attempts(message_id))[0]
    assert first.provider_response is not None
    assert "refused for good: gone@example.org: 550 5.1.1 No such user" in first.provider_response


async def test_a_recipient_refused_for_good_is_recorded_on_a_sent_message(relay: Relay, sink: SmtpSink) -> None:
    sink.behaviour.rcpt_replies["gone@example.org"] = "550 5.1.1 No such user"
    message_id = await submit(relay, ["now@example.org", "gone@example.org"])
    view = await settled(relay, message_id, "sent")
    assert view.last_error == "refused for good: gone@example.org: 550 5.1.1 No such user"


async def test_refused_credentials_break_the_workspace_and_keep_the_message(database_url: str, tmp_path: Path) -> None:
    with SmtpSink(users={"relay": "right-password"}) as upstream:
        workspace = smtp_workspace(
            "gmail-relay", ["joinmednet.org"], upstream.port, username="relay", password="wrong-password"
        )
        data = config(database_url, [workspace], delivery={"retry": {"auth_recheck_seconds": 3600}})
        relay = await start_relay(data, tmp_path)
        try:
            first = await submit(relay, ["a@example.org"])
            view = await settled(relay, first, "deferred")
            assert view.last_error is not None and "535" in view.last_error

            # The shared state is written right after the attempt is recorded: poll for it.
            async def broken() -> bool:
                return (await relay.states.all())["gmail-relay"].state == "broken"

            await async_wait_for(broken, timeout=10, what="the workspace marked broken")
            state = (await relay.states.all())["gmail-relay"]
            assert "535" in (state.reason or "")
            # Later mail for the broken workspace waits for the re-check instead of hammering the upstream.
            second = await submit(relay, ["b@example.org"])
            later = await settled(relay, second, "deferred")
            assert later.last_error == f'workspace "gmail-relay" is auth_broken: {state.reason}'
            assert await Messages(relay.db).attempts(second) == []
            assert [a.outcome for a in await Messages(relay.db).attempts(first)] == ["auth"]
            assert upstream.received() == []
        finally:
            await relay.stop()


async def test_retries_end_in_failed_after_max_attempts(relay: Relay, sink: SmtpSink) -> None:
    sink.behaviour.data_replies = ["421 4.4.2 Timeout"] * 10
    message_id = await submit(relay, ["a@example.org"])
    view = await settled(relay, message_id, "failed", timeout=30)
    assert view.attempts == 4
    assert view.last_error is not None and view.last_error.startswith("gave up after 4 attempts: 421")


async def test_quota_deferrals_do_not_use_up_the_retries(relay: Relay, sink: SmtpSink) -> None:
    sink.behaviour.data_replies = ["454 Throttling failure: Maximum sending rate exceeded"] * 5 + [
        "451 4.3.0 Try again later"
    ] * 3
    message_id = await submit(relay, ["a@example.org"])
    view = await settled(relay, message_id, "sent", timeout=30)
    outcomes = [a.outcome for a in await Messages(relay.db).attempts(message_id)]
    assert outcomes == ["quota"] * 5 + ["retry"] * 3 + ["sent"]  # 3 temporary failures < max_attempts 4
    assert view.attempts == 9


async def test_bcc_and_private_headers_never_reach_the_upstream(relay: Relay, sink: SmtpSink) -> None:
    raw = (
        b"From: app@joinmednet.org\r\nTo: a@example.org\r\nBcc: secret@example.org\r\n"
        b'X-MC-Tags: invite\r\nX-MC-Metadata: {"invitation_id": "7"}\r\nSubject: s\r\n\r\nbody\r\n'
    )
    message_id = await submit(relay, ["a@example.org", "secret@example.org"], raw)
    view = await settled(relay, message_id, "sent")
    [received] = sink.received()
    assert received.rcpt_tos == ["a@example.org", "secret@example.org"]
    assert received.data == b"From: app@joinmednet.org\r\nTo: a@example.org\r\nSubject: s\r\n\r\nbody\r\n"
    assert view.metadata == {"tags": ["invite"], "metadata": {"invitation_id": "7"}}


async def test_a_provider_quota_signal_pauses_the_workspace(database_url: str, tmp_path: Path, sink: SmtpSink) -> None:
    """Issue 4 §6: the provider's quota answer is stricter than our own count: no mail until it says."""
    workspace = smtp_workspace("ses", ["joinmednet.org"], sink.port)
    data = config(database_url, [workspace], delivery={"retry": {"quota_retry_seconds": 600}})
    relay = await start_relay(data, tmp_path)
    try:
        sink.behaviour.data_replies = ["454 Throttling failure: Maximum sending rate exceeded"]
        first = await submit(relay, ["a@example.org"])
        throttled = await settled(relay, first, "deferred")

        # The shared state is written right after the attempt is recorded: poll for it.
        async def paused() -> bool:
            return (await relay.states.all())["ses"].state == "paused"

        await async_wait_for(paused, timeout=10, what="the workspace paused")
        state = (await relay.states.all())["ses"]
        assert state.recheck_at is not None
        assert round((state.recheck_at - state.changed_at).total_seconds()) == 600
        assert throttled.next_attempt_at == state.recheck_at
        second = await submit(relay, ["b@example.org"])
        waiting = await settled(relay, second, "deferred")
        assert waiting.last_error is not None
        assert waiting.last_error.startswith('workspace "ses" is throttled: 454 Throttling failure')
        assert await Messages(relay.db).attempts(second) == []
        assert sink.received() == []
    finally:
        await relay.stop()

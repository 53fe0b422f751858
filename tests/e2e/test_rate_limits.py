"""Rate limits end to end: reservations gate every send, a refusal defers the message to the moment
capacity returns (not an attempt), counts survive a restart, and a lost Redis stops sending until it is back."""

from __future__ import annotations

import asyncio
import smtplib
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from relay.clock import ManualClock
from relay.limits import Limit
from relay.runtime import Relay
from relay.store import Messages
from tests.support.net import async_wait_for
from tests.support.relay import config, sandbox_workspace, start_relay
from tests.support.services import require
from tests.support.tcp_proxy import TcpProxy

SENDER = "brian@joinmednet.org"


def workspace(outbox: Path, per_user_daily: int, workspace_id: str = "ws") -> dict[str, Any]:
    data = sandbox_workspace(workspace_id, ["joinmednet.org"], outbox)
    data["rate_limits"] = {"per_user_daily": per_user_daily}
    return data


async def submit(relay: Relay, count: int, first: int = 0) -> list[str]:
    host, port = relay.smtp_address

    def send() -> list[str]:
        ids = []
        with smtplib.SMTP(host, port) as client:
            client.ehlo()
            for n in range(first, first + count):
                client.mail(SENDER)
                client.rcpt("someone@example.org")
                code, reply = client.data(f"Subject: m{n}\r\n\r\nbody\r\n".encode())
                assert code == 250, reply
                ids.append(reply.decode().rsplit(" ", 1)[1])
        return ids

    return await asyncio.to_thread(send)


async def statuses(relay: Relay) -> dict[str, int]:
    return await relay.queue.status_counts()


async def test_over_the_limit_waits_for_capacity_and_goes_when_it_returns(
    database_url: str, tmp_path: Path, outbox: Path
) -> None:
    clock = ManualClock()
    relay = await start_relay(config(database_url, [workspace(outbox, 20)]), tmp_path, clock=clock)
    try:
        ids = await submit(relay, 50)

        async def settled() -> bool:
            return await statuses(relay) == {"sent": 20, "deferred": 30}

        await async_wait_for(settled, timeout=30, what="20 sent and 30 deferred")
        # Rolling 24 h in 5-minute buckets: the 20 sends leave the window when their bucket does.
        returns = clock.now() + timedelta(seconds=86_400 + 300)
        messages = Messages(relay.db)
        views = [await messages.get(i) for i in ids]
        deferred = [v for v in views if v is not None and v.status == "deferred"]
        assert {v.next_attempt_at for v in deferred} == {returns}
        assert all(v.attempts == 0 for v in deferred)  # waiting for capacity is not an attempt
        assert all(v.last_error and "limit user:ws:brian@joinmednet.org reached" in v.last_error for v in deferred)
        assert len(list(outbox.glob("*.eml"))) == 20

        for expected in (40, 50):
            clock.advance(86_400 + 300)
            assert relay.worker is not None
            relay.worker.notify()

            # Wait for the outcomes to be recorded, not only for the files: the sandbox writes a file before its
            # outcome commits, and a send still unrecorded at the next day-long jump would see its lease expire and
            # be claimed and sent again, taking capacity from the messages still waiting.
            async def recorded(n: int = expected) -> bool:
                return await statuses(relay) == ({"sent": n, "deferred": 50 - n} if n < 50 else {"sent": 50})

            await async_wait_for(recorded, timeout=30, what=f"{expected} sent")
            assert len(list(outbox.glob("*.eml"))) == expected
    finally:
        await relay.stop()


async def test_a_restart_does_not_reset_a_limit(sqlite_url: str, tmp_path: Path, outbox: Path) -> None:
    clock = ManualClock()
    data = config(sqlite_url, [workspace(outbox, 20)])
    relay = await start_relay(data, tmp_path, clock=clock)
    try:
        await submit(relay, 20)

        async def twenty() -> bool:
            return await statuses(relay) == {"sent": 20}

        await async_wait_for(twenty, timeout=30, what="20 sent")
    finally:
        await relay.stop()
    clock.advance(3600)
    restarted = await start_relay(data, tmp_path, clock=clock)
    try:
        [late] = await submit(restarted, 1, first=20)
        view = await async_wait_for(
            lambda: _status(restarted, late, "deferred"), timeout=30, what="the 21st message to be deferred"
        )
        assert view.attempts == 0
        assert len(list(outbox.glob("*.eml"))) == 20
    finally:
        await restarted.stop()


async def _status(relay: Relay, message_id: str, status: str) -> Any:
    view = await Messages(relay.db).get(message_id)
    return view if view is not None and view.status == status else None


async def test_without_redis_nothing_is_sent_and_nothing_is_lost(sqlite_url: str, tmp_path: Path, outbox: Path) -> None:
    require("Redis", "127.0.0.1", 6379)
    proxy = TcpProxy("127.0.0.1", 6379).start()
    workspace_id = f"ws-{uuid.uuid4().hex[:8]}"  # its own counters in the shared Redis
    data = config(sqlite_url, [workspace(outbox, 5, workspace_id)], redis_url=f"redis://127.0.0.1:{proxy.port}/0")
    relay = await start_relay(data, tmp_path)
    try:
        await submit(relay, 3)
        await async_wait_for(lambda: len(list(outbox.glob("*.eml"))) == 3, timeout=30, what="3 delivered")
        proxy.cut()
        waiting = await submit(relay, 4, first=3)  # accepted: the queue is in the database, not in Redis

        async def held() -> bool:
            views = [await Messages(relay.db).get(i) for i in waiting]
            return all(v is not None and v.last_error and "rate limits unavailable" in v.last_error for v in views)

        await async_wait_for(held, timeout=30, what="the gate to close")
        assert len(list(outbox.glob("*.eml"))) == 3
        reason = await relay.readiness()
        assert reason is not None and reason.startswith("rate limits unavailable (Redis)")

        proxy.start()
        relay.worker.notify()  # type: ignore[union-attr]

        async def resumed() -> bool:
            return await statuses(relay) == {"sent": 5, "deferred": 2}

        await async_wait_for(resumed, timeout=30, what="sending to resume up to the limit")
        assert len(list(outbox.glob("*.eml"))) == 5  # never over the limit of 5
        [usage] = await relay.limits.usage([Limit(f"user:{workspace_id}:{SENDER}", "rolling", 5)])
        assert usage.used == 5
        assert await relay.readiness() is None
    finally:
        await relay.stop()
        proxy.cut()


async def test_a_send_that_can_never_fit_fails_instead_of_waiting_forever(
    sqlite_url: str, tmp_path: Path, outbox: Path
) -> None:
    relay = await start_relay(config(sqlite_url, [workspace(outbox, 0)]), tmp_path)  # this sender may not send
    try:
        [message_id] = await submit(relay, 1)
        view = await async_wait_for(lambda: _status(relay, message_id, "failed"), timeout=30, what="failed")
        assert view.last_error == "limit user:ws:brian@joinmednet.org can never admit this send"
        assert view.attempts == 0
        assert list(outbox.glob("*.eml")) == []
    finally:
        await relay.stop()

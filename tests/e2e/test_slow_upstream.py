"""A slow upstream with few connections: claimed mail waits for a connection instead of timing out
half-sent, so nothing is delivered twice and the connection cap holds."""

from __future__ import annotations

import asyncio
import smtplib
from collections import Counter
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tests.support.net import async_wait_for
from tests.support.relay import config, smtp_workspace, start_relay
from tests.support.sink import SinkHandler, SmtpSink


class SlowHandler(SinkHandler):
    """Takes `delay` seconds to answer each DATA and remembers which connection carried it."""

    delay = 0.4

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.sink.peers.append(session.peer)  # type: ignore[attr-defined]
        await asyncio.sleep(self.delay)
        return await super().handle_DATA(server, session, envelope)


async def test_waiting_for_a_connection_does_not_eat_the_send_timeout(sqlite_url: str, tmp_path: Path) -> None:
    sink = SmtpSink()
    sink.peers = []  # type: ignore[attr-defined]
    sink._controller.handler = SlowHandler(sink)
    with sink:
        workspace = smtp_workspace("slow", ["joinmednet.org"], sink.port, max_connections=1)
        # 12 messages of 0.4 s each on one connection take ~5 s, more than the 2 s send timeout: before the fix
        # the queue wait counted against the send timeout, sends were cut mid-DATA and sent again.
        data = config(sqlite_url, [workspace], delivery={"lease_seconds": 30, "send_timeout_seconds": 2})
        relay = await start_relay(data, tmp_path)
        try:
            host, port = relay.smtp_address

            def submit() -> None:
                with smtplib.SMTP(host, port) as client:
                    for n in range(12):
                        client.sendmail("app@joinmednet.org", ["a@example.org"], f"Subject: m{n}\r\n\r\nx\r\n")

            await asyncio.to_thread(submit)

            async def all_sent() -> bool:
                return await relay.queue.status_counts() == {"sent": 12}

            await async_wait_for(all_sent, timeout=30, what="12 messages sent")
            subjects = Counter(m.data.split(b"\r\n", 1)[0] for m in sink.received())
            assert len(subjects) == 12
            assert max(subjects.values()) == 1, subjects
            assert len(set(sink.peers)) == 1  # type: ignore[attr-defined]
            async with relay.db.begin() as connection:
                outcomes = (await connection.execute(sa.text("SELECT outcome FROM delivery_attempts"))).scalars()
                assert list(outcomes) == ["sent"] * 12  # no attempt was cut short by the timeout
        finally:
            await relay.stop()

"""SIGTERM (every deploy) while a send is in flight: the send finishes and is recorded before the process
exits, so the next process does not send it again."""

from __future__ import annotations

import asyncio
import signal
import smtplib
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from relay.store import Database, Messages
from tests.support.net import wait_for
from tests.support.relay import RelayProcess, config, smtp_workspace
from tests.support.sink import SmtpSink

pytestmark = pytest.mark.slow


def test_sigterm_lets_the_send_in_flight_finish(sqlite_url: str, tmp_path: Path, sink: SmtpSink) -> None:
    hold = threading.Event()
    sink.behaviour.hold_data = hold
    data = config(
        sqlite_url,
        [smtp_workspace("up", ["joinmednet.org"], sink.port)],
        delivery={"lease_seconds": 30, "send_timeout_seconds": 10},
    )
    data["http"]["port"] = 0
    relay = RelayProcess(data, tmp_path).start()
    try:
        with smtplib.SMTP("127.0.0.1", relay.smtp_port) as client:
            client.sendmail("app@joinmednet.org", ["a@example.org"], b"Subject: deploy\r\n\r\nbody\r\n")
        wait_for(lambda: sink.mail_count == 1, what="the send to start")
        assert relay.process is not None
        relay.process.send_signal(signal.SIGTERM)
        hold.set()  # the upstream answers only after the stop began
        assert relay.process.wait(timeout=20) == 0, relay.log()
    finally:
        relay.kill()

    async def read() -> tuple[str, list[str]]:
        db = Database(sqlite_url)
        messages = Messages(db)
        async with db.begin() as connection:
            [message_id] = (await connection.execute(sa.text("SELECT id FROM messages"))).scalars().all()
        view = await messages.get(message_id)
        attempts = [a.outcome for a in await messages.attempts(message_id)]
        await db.dispose()
        assert view is not None
        return view.status, attempts

    assert asyncio.run(read()) == ("sent", ["sent"])
    assert len(sink.received()) == 1

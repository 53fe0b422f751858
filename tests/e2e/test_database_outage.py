"""The database vanishes between a send and its record: the outcome is written when it comes back, and
the message is not sent a second time."""

from __future__ import annotations

import asyncio
import smtplib
import threading
from pathlib import Path

from relay.store import Messages
from tests.support.net import async_wait_for
from tests.support.relay import config, smtp_workspace, start_relay
from tests.support.services import POSTGRES_HOST, POSTGRES_PORT, POSTGRES_USER
from tests.support.sink import SmtpSink
from tests.support.tcp_proxy import TcpProxy


def submit(host: str, port: int) -> str:
    with smtplib.SMTP(host, port) as client:
        client.ehlo()
        client.mail("app@joinmednet.org")
        client.rcpt("a@example.org")
        code, reply = client.data(b"Subject: outage\r\n\r\nbody\r\n")
    assert code == 250, reply
    return reply.decode().rsplit(" ", 1)[1]


async def test_outcome_is_recorded_after_a_database_outage_without_a_second_send(
    postgres_url: str, tmp_path: Path, sink: SmtpSink
) -> None:
    proxy = TcpProxy(POSTGRES_HOST, POSTGRES_PORT).start()
    url = f"postgresql://{POSTGRES_USER}@127.0.0.1:{proxy.port}/{postgres_url.rsplit('/', 1)[1]}"
    hold = threading.Event()
    sink.behaviour.hold_data = hold
    data = config(
        url,
        [smtp_workspace("up", ["joinmednet.org"], sink.port)],
        delivery={"lease_seconds": 30, "send_timeout_seconds": 10},
    )
    relay = await start_relay(data, tmp_path)
    try:
        message_id = await asyncio.to_thread(submit, *relay.smtp_address)
        await async_wait_for(lambda: sink.mail_count == 1, what="the send to start")
        proxy.cut()  # the database goes away while the upstream is still taking DATA
        hold.set()
        await async_wait_for(lambda: len(sink.received()) == 1, what="the upstream to accept the message")
        proxy.start()  # and comes back on the same address

        messages = Messages(relay.db)

        async def recorded() -> bool:
            view = await messages.get(message_id)
            return view is not None and view.status == "sent"

        # Well within the 30 s lease: without retrying the record, the message would sit in `sending`
        # until the lease ran out and then go to the upstream a second time.
        await async_wait_for(recorded, timeout=12, what="the outcome to be recorded")
        assert [a.outcome for a in await messages.attempts(message_id)] == ["sent"]
        assert len(sink.received()) == 1
        assert sink.mail_count == 1
    finally:
        await relay.stop()
        proxy.cut()

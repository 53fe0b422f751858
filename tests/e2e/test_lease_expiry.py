"""A worker killed in mid-send holds a lease; once it expires another process delivers the message, once.

Process A claims the message and sends it to an upstream that holds its answer to DATA, so A is stuck in
mid-send with the message leased. A is killed (SIGKILL: nothing is cleaned up, the row stays `sending`).
Process B - another instance, no `instance_name`, so it cannot release A's lease at start - is started
while A's lease still runs: B must leave the message alone until the lease expires (early, it would be a
second concurrent delivery), and must deliver it once after that (else a crash strands mail forever).
"""

from __future__ import annotations

import asyncio
import smtplib
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from relay.store import AttemptView, Database, Messages, MessageView
from tests.support.net import wait_for
from tests.support.relay import RelayProcess, config, smtp_workspace
from tests.support.sink import SmtpSink

pytestmark = pytest.mark.slow

# A's send must not time out before the test kills it, and B must be up well before the lease expires.
LEASE_SECONDS = 6.0
SEND_TIMEOUT_SECONDS = 4.0
MESSAGE_ID = "<lease-expiry@lease.test>"


def read_message(url: str, queue_id: str) -> tuple[MessageView | None, list[AttemptView]]:
    async def read() -> tuple[MessageView | None, list[AttemptView]]:
        db = Database(url, pool_size=1)
        try:
            messages = Messages(db)
            return await messages.get(queue_id), await messages.attempts(queue_id)
        finally:
            await db.dispose()

    return asyncio.run(read())


def submit(port: int) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.lease.test")
        assert client.mail("app@lease.test")[0] == 250
        assert client.rcpt("someone@dest.test")[0] == 250
        code, reply = client.data(
            f"From: app@lease.test\r\nTo: someone@dest.test\r\nSubject: lease\r\nMessage-ID: {MESSAGE_ID}\r\n\r\nhi\r\n"
        )
    assert code == 250, reply
    return reply.decode().rsplit(" ", 1)[-1]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_lease_of_a_killed_worker_expires_then_the_message_is_delivered_once(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, sink: SmtpSink
) -> None:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "postgres_url")
    delivery = {"lease_seconds": LEASE_SECONDS, "send_timeout_seconds": SEND_TIMEOUT_SECONDS}

    def relay(name: str) -> RelayProcess:
        workspaces = [smtp_workspace("upstream", ["lease.test"], sink.port)]
        data = config(url, workspaces, delivery=delivery, http={"port": 0})  # the HTTP API is unused here
        assert "instance_name" not in data  # B must not be able to release A's lease by name
        return RelayProcess(data, tmp_path, name=name)

    a, b = relay("relay-a"), relay("relay-b")
    held = threading.Event()  # never set: A's DATA stays unanswered until A dies
    sink.behaviour.hold_data = held
    try:
        a.start()
        queue_id = submit(a.smtp_port)
        wait_for(lambda: sink.mail_count >= 1, what="A to start sending to the upstream")
        a.kill()
        leased, attempts = read_message(url, queue_id)
        assert leased is not None
        assert leased.status == "sending"
        assert attempts == [], "A recorded an attempt before it was killed (send timeout too short?)"
        assert leased.next_attempt_at is not None
        lease_expires = leased.next_attempt_at  # while sending, next_attempt_at is the lease's expiry
        # Release the hold for new sessions only: A's dead session (which sent the whole message before
        # DATA's answer) keeps waiting on `held` until the sink notices the EOF, so it can never count.
        sink.behaviour.hold_data = None

        b.start()
        b_ready = datetime.now(UTC)
        margin = (lease_expires - b_ready).total_seconds()
        assert margin > 1.0, f"B started only {margin:.2f} s before A's lease expired: the test proves nothing"
        still_leased, _ = read_message(url, queue_id)
        assert still_leased is not None
        assert still_leased.status == "sending"
        assert still_leased.next_attempt_at == lease_expires, "B took over the message before A's lease expired"

        def sent() -> bool:
            view, _ = read_message(url, queue_id)
            return view is not None and view.status == "sent"

        wait_for(sent, timeout=LEASE_SECONDS + 20, interval=0.1, what="B to deliver the message")
        b.stop()
        view, attempts = read_message(url, queue_id)
    except BaseException:
        print(f"--- relay-a ---\n{a.log()[-3000:]}\n--- relay-b ---\n{b.log()[-3000:]}")
        raise
    finally:
        a.kill()
        b.stop()

    received = [r for r in sink.received() if r.message_id == MESSAGE_ID]
    assert view is not None
    print(
        f"\n[{backend}] lease expired at {lease_expires:%H:%M:%S.%f}, B ready {margin:.2f} s earlier; "
        f"attempts={[(x.attempt_number, x.outcome, f'{x.started_at:%H:%M:%S.%f}') for x in attempts]} "
        f"received={len(received)} sink MAIL commands={sink.mail_count}"
    )
    assert len(received) == 1, f"the sink received the message {len(received)} times"
    assert len(attempts) == 1, attempts  # A died before recording its attempt; B's is the only one
    assert attempts[0].outcome == "sent"
    assert attempts[0].started_at >= lease_expires, (
        f"B started sending at {attempts[0].started_at}, before A's lease expired at {lease_expires}"
    )
    assert view.attempts == 1
    assert view.next_attempt_at is None
    assert sink.mail_count == 2  # A's MAIL and B's: B sent once, and nothing else was tried in between

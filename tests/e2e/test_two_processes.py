"""Two `relay serve` processes on one database share the queue: every message is delivered once, by one of them.

Both processes accept mail (the clients alternate between their SMTP ports) and both deliver through the
`smtp` provider to one upstream sink, so each claims messages the other accepted. Claims must be exclusive
(SKIP LOCKED): a message claimed by both would reach the sink twice. The test sets a unique Message-ID
on every message and counts them at the sink: no duplicate, none missing.
"""

from __future__ import annotations

import asyncio
import collections
import json
import queue
import re
import smtplib
import threading
import time
from pathlib import Path

import pytest

from relay.clock import SystemClock
from relay.store import Database, MessageQueue
from tests.support.net import wait_for
from tests.support.relay import RelayProcess, config, smtp_workspace
from tests.support.services import fresh_database
from tests.support.sink import SmtpSink

pytestmark = pytest.mark.slow

TOTAL = 2_000
SESSIONS = 10
QUEUED_AS = re.compile(rb"queued as (\S+)")


def status_counts(url: str) -> dict[str, int]:
    async def read() -> dict[str, int]:
        db = Database(url, pool_size=1)
        try:
            return await MessageQueue(db, SystemClock()).status_counts()
        finally:
            await db.dispose()

    return asyncio.run(read())


def logged_errors(log: str) -> list[str]:
    """Error-level events (a failed commit, claim or outcome write: e.g. a deadlock between the processes)."""
    errors = []
    for line in log.splitlines():
        if line.startswith("{") and '"level": "error"' in line:
            event = json.loads(line)
            errors.append(f"{event['event']}: {event.get('error', '')}"[:300])
    return errors


def delivered_ids(log: str) -> set[str]:
    """Queue ids a process delivered (its `delivery.attempt` log lines with result `sent`)."""
    ids = set()
    for line in log.splitlines():
        if line.startswith("{") and '"delivery.attempt"' in line:
            event = json.loads(line)
            if event["result"] == "sent":
                ids.add(event["message_id"])
    return ids


def message(number: int) -> bytes:
    return (
        f"From: app@two.test\r\nTo: someone@dest.test\r\nSubject: two processes {number}\r\n"
        f"Message-ID: <two-{number}@two.test>\r\n\r\nmessage number {number}\r\n"
    ).encode()


def client_session(
    ports: list[int],
    work: queue.Queue[int],
    accepted: dict[int, tuple[int, str]],
    errors: list[str],
    lock: threading.Lock,
) -> None:
    """Submit numbers from `work`, message n to ports[n % 2]: both processes get half of the mail."""
    clients: dict[int, smtplib.SMTP] = {}
    try:
        while True:
            try:
                number = work.get_nowait()
            except queue.Empty:
                return
            port = ports[number % len(ports)]
            if port not in clients:
                clients[port] = smtplib.SMTP("127.0.0.1", port, timeout=30)
                clients[port].ehlo("client.two.test")
            client = clients[port]
            assert client.mail("app@two.test")[0] == 250
            assert client.rcpt("someone@dest.test")[0] == 250
            code, reply = client.data(message(number))
            match = QUEUED_AS.search(reply)
            assert code == 250, f"message {number} refused by port {port}: {code} {reply!r}"
            assert match, f"250 without a queue id: {reply!r}"
            with lock:
                accepted[number] = (port, match.group(1).decode())
    except BaseException as exc:
        with lock:
            errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        for client in clients.values():
            client.close()


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_two_processes_deliver_each_message_exactly_once(backend: str, tmp_path: Path, sink: SmtpSink) -> None:
    with fresh_database(backend, tmp_path) as url:
        relays = [
            RelayProcess(
                config(
                    url,
                    [smtp_workspace("upstream", ["two.test"], sink.port, max_connections=8)],
                    http={"port": 0},  # unused here; 0 cannot clash with another process's port
                    instance_name=f"relay-{name}",
                    log_format="json",
                ),
                tmp_path,
                name=f"relay-{name}",
            )
            for name in ("a", "b")
        ]
        accepted: dict[int, tuple[int, str]] = {}
        errors: list[str] = []
        lock = threading.Lock()
        work: queue.Queue[int] = queue.Queue()
        for number in range(TOTAL):
            work.put(number)
        ports = [relay.smtp_port for relay in relays]
        threads = [
            threading.Thread(target=client_session, args=(ports, work, accepted, errors, lock), daemon=True)
            for _ in range(SESSIONS)
        ]
        started = time.monotonic()
        try:
            for relay in relays:
                relay.start()
            for thread in threads:
                thread.start()
            wait_for(lambda: not any(t.is_alive() for t in threads), timeout=120, what="the clients to finish")
            submitted = time.monotonic()
            assert not errors, errors[:5]
            assert len(accepted) == TOTAL
            try:  # a message is recorded as sent only after the sink answered 250 to its DATA
                wait_for(lambda: status_counts(url) == {"sent": TOTAL}, timeout=60, interval=0.2)
            except AssertionError:
                raise AssertionError(f"not all {TOTAL} messages were delivered: {status_counts(url)}") from None
            done = time.monotonic()
            for relay in relays:
                assert relay.stop() == 0, relay.log()[-3000:]
        except BaseException:
            for relay in relays:
                print(f"--- {relay.name} ---\n{relay.log()[-3000:]}")
            raise
        finally:
            for relay in relays:
                relay.stop()

    # Both processes are stopped: nothing more can reach the sink, so the count below is final.
    received = sink.received()
    delivered_by = {relay.smtp_port: delivered_ids(relay.log()) for relay in relays}
    # Messages one process accepted and the other delivered: the two really shared one queue.
    crossed = sum(1 for port, queue_id in accepted.values() if queue_id not in delivered_by[port])
    counts = collections.Counter(r.message_id for r in received)
    duplicates = {mid: n for mid, n in counts.items() if n > 1}
    expected = {f"<two-{number}@two.test>" for number in range(TOTAL)}
    missing = expected - set(counts)
    by_port = collections.Counter(port for port, _ in accepted.values())
    print(
        f"\n[{backend}] accepted={len(accepted)} (per process {sorted(by_port.values())}) "
        f"delivered per process {[len(ids) for ids in delivered_by.values()]} "
        f"delivered by the other process={crossed}\n  received={len(received)} distinct={len(counts)} "
        f"duplicates={len(duplicates)} missing={len(missing)} "
        f"submit={submitted - started:.1f}s drain={done - submitted:.1f}s"
    )
    for relay in relays:
        assert not logged_errors(relay.log()), f"{relay.name}: {logged_errors(relay.log())[:5]}"
    assert not duplicates, f"{len(duplicates)} messages delivered more than once, e.g. {list(duplicates.items())[:5]}"
    assert not missing, f"{len(missing)} messages never delivered, e.g. {sorted(missing)[:5]}"
    assert set(counts) == expected
    # Both processes really competed for the same queue (else exclusivity was never put to the test).
    assert all(len(ids) >= TOTAL // 10 for ids in delivered_by.values())
    assert crossed > 0

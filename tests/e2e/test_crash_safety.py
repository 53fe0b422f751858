"""Invariant 1, "250 means durable": `kill -9` of a busy `relay serve` loses no message it answered 250 for.

Ten SMTP client sessions (threads using smtplib) submit 2,000 small messages while the Relay process is
killed with SIGKILL at seeded-random moments and restarted each time. A client whose connection breaks or
that gets a 4xx tries that message again later; it records a message as accepted only when it got
`250 ... queued as <id>`. After the last restart every accepted id must show up in the sandbox outbox as
`<id>.eml`, holding the message that was sent under that id.

The restarted process keeps its `instance_name`, so it releases the leases of its killed predecessor at
start: messages in mid-delivery at a kill are delivered again at once instead of after lease expiry.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import random
import re
import smtplib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.net import wait_for
from tests.support.relay import RelayProcess, config, sandbox_workspace
from tests.support.services import fresh_database

pytestmark = pytest.mark.slow

TOTAL = 2_000
SESSIONS = 10
KILLS = 6
MAX_TRIES = 20  # per message; a message refused this often is given up (and not counted as accepted)
SEED = 20240607
QUEUED_AS = re.compile(rb"queued as (\S+)")


@dataclass
class Progress:
    lock: threading.Lock = field(default_factory=threading.Lock)
    accepted: dict[str, int] = field(default_factory=dict)  # queue id -> message number
    broken: int = 0  # sessions that broke or got a 4xx
    given_up: int = 0
    errors: list[str] = field(default_factory=list)

    def count(self) -> int:
        with self.lock:
            return len(self.accepted)


def message(number: int) -> bytes:
    return (
        f"From: app@crash.test\r\nTo: someone@dest.test\r\nSubject: crash test {number}\r\n"
        f"Message-ID: <crash-{number}@crash.test>\r\n\r\nmessage number {number}\r\n"
    ).encode()


def send_one(client: smtplib.SMTP, number: int) -> str | None:
    """One SMTP transaction on an open session; the queue id if the reply to DATA was a 250, else None."""
    code, _ = client.mail("app@crash.test")
    if code != 250:
        return None
    code, _ = client.rcpt("someone@dest.test")
    if code != 250:
        return None
    code, reply = client.data(message(number))
    if code != 250:
        return None
    match = QUEUED_AS.search(reply)
    assert match, f"250 without a queue id: {reply!r}"
    return match.group(1).decode()


def client_session(port: int, work: queue.Queue[tuple[int, int]], up: threading.Event, progress: Progress) -> None:
    client: smtplib.SMTP | None = None
    try:
        while True:
            try:
                number, tries = work.get_nowait()
            except queue.Empty:
                return
            queue_id = None
            try:
                if client is None:
                    if not up.wait(timeout=60):
                        raise AssertionError("Relay did not come back within 60 s")
                    client = smtplib.SMTP("127.0.0.1", port, timeout=15)
                    client.ehlo("client.crash.test")
                queue_id = send_one(client, number)
                if queue_id is None:
                    client.rset()
            except (OSError, smtplib.SMTPException):
                if client is not None:
                    client.close()
                client = None
            if queue_id is not None:
                with progress.lock:
                    progress.accepted[queue_id] = number
                continue
            with progress.lock:
                progress.broken += 1
                if tries + 1 >= MAX_TRIES:
                    progress.given_up += 1
                    continue
            work.put((number, tries + 1))  # try again later, after the others queued before it
    except BaseException as exc:
        with progress.lock:
            progress.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        if client is not None:
            client.close()


def in_outbox(outbox: Path) -> set[str]:
    return {name[: -len(".eml")] for name in os.listdir(outbox) if name.endswith(".eml")}


def leases_released(log: str) -> list[int]:
    """How many interrupted deliveries each restart took back (the `delivery.leases_released` log lines)."""
    counts = []
    for line in log.splitlines():
        # A SIGKILL can cut a log line short; the next process's first line then continues it. Take the last
        # JSON object on the line.
        start = line.rfind('{"', 0, line.find('"delivery.leases_released"'))
        if start >= 0 and '"delivery.leases_released"' in line:
            counts.append(int(json.loads(line[start:])["messages"]))
    return counts


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigkill_during_load_loses_no_accepted_message(backend: str, tmp_path: Path, outbox: Path) -> None:
    rng = random.Random(SEED)
    # Kill points: the number of 250s after which to kill, spread over the run (never two in one bucket).
    buckets = [(TOTAL - 200) * i // KILLS + 100 for i in range(KILLS + 1)]
    kill_at = [rng.randrange(low, high) for low, high in itertools.pairwise(buckets)]

    with fresh_database(backend, tmp_path) as url:
        data = config(
            url,
            [sandbox_workspace("sandbox", ["crash.test"], outbox)],
            http={"port": 0},  # unused here; 0 cannot clash with a port taken since config() picked one
            instance_name=f"crash-{backend}",
            log_format="json",
        )
        relay = RelayProcess(data, tmp_path, name=f"relay-{backend}")
        progress = Progress()
        work: queue.Queue[tuple[int, int]] = queue.Queue()
        for number in range(TOTAL):
            work.put((number, 0))
        up = threading.Event()
        threads = [
            threading.Thread(target=client_session, args=(relay.smtp_port, work, up, progress), daemon=True)
            for _ in range(SESSIONS)
        ]
        started = time.monotonic()
        kills: list[int] = []
        try:
            relay.start()
            up.set()
            for thread in threads:
                thread.start()

            def finished() -> bool:
                return not any(thread.is_alive() for thread in threads)

            for point in kill_at:
                wait_for(
                    lambda p=point: progress.count() >= p or finished(),
                    timeout=60,
                    interval=0.002,
                    what=f"{point} accepted messages",
                )
                if finished():
                    break
                up.clear()
                relay.kill()
                kills.append(progress.count())
                relay.start()
                up.set()
            wait_for(finished, timeout=120, what="the client sessions to finish")
            submitted = time.monotonic()

            assert not progress.errors, progress.errors
            accepted = dict(progress.accepted)
            try:
                wait_for(
                    lambda: set(accepted) <= in_outbox(outbox),
                    timeout=60,
                    interval=0.1,
                    what="every accepted message in the outbox",
                )
            except AssertionError:
                missing = sorted(set(accepted) - in_outbox(outbox))
                raise AssertionError(
                    f"{len(missing)} of {len(accepted)} messages answered 250 never reached the outbox "
                    f"(after {len(kills)} kills), e.g. {missing[:5]}"
                ) from None
            done = time.monotonic()
        except BaseException:
            print(relay.log()[-5000:])
            raise
        finally:
            up.set()
            relay.stop()

    present = in_outbox(outbox)
    released = leases_released(relay.log())
    print(
        f"\n[{backend}] kills={len(kills)} (after {kills} accepted) accepted={len(accepted)} "
        f"delivered={len(set(accepted) & present)} unconfirmed_but_delivered={len(present - set(accepted))} "
        f"client_retries={progress.broken} given_up={progress.given_up} "
        f"interrupted_deliveries_released={released} submit={submitted - started:.1f}s drain={done - submitted:.1f}s"
    )
    assert len(kills) >= 5, f"only {len(kills)} kills happened"
    assert len(accepted) > 1_500, f"only {len(accepted)} of {TOTAL} messages were accepted"
    # The kills hit deliveries in flight too, and those were taken back and finished after the restart.
    assert sum(released) > 0, "no kill interrupted a delivery"
    # Every accepted id holds the message that was accepted under it (not some other message).
    for queue_id, number in accepted.items():
        assert f"<crash-{number}@crash.test>".encode() in (outbox / f"{queue_id}.eml").read_bytes(), queue_id

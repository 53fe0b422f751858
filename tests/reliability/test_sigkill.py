"""Invariant 1 under fire: `kill -9` of a busy `relay serve`, fed over SMTP and HTTP at once, loses no message it
answered `250` (SMTP) or `202` (HTTP) for; the duplicates a crash can cause are counted and explained.

SMTP sessions (smtplib threads) and HTTP clients (`POST /api/v1/messages` with an `Idempotency-Key`) submit
small messages while the process is killed with SIGKILL at seeded-random moments — after a random number of
acceptances within each slice of the run — and restarted at once. A client whose connection breaks, or that gets
a 4xx or a 503, tries that message again. Relay delivers through its `smtp` provider to an upstream sink, which
counts every copy by Message-ID: an SMTP retry carries a new Message-ID (its try number), an HTTP retry the same
one with the same key, so a copy counted twice at the sink was sent twice by Relay, not by a client.

The restarted process keeps its `instance_name`, so it releases the leases of its killed predecessor at start:
messages in mid-delivery at a kill are delivered again at once. That is the one window that may deliver a
duplicate — the sink accepted the copy, the killed process had not yet recorded it — so the duplicates may not
outnumber the leases released, and each delivered message has exactly one recorded `sent` attempt.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import functools
import itertools
import json
import queue
import random
import re
import secrets
import smtplib
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from relay.store import Database
from relay.store.tables import delivery_attempts, messages
from tests.reliability import report
from tests.support.net import port_open, wait_for
from tests.support.relay import RelayProcess, config, smtp_workspace
from tests.support.services import fresh_database
from tests.support.sink import Received, SmtpSink

pytestmark = [pytest.mark.slow, pytest.mark.reliability]

SEED = 20240607
KILLS = report.scale(4, 20)
SMTP_TOTAL = report.scale(500, 6_000)
HTTP_TOTAL = report.scale(120, 2_000)
SMTP_SESSIONS = 8
HTTP_CLIENTS = 4
MAX_TRIES = 20  # per message; one refused this often is given up (and not counted as accepted)
SENDER = "app@crash.test"
RECIPIENT = "someone@dest.test"
QUEUED_AS = re.compile(rb"queued as (\S+)")
MESSAGE_ID = re.compile(rb"^Message-ID: (<[^>]+>)", re.MULTILINE)
BACKEND_NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


def message(message_id: str) -> bytes:
    return (
        f"From: {SENDER}\r\nTo: {RECIPIENT}\r\nSubject: crash test {message_id}\r\n"
        f"Message-ID: {message_id}\r\n\r\nmessage {message_id}\r\n"
    ).encode()


class SmtpChannel:
    """`submit` gives (queue id, Message-ID) if Relay took the message, None if it refused it for now, and raises
    OSError or smtplib.SMTPException when the connection breaks (HttpChannel: httpx.TransportError)."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._client: smtplib.SMTP | None = None

    def submit(self, number: int, tries: int) -> tuple[str, str] | None:
        if self._client is None:
            self._client = smtplib.SMTP("127.0.0.1", self._port, timeout=15)
            self._client.ehlo("client.crash.test")
        client = self._client
        message_id = f"<smtp-{number}-{tries}@crash.test>"  # each try its own: the sink tells Relay's copies apart
        if client.mail(SENDER)[0] != 250 or client.rcpt(RECIPIENT)[0] != 250:
            client.rset()
            return None
        code, reply = client.data(message(message_id))
        if code != 250:
            client.rset()
            return None
        match = QUEUED_AS.search(reply)
        assert match, f"250 without a queue id: {reply!r}"
        return match.group(1).decode(), message_id

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None


class HttpChannel:
    def __init__(self, port: int, key: str, load: Load) -> None:
        self._client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=15
        )
        self._load = load

    def submit(self, number: int, tries: int) -> tuple[str, str] | None:
        message_id = f"<http-{number}@crash.test>"  # a retry is the same request, under the same key
        body = {"from": SENDER, "to": [RECIPIENT], "raw": base64.b64encode(message(message_id)).decode()}
        response = self._client.post("/api/v1/messages", json=body, headers={"Idempotency-Key": f"crash-{number}"})
        if response.status_code in (409, 503):  # the key in use by a request cut short; the database away
            return None
        assert response.status_code in (200, 202), f"{response.status_code} {response.text[:300]}"
        answer = response.json()
        if response.status_code == 200:  # an earlier try was committed but its answer lost in a kill
            assert answer["status"] == "duplicate", answer
            with self._load.lock:
                self._load.recovered_by_key += 1
        return str(answer["id"]), message_id

    def close(self) -> None:
        # httpx drops a broken connection from its pool by itself; the client is closed once, at the end.
        return None

    def shut(self) -> None:
        self._client.close()


@dataclass
class Load:
    lock: threading.Lock = field(default_factory=threading.Lock)
    accepted: dict[str, tuple[str, str]] = field(default_factory=dict)  # queue id -> (channel, Message-ID)
    retries: int = 0  # tries that broke or were refused for now
    given_up: int = 0
    recovered_by_key: int = 0  # HTTP retries answered 200 duplicate: the key found the committed first try
    errors: list[str] = field(default_factory=list)

    def count(self) -> int:
        with self.lock:
            return len(self.accepted)


def client_session(
    name: str, channel: SmtpChannel | HttpChannel, work: queue.Queue[tuple[int, int]], up: threading.Event, load: Load
) -> None:
    try:
        while True:
            try:
                number, tries = work.get_nowait()
            except queue.Empty:
                return
            taken = None
            if not up.wait(timeout=60):
                raise AssertionError("Relay did not come back within 60 s")
            try:
                taken = channel.submit(number, tries)
            except (OSError, smtplib.SMTPException, httpx.TransportError):
                channel.close()
            with load.lock:
                if taken is not None:
                    load.accepted[taken[0]] = (name, taken[1])
                    continue
                load.retries += 1
                if tries + 1 >= MAX_TRIES:
                    load.given_up += 1
                    continue
            work.put((number, tries + 1))  # later, after the others queued before it
    except BaseException as exc:
        with load.lock:
            load.errors.append(f"{name}: {type(exc).__name__}: {exc}")
    finally:
        channel.close()


def leases_released(log: str) -> list[int]:
    """How many interrupted deliveries each restart took back (the `delivery.leases_released` log lines)."""
    return [int(event["messages"]) for event in log_events(log, "delivery.leases_released")]


@dataclass(frozen=True)
class Row:
    status: str
    message_id: str  # the Message-ID header it was stored with
    sent_at: tuple[datetime, ...]  # when the provider accepted it, per recorded `sent` attempt


def stored(url: str) -> dict[str, Row]:
    """Every message in the database: queue id -> status, Message-ID, recorded `sent` attempts."""

    async def read() -> dict[str, Row]:
        db = Database(url, pool_size=1)
        try:
            async with db.read() as connection:
                attempts = await connection.execute(
                    sa.select(delivery_attempts.c.message_id, delivery_attempts.c.finished_at).where(
                        delivery_attempts.c.outcome == "sent"
                    )
                )
                sent: dict[str, list[datetime]] = collections.defaultdict(list)
                for queue_id, finished_at in attempts:
                    sent[queue_id].append(finished_at.replace(tzinfo=UTC))  # stored as naive UTC
                rows = (await connection.execute(sa.select(messages.c.id, messages.c.status, messages.c.raw))).all()
        finally:
            await db.dispose()
        out = {}
        for queue_id, status, raw in rows:
            match = MESSAGE_ID.search(bytes(raw))
            out[queue_id] = Row(status, match.group(1).decode() if match else "", tuple(sent.get(queue_id, ())))
        return out

    return asyncio.run(read())


def log_events(log: str, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of `event`. A SIGKILL can cut a line short; the next process's first line then continues
    it, so each line is read from its last JSON object on."""
    found = []
    for line in log.splitlines():
        at = line.find(f'"{event}"')
        start = line.rfind('{"', 0, at)
        if at >= 0 and start >= 0:
            with contextlib.suppress(ValueError):
                found.append(json.loads(line[start:]))
    return found


def record_delays(log: str, rows: dict[str, Row]) -> list[float]:
    """Seconds from the provider's acceptance of each delivered message to the log line written once its attempt
    was recorded: the window in which a kill delivers a duplicate."""
    delays = []
    for event in log_events(log, "delivery.attempt"):
        row = rows.get(event["message_id"])
        if event["result"] == "sent" and row is not None and len(row.sent_at) == 1:
            logged = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
            delays.append((logged - row.sent_at[0]).total_seconds())
    return sorted(delays)


def kill_points(total: int, kills: int, rng: random.Random) -> list[int]:
    """After how many acceptances to kill: one random point in each of `kills` equal slices of the run."""
    buckets = [(total - 200) * i // kills + 100 for i in range(kills + 1)]
    return [rng.randrange(low, high) for low, high in itertools.pairwise(buckets)]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigkill_under_smtp_and_http_load_loses_no_accepted_message(backend: str, tmp_path: Path) -> None:
    total = SMTP_TOTAL + HTTP_TOTAL
    kill_at = kill_points(total, KILLS, random.Random(SEED))
    key = secrets.token_urlsafe(24)
    load = Load()
    works: dict[str, queue.Queue[tuple[int, int]]] = {"smtp": queue.Queue(), "http": queue.Queue()}
    for name, count in (("smtp", SMTP_TOTAL), ("http", HTTP_TOTAL)):
        for number in range(count):
            works[name].put((number, 0))

    with SmtpSink() as sink, fresh_database(backend, tmp_path) as url:
        data = config(
            url,
            [smtp_workspace("upstream", ["crash.test"], sink.port, max_connections=8)],
            http={"api_keys": [{"name": "load", "key": key, "role": "operator"}]},
            instance_name=f"crash-{backend}",
            log_format="json",
        )
        relay = RelayProcess(data, tmp_path, name=f"relay-{backend}")
        http_port = int(data["http"]["port"])
        up = {"smtp": threading.Event(), "http": threading.Event()}  # the listener each channel talks to
        http_channels = [HttpChannel(http_port, key, load) for _ in range(HTTP_CLIENTS)]
        channels: list[tuple[str, SmtpChannel | HttpChannel]] = [("http", channel) for channel in http_channels]
        channels += [("smtp", SmtpChannel(relay.smtp_port)) for _ in range(SMTP_SESSIONS)]
        threads = [
            threading.Thread(target=client_session, args=(name, channel, works[name], up[name], load), daemon=True)
            for name, channel in channels
        ]

        def start() -> None:
            relay.start()
            up["smtp"].set()
            wait_for(lambda: port_open(http_port), timeout=30, what="the HTTP API to listen")
            up["http"].set()

        def finished() -> bool:
            return not any(thread.is_alive() for thread in threads)

        def reached(point: int) -> bool:
            return load.count() >= point or finished()

        started = time.monotonic()
        kills: list[int] = []
        downtime = 0.0
        try:
            start()
            for thread in threads:
                thread.start()
            for point in kill_at:
                wait_for(
                    functools.partial(reached, point),
                    timeout=60,
                    interval=0.005,
                    what=f"{point} accepted messages",
                )
                if finished():
                    break
                for event in up.values():
                    event.clear()
                down = time.monotonic()
                relay.kill()
                kills.append(load.count())
                start()
                downtime += time.monotonic() - down
            wait_for(finished, timeout=180, what="the clients to finish")
            submitted = time.monotonic()
            assert not load.errors, load.errors[:5]
            # Every stored message ends up sent: those answered, and those committed while a kill cut off the answer.
            try:
                wait_for(
                    lambda: {row.status for row in stored(url).values()} == {"sent"},
                    timeout=90,
                    interval=0.2,
                    what="every stored message to be sent",
                )
            except AssertionError:
                statuses = collections.Counter(row.status for row in stored(url).values())
                raise AssertionError(f"not all sent after {len(kills)} kills: {dict(statuses)}") from None
            drained = time.monotonic()
            assert relay.stop() == 0, "relay serve did not stop cleanly"
            rows = stored(url)  # final: the process is stopped
        except BaseException:
            print(relay.log()[-5000:])
            raise
        finally:
            for event in up.values():
                event.set()
            relay.stop()
            for channel in http_channels:
                channel.shut()
        received = sink.received()

    times = {"submit": submitted - started, "drain": drained - submitted, "down": downtime}
    check(backend, rows, received, load, kills, relay.log(), times)


def check(
    backend: str,
    rows: dict[str, Row],
    received: list[Received],
    load: Load,
    kills: list[int],
    log: str,
    times: dict[str, float],
) -> None:
    accepted = dict(load.accepted)
    released = leases_released(log)
    delays = record_delays(log, rows)
    copies = collections.Counter(r.message_id or "" for r in received)
    per_message_id = collections.Counter(row.message_id for row in rows.values())
    lost = [qid for qid, (_, mid) in accepted.items() if qid not in rows or copies[mid] == 0]
    swapped = [qid for qid, (_, mid) in accepted.items() if qid in rows and rows[qid].message_id != mid]
    stored_twice = [mid for mid, n in per_message_id.items() if n > 1]
    not_recorded_once = {qid: len(row.sent_at) for qid, row in rows.items() if len(row.sent_at) != 1}
    invented = set(copies) - set(per_message_id)
    duplicated = {mid: n for mid, n in copies.items() if n > 1}
    duplicates = sum(n - 1 for n in duplicated.values())
    unconfirmed = len(set(rows) - set(accepted))  # committed, but a kill cut off the answer and the client retried
    by_channel = collections.Counter(channel for channel, _ in accepted.values())
    name = BACKEND_NAMES[backend]
    http = by_channel["http"]
    per_restart = ", ".join(map(str, released))
    window = {q: delays[min(len(delays) - 1, int(len(delays) * q))] * 1000 for q in (0.5, 0.99)} if delays else {}
    window_text = " / ".join(f"{window[q]:.0f}" for q in (0.5, 0.99)) + f" / {delays[-1] * 1000:.0f}" if delays else "-"
    print(
        f"\n[{backend}] kills={len(kills)} (after {kills} accepted) accepted={dict(by_channel)} stored={len(rows)} "
        f"unconfirmed={unconfirmed} recovered_by_key={load.recovered_by_key} retries={load.retries} "
        f"given_up={load.given_up} released={released} duplicates={duplicates} {sorted(duplicated.items())[:5]} "
        f"record delay p50/p99/max ms={window_text} "
        f"times={ ({k: round(v, 1) for k, v in times.items()}) }"
    )
    assert not lost, f"{len(lost)} of {len(accepted)} accepted messages lost, e.g. {lost[:5]}"
    assert not swapped, f"{len(swapped)} queue ids hold another message than the one accepted, e.g. {swapped[:5]}"
    assert not stored_twice, f"stored twice (an Idempotency-Key that did not hold?): {stored_twice[:5]}"
    assert not invented, f"the sink got messages that were never stored: {sorted(invented)[:5]}"
    assert not not_recorded_once, f"messages without exactly one recorded send: {list(not_recorded_once.items())[:5]}"
    assert len(kills) == KILLS, f"only {len(kills)} of {KILLS} kills happened"
    assert by_channel["smtp"] >= SMTP_TOTAL * 0.95 and by_channel["http"] >= HTTP_TOTAL * 0.95, dict(by_channel)
    # The kills hit deliveries in flight too, and those were taken back and finished after each restart.
    assert sum(released) > 0, "no kill interrupted a delivery"
    # A duplicate needs a send that reached the sink but not the database before a kill: its lease was released.
    assert duplicates <= sum(released), f"{duplicates} duplicates but only {sum(released)} leases released"

    explained = (
        f"{duplicates} message{'s' if duplicates != 1 else ''} reached the sink twice. Each has exactly one recorded "
        "`sent` attempt: the sink had accepted the first copy, but the process was killed before it recorded the "
        "attempt, so the restart released the lease and sent the message again. That is the window between the "
        "provider's acceptance and its record, the only one in which a kill can deliver a copy twice; here it was "
        f"{window_text} ms wide (median / p99 / max, from the provider's answer to the log line written once the "
        "attempt was committed): on a busy process a finished send waits for the event loop and for its commit, "
        "while the send itself to a local sink takes a few milliseconds. "
        f"Of the {sum(released)} messages whose leases the restarts released, {duplicates} had already been sent."
        if duplicates
        else "No message reached the sink twice: no kill fell between a provider's acceptance and its record."
    )
    report.record(
        "SIGKILL under load",
        f"{name}, SMTP and HTTP load, {len(kills)} kills",
        f"""
One `relay serve` on {name}, delivering through its `smtp` provider to an upstream sink, fed at once by
{SMTP_SESSIONS} SMTP sessions ({SMTP_TOTAL:,} messages) and {HTTP_CLIENTS} HTTP clients ({HTTP_TOTAL:,} messages,
`POST /api/v1/messages` with an `Idempotency-Key`), was killed with SIGKILL {len(kills)} times at seeded-random points
(after {", ".join(map(str, kills))} acceptances) and restarted each time. Every message answered `250` or `202` was
delivered, holding what was accepted under its id; none was lost, none was stored twice.

| figure | value |
|---|---|
| accepted over SMTP (`250`) / HTTP (`202`, or `200 duplicate` on a retry) | {by_channel["smtp"]:,} / {http:,} |
| lost | {len(lost)} |
| committed while a kill cut off the `250` (delivered too; the client had retried) | {unconfirmed} |
| HTTP retries answered `200 duplicate` through the key (not stored twice) | {load.recovered_by_key} |
| client retries after a broken connection, a 4xx or a 503 | {load.retries:,} |
| kills / leases released at the restarts | {len(kills)} / {sum(released)} (per restart releasing any: {per_restart}) |
| duplicates delivered | {duplicates} |
| provider's answer to recorded attempt, median / p99 / max (ms) | {window_text} |
| submission with the kills (of which restarting) / drain after it | {times["submit"]:.1f} s ({times["down"]:.1f} s) / \
{times["drain"]:.1f} s |

{explained}
""",
        backend=backend,
        accepted_smtp=by_channel["smtp"],
        accepted_http=http,
        lost=len(lost),
        unconfirmed=unconfirmed,
        recovered_by_key=load.recovered_by_key,
        kills=len(kills),
        leases_released=sum(released),
        duplicates=duplicates,
        record_delay_ms={str(q): round(v) for q, v in window.items()},
        submit_seconds=round(times["submit"], 1),
        restart_seconds=round(times["down"], 1),
        drain_seconds=round(times["drain"], 1),
    )

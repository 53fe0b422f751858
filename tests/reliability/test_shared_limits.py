"""Invariant 2 across processes: two `relay serve` processes on one PostgreSQL database and one Redis, fed
concurrently through both, never send over a workspace's or a sender's daily limit — and use them up.

A pool of three `smtp` workspaces, each delivering to its own upstream sink, serves ten senders of a generic
domain. The limits are set so that each kind binds somewhere: member A is held by its per-user limit (ten
senders x 10 < its workspace limit), B and C by their workspace limits, and one sender has a smaller custom
limit on C. Together they admit far fewer messages than are sent, so most of the load must wait.

SMTP sessions submit every message concurrently, alternating between the two processes; both deliver, each
claiming what either accepted, and each reserves on the shared Redis counters before every send. The sinks count
what each workspace really sent, per sender. Then: no count over its limit; every limit used up to the pool's
capacity (the share used is reported); the Redis counters equal what was sent; and every message the limits
held back is in the database as documented (BALANCER.md, "One delivery pass", step 4) — `deferred` without an
attempt, its last error starting `pool_exhausted`, due again when the first capacity returns a day later.
"""

from __future__ import annotations

import asyncio
import collections
import json
import queue
import smtplib
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from relay.limits import Limit, RedisLimits
from relay.store import Database
from relay.store.tables import messages
from tests.reliability import report
from tests.support.net import wait_for
from tests.support.pools import plain_message, pool
from tests.support.relay import RelayProcess, config, smtp_workspace
from tests.support.services import fresh_database, redis_keys, require_redis
from tests.support.sink import SmtpSink

pytestmark = [pytest.mark.slow, pytest.mark.reliability]

TOTAL = report.scale(400, 5_000)
SCALE = report.scale(1, 5)  # the limits grow with the load, staying a small share of it
SESSIONS = 16
SENDERS = [f"user{n}@limits.test" for n in range(10)]
POOL = "limits-pool"


@dataclass(frozen=True)
class Member:
    name: str
    workspace_daily: int
    per_user_daily: int
    custom: dict[str, int]

    def user_limit(self, sender: str) -> int:
        return self.custom.get(sender, self.per_user_daily)

    def capacity(self) -> int:
        """What the member can send for the senders of this test: its workspace limit or, if they are
        smaller, its per-user limits together."""
        return min(self.workspace_daily, sum(self.user_limit(s) for s in SENDERS))


MEMBERS = [
    Member("a", 150 * SCALE, 10 * SCALE, {}),  # held by its per-user limit: 10 senders x 10 < 150
    Member("b", 60 * SCALE, 12 * SCALE, {}),  # held by its workspace limit
    Member("c", 40 * SCALE, 12 * SCALE, {SENDERS[0]: 2 * SCALE}),  # its workspace limit, and one custom limit
]
CAPACITY = sum(m.capacity() for m in MEMBERS)


def member_config(member: Member, workspace_id: str, port: int) -> dict[str, Any]:
    data = smtp_workspace(workspace_id, [], port, max_connections=4)
    data["rate_limits"] = {
        "workspace_daily": member.workspace_daily,
        "per_user_daily": member.per_user_daily,
        "custom_user_limits": member.custom,
        "window": "rolling_24h",
    }
    return data


def client_session(
    ports: list[int], work: queue.Queue[int], accepted: list[int], errors: list[str], lock: threading.Lock
) -> None:
    """Submit numbers from `work`: message n from SENDERS[n % 10] to ports[n % 2], so both processes take half."""
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
                clients[port].ehlo("client.limits.test")
            sender = SENDERS[number % len(SENDERS)]
            refused = clients[port].sendmail(sender, ["ann@example.org"], plain_message(sender, "lim", number))
            assert not refused, refused
            with lock:
                accepted.append(number)
    except BaseException as exc:
        with lock:
            errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        for client in clients.values():
            client.close()


@dataclass(frozen=True)
class Row:
    status: str
    attempts: int
    last_error: str
    next_attempt_at: datetime | None


def stored(url: str) -> list[Row]:
    async def read() -> list[Row]:
        db = Database(url, pool_size=1)
        try:
            async with db.read() as connection:
                columns = (messages.c.status, messages.c.attempts, messages.c.last_error, messages.c.next_attempt_at)
                rows = (await connection.execute(sa.select(*columns))).all()
        finally:
            await db.dispose()
        return [Row(s, a, e or "", n.replace(tzinfo=UTC) if n and n.tzinfo is None else n) for s, a, e, n in rows]

    return asyncio.run(read())


def settled(rows: list[Row], total: int) -> bool:
    """Every message sent, failed, or deferred for the day: a short deferral (a busy connection) is still moving."""
    later = datetime.now(UTC) + timedelta(hours=1)
    waiting = [r for r in rows if r.status == "deferred" and r.next_attempt_at and r.next_attempt_at > later]
    return len(rows) == total and sum(1 for r in rows if r.status in ("sent", "failed")) + len(waiting) == total


def sent_event(event: dict[str, Any]) -> bool:
    return bool(event["event"] == "delivery.attempt" and event["result"] == "sent")


def logged(log: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


async def redis_usage(url: str, limits: list[Limit]) -> list[int]:
    backend = RedisLimits(url)
    try:
        return [usage.used for usage in await backend.usage(limits)]
    finally:
        await backend.aclose()


def test_two_processes_on_one_redis_never_exceed_a_limit_and_use_them_up(tmp_path: Path) -> None:
    redis_url = require_redis()
    assert all(TOTAL // len(SENDERS) >= sum(m.user_limit(s) for m in MEMBERS) for s in SENDERS), "too few messages"
    run = uuid.uuid4().hex[:8]  # the counters of this run's workspaces are its own in the shared Redis
    ids = {m.name: f"lim-{m.name}-{run}" for m in MEMBERS}
    started = time.monotonic()
    with ExitStack() as stack:
        stack.enter_context(redis_keys(f"*{run}*"))
        sinks = {m.name: stack.enter_context(SmtpSink()) for m in MEMBERS}
        url = stack.enter_context(fresh_database("postgresql", tmp_path))
        workspaces = [member_config(m, ids[m.name], sinks[m.name].port) for m in MEMBERS]
        relays = [
            RelayProcess(
                config(
                    url,
                    workspaces,
                    redis_url=redis_url,
                    load_balancing_pools=[pool(POOL, ["limits.test"], [(ids[m.name], 1.0) for m in MEMBERS])],
                    http={"port": 0},  # unused here; 0 cannot clash with another process's port
                    instance_name=f"limits-{name}",
                    log_format="json",
                ),
                tmp_path,
                name=f"relay-{name}",
            )
            for name in ("one", "two")
        ]
        accepted: list[int] = []
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
        try:
            with ThreadPoolExecutor(len(relays)) as starting:  # side by side: each takes seconds to start
                list(starting.map(RelayProcess.start, relays))
            submitting = time.monotonic()
            for thread in threads:
                thread.start()
            wait_for(lambda: not any(t.is_alive() for t in threads), timeout=300, what="the clients to finish")
            submitted = time.monotonic()
            assert not errors, errors[:5]
            assert len(accepted) == TOTAL
            wait_for(lambda: settled(stored(url), TOTAL), timeout=120, interval=0.5, what="every message to settle")
            done = time.monotonic()
            for relay in relays:
                assert relay.stop() == 0, relay.log()[-3000:]
            rows = stored(url)
        except BaseException:
            for relay in relays:
                print(f"--- {relay.name} ---\n{relay.log()[-3000:]}")
            raise
        finally:
            for relay in relays:
                relay.stop()
        sent = {m.name: sinks[m.name].received() for m in MEMBERS}
        limits = [Limit(f"ws:{ids[m.name]}", "rolling", m.workspace_daily) for m in MEMBERS]
        limits += [Limit(f"user:{ids[m.name]}:{s}", "rolling", m.user_limit(s)) for m in MEMBERS for s in SENDERS]
        counters = asyncio.run(redis_usage(redis_url, limits))
    times = {"start": submitting - started, "submit": submitted - submitting, "settle": done - submitted}
    check(sent, rows, counters, [logged(relay.log()) for relay in relays], ids, times)


def check(
    sent: dict[str, list[Any]],
    rows: list[Row],
    counters: list[int],
    logs: list[list[dict[str, Any]]],
    ids: dict[str, str],
    times: dict[str, float],
) -> None:
    per_member = {name: len(received) for name, received in sent.items()}
    per_sender = {name: collections.Counter(r.mail_from for r in received) for name, received in sent.items()}
    copies = collections.Counter(r.message_id for received in sent.values() for r in received)
    total_sent = sum(per_member.values())
    statuses = collections.Counter(r.status for r in rows)
    deferred = [r for r in rows if r.status == "deferred"]
    soonest = min((r.next_attempt_at for r in deferred if r.next_attempt_at), default=None)
    by_process = [collections.Counter(e["workspace_id"] for e in events if sent_event(e)) for events in logs]
    exhausted = [sum(1 for e in events if e["event"] == "load_balancing.pool_exhausted") for events in logs]
    log_errors = [f"{e['event']}: {e.get('error', '')}"[:200] for ev in logs for e in ev if e["level"] == "error"]
    print(
        f"\nsent per member {per_member} (capacity {[m.capacity() for m in MEMBERS]}, total {CAPACITY}) "
        f"statuses {dict(statuses)} by process {[sum(c.values()) for c in by_process]} pool_exhausted {exhausted} "
        f"times { ({k: round(v, 1) for k, v in times.items()}) }"
    )

    over = [
        f"{m.name}: {per_member[m.name]} > workspace limit {m.workspace_daily}"
        for m in MEMBERS
        if per_member[m.name] > m.workspace_daily
    ]
    over += [
        f"{m.name}/{sender}: {count} > user limit {m.user_limit(sender)}"
        for m in MEMBERS
        for sender, count in per_sender[m.name].items()
        if count > m.user_limit(sender)
    ]
    assert not over, f"sent over a limit: {over}"
    assert all(n == 1 for n in copies.values()), "a message was sent twice"
    assert not log_errors, log_errors[:5]
    # Used up: every member sent what its limits allow for these senders, and the pool its whole capacity.
    assert per_member == {m.name: m.capacity() for m in MEMBERS}, per_member
    # The shared counters hold exactly what was sent: no reservation leaked, none lost between the processes.
    expected = [per_member[m.name] for m in MEMBERS]
    expected += [per_sender[m.name][s] for m in MEMBERS for s in SENDERS]
    assert counters == expected, list(zip(counters, expected, strict=True))
    # The rest is not lost: held in the queue for the day, without an attempt, as an exhausted pool documents.
    assert statuses == {"sent": total_sent, "deferred": TOTAL - total_sent}, dict(statuses)
    assert all(r.attempts == 0 and r.last_error.startswith("pool_exhausted") for r in deferred), deferred[:3]
    assert soonest is not None and soonest > datetime.now(UTC) + timedelta(hours=23), soonest
    # Both processes took their share of the sends: the limits were really shared.
    assert all(sum(c.values()) > 0 for c in by_process), by_process

    share = total_sent / CAPACITY
    members = "\n".join(
        f"| {m.name.upper()} | {m.workspace_daily} | {m.per_user_daily}"
        + (f" ({', '.join(f'{s}: {n}' for s, n in m.custom.items())})" if m.custom else "")
        + f" | {m.capacity()} | {per_member[m.name]} | {max(per_sender[m.name].values(), default=0)} | "
        + " / ".join(str(c[ids[m.name]]) for c in by_process)
        + " |"
        for m in MEMBERS
    )
    report.record(
        "Shared limits across processes",
        f"Two processes, one PostgreSQL and one Redis, {TOTAL:,} messages",
        f"""
Two `relay serve` processes on one PostgreSQL database and one Redis took {TOTAL:,} messages from {len(SENDERS)}
senders of a pool's domain, over {SESSIONS} concurrent SMTP sessions alternating between them, and delivered through
a pool of {len(MEMBERS)} `smtp` workspaces whose daily limits admit {CAPACITY:,} of them ({CAPACITY / TOTAL:.0%} of the
load): a member's capacity is its workspace limit or, when smaller, its per-user limits summed over the senders.
Counted at each workspace's upstream sink:

| workspace | workspace limit | per-user limit | capacity | sent | most by one sender | by process one / two |
|---|---|---|---|---|---|---|
{members}

- **Over a limit: 0** (workspace or per-user); no message sent twice; the Redis counters equal the sends.
- **Capacity used: {total_sent:,} of {CAPACITY:,} ({share:.1%}).**
- **Held back: {TOTAL - total_sent:,}**, all `deferred` without an attempt, last error `pool_exhausted: …`, due again
  when the first capacity returns (the earliest in {(soonest - datetime.now(UTC)).total_seconds() / 3600:.1f} h);
  none failed, none lost. `load_balancing.pool_exhausted` was logged {exhausted[0]:,} / {exhausted[1]:,} times.
- Start {times["start"]:.1f} s, submission {times["submit"]:.1f} s, until every message settled {times["settle"]:.1f} s.
""",
        messages=TOTAL,
        capacity=CAPACITY,
        sent=total_sent,
        share_used=round(share, 4),
        over_limit=0,
        deferred=TOTAL - total_sent,
        sent_by_process=[sum(c.values()) for c in by_process],
        pool_exhausted=exhausted,
        submit_seconds=round(times["submit"], 1),
    )

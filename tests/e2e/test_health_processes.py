"""Two `relay serve` processes sharing PostgreSQL and Redis see one circuit breaker per workspace (issue 6): an
ejection made by one is seen by the other within the local cache's second.

A pool of two: `dead` (an smtp workspace whose port refuses connections) and `live` (a sandbox). Checks are off,
so only sends drive the breaker. Pool mail goes to one process until a process logs the breaker opening (the
opener: almost always the one given the mail; the processes share one queue, so the other may claim a message
now and then). Then pool mail goes to the other process (the observer), one message at a time: its decisions
must leave `dead` out, as "unhealthy", within about a second of the opener's log line.

The observer's view must be warm, not read for the first time when its pool mail arrives: it delivers a steady
trickle of directly routed mail (to `live`, no decision) all along, and every claim refreshes its health view.
"""

from __future__ import annotations

import asyncio
import smtplib
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from relay.store import AttemptView, Database, Messages
from tests.support.health import HEALTH_CHANGED, exclusion, json_events, logged_at, redis_run, with_health
from tests.support.net import free_port, wait_for
from tests.support.pools import plain_message, pool
from tests.support.relay import RelayProcess, config, sandbox_workspace, smtp_workspace
from tests.support.services import REDIS_URL

pytestmark = pytest.mark.slow

POOL_SENDER = "brian@invite.com"
WARM_SENDER = "app@warm.test"
POOL_ID = "invite-domain-pool"
THRESHOLD = 3
# How late the observer may see the change: its breaker cache holds a state for at most 1 s, and a decision reads
# the health view its last claim refreshed (claims come every ~50 ms here, with the trickle); plus 0.5 s for
# scheduling and the database round trips between the two log lines.
SEEN_WITHIN = 1.5
CACHE_SECONDS = 1.0


@pytest.fixture
def run_id() -> Iterator[str]:
    with redis_run() as run:
        yield run


class Submitter:
    """One SMTP session to a relay, kept open; `send` returns Relay's queue id."""

    def __init__(self, port: int) -> None:
        self._client = smtplib.SMTP("127.0.0.1", port, timeout=30)
        self._client.ehlo("client.health.test")

    def send(self, sender: str, tag: str, n: int) -> str:
        assert self._client.mail(sender)[0] == 250
        assert self._client.rcpt("ann@example.org")[0] == 250
        code, reply = self._client.data(plain_message(sender, tag, n))
        assert code == 250, reply
        return reply.decode().rsplit(" ", 1)[1]

    def close(self) -> None:
        self._client.close()


class Trickle(threading.Thread):
    """Directly routed mail to one relay every `pause` seconds, so its delivery worker claims (and refreshes its
    health view) all the time."""

    def __init__(self, port: int, pause: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.port, self.pause = port, pause
        self.stopping = threading.Event()
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        submitter = Submitter(self.port)
        try:
            while not self.stopping.wait(self.pause):
                submitter.send(WARM_SENDER, "warm", self.sent)
                self.sent += 1
        except BaseException as exc:
            self.error = exc
        finally:
            submitter.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)
        assert self.error is None, self.error


def relay_config(url: str, run: str, outbox: Path, dead_port: int, name: str) -> dict[str, Any]:
    dead = with_health(
        smtp_workspace(f"dead-{run}", [], dead_port, max_connections=1),
        checks_enabled=False,
        consecutive_failures=THRESHOLD,
        base_open_seconds=120,  # stays open for the whole test: no probe
    )
    live = with_health(sandbox_workspace(f"live-{run}", ["warm.test"], outbox), checks_enabled=False)
    return config(
        url,
        [dead, live],
        # Weighted towards the dead member, so that a stale view would soon choose it.
        load_balancing_pools=[pool(POOL_ID, ["invite.com"], [(f"dead-{run}", 3.0), (f"live-{run}", 1.0)])],
        redis_url=REDIS_URL,
        http={"port": 0},  # unused; 0 cannot clash with the other process
        instance_name=f"relay-{name}-{run}",
        log_format="json",
        # Each process claims when its own mail is committed; a long poll keeps it off the other's mail.
        delivery={"poll_interval_seconds": 30},
    )


def opened(relays: list[RelayProcess], workspace_id: str) -> tuple[RelayProcess, dict[str, Any]] | None:
    for relay in relays:
        for event in json_events(relay.log()):
            if event["event"] == HEALTH_CHANGED and event["workspace_id"] == workspace_id and event["new"] == "open":
                return relay, event
    return None


def delivered_by(relay: RelayProcess) -> set[str]:
    """Queue ids whose delivery pass this process ran (its `delivery.attempt` lines)."""
    return {e["message_id"] for e in json_events(relay.log()) if e["event"] == "delivery.attempt"}


def delivered(relays: list[RelayProcess], message_id: str) -> bool:
    return any(message_id in delivered_by(relay) for relay in relays)


def settled(relays: list[RelayProcess], workspace_id: str, message_id: str) -> bool:
    """The breaker of `workspace_id` opened, or else `message_id` was delivered (without opening it)."""
    return opened(relays, workspace_id) is not None or delivered(relays, message_id)


def attempts_of(url: str, ids: list[str]) -> dict[str, list[AttemptView]]:
    async def read() -> dict[str, list[AttemptView]]:
        db = Database(url, pool_size=1)
        try:
            messages = Messages(db)
            return {i: await messages.attempts(i) for i in ids}
        finally:
            await db.dispose()

    return asyncio.run(read())


def test_an_ejection_made_by_one_process_is_seen_by_the_other_within_a_second(
    postgres_url: str, tmp_path: Path, run_id: str
) -> None:
    dead, live = f"dead-{run_id}", f"live-{run_id}"
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    dead_port = free_port()  # nothing listens there: connections are refused
    relays = [
        RelayProcess(relay_config(postgres_url, run_id, outbox, dead_port, name), tmp_path, name=f"relay-{name}")
        for name in ("a", "b")
    ]
    trickle: Trickle | None = None
    submitters: dict[int, Submitter] = {}
    try:
        for relay in relays:
            relay.start()
        a, b = relays
        trickle = Trickle(b.smtp_port)
        trickle.start()
        wait_for(lambda: trickle.sent >= 20, timeout=10, what="the trickle to flow")
        submitters = {relay.smtp_port: Submitter(relay.smtp_port) for relay in relays}

        # Pool mail to A, one message at a time, until a process logs the breaker opening.
        pool_ids: list[str] = []
        found = None
        for n in range(40):
            message_id = submitters[a.smtp_port].send(POOL_SENDER, "pool", n)
            pool_ids.append(message_id)
            wait_for(
                partial(settled, relays, dead, message_id),
                timeout=10,
                what=f"pool message {n} to be delivered",
            )
            found = opened(relays, dead)
            if found is not None:
                break
        assert found is not None, f"{len(pool_ids)} pool messages and the breaker of {dead} never opened"
        opener, event = found
        observer = b if opener is a else a
        changed_at = logged_at(event)
        assert event["old"] == "healthy" and event["error"].startswith("SMTPConnectError"), event

        # Pool mail to the observer, one at a time, until it has decided well past the cache's bound.
        observed: list[str] = []
        for n in range(100, 400):
            message_id = submitters[observer.smtp_port].send(POOL_SENDER, "pool", n)
            wait_for(partial(delivered, relays, message_id), timeout=10, what=f"pool message {n} to be delivered")
            observed.append(message_id)
            if datetime.now(changed_at.tzinfo) > changed_at + timedelta(seconds=2 * SEEN_WITHIN) and n >= 110:
                break
        trickle.stop()
        for relay in relays:
            assert relay.stop() == 0, relay.log()[-3000:]

        # Only the observer's own decisions count (the opener may have claimed one of these now and then).
        mine = delivered_by(observer)
        attempts = attempts_of(postgres_url, [m for m in observed if m in mine])
        assert len(attempts) >= 10, f"the observer delivered only {len(attempts)} of its {len(observed)} messages"
        firsts = sorted((rows[0] for rows in attempts.values()), key=lambda attempt: attempt.started_at)
        assert all(rows[-1].outcome == "sent" and rows[-1].workspace_id == live for rows in attempts.values())
        excluded = [a for a in firsts if exclusion(a, dead) == "unhealthy"]
        assert excluded, f"the observer never left {dead} out: {[exclusion(a, dead) for a in firsts]}"
        seen_after = (excluded[0].started_at - changed_at).total_seconds()
        tried = [a for rows in attempts.values() for a in rows if a.workspace_id == dead]
        late = [a for a in tried if (a.started_at - changed_at).total_seconds() > CACHE_SECONDS + 0.1]
        print(
            f"\nopener={opener.name} observer={observer.name} pool messages to the opener={len(pool_ids)} "
            f"observer decisions={len(firsts)} seen after {seen_after:.3f} s; "
            f"observer sends to {dead} after the change: "
            f"{[round((t.started_at - changed_at).total_seconds(), 3) for t in tried]}; "
            f"reasons in order: {[exclusion(f, dead) for f in firsts[:8]]}"
        )
        assert seen_after <= SEEN_WITHIN, f"the observer first left {dead} out {seen_after:.3f} s after the change"
        # Its cache may hold the old state for up to a second, so a send admitted in that second is possible;
        # none after it.
        assert late == [], [(a.started_at, a.outcome) for a in late]
        # And every decision made once the bound has passed leaves it out.
        for attempt in firsts:
            if (attempt.started_at - changed_at).total_seconds() > SEEN_WITHIN:
                assert exclusion(attempt, dead) == "unhealthy", attempt.selection
    except BaseException:
        for relay in relays:
            print(f"--- {relay.name} ---\n{relay.log()[-3000:]}")
        raise
    finally:
        if trickle is not None and trickle.is_alive():
            trickle.stopping.set()
        for submitter in submitters.values():
            submitter.close()
        for relay in relays:
            relay.stop()

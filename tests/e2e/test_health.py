"""Workspace health end to end (issue 6), in one process.

- A member whose upstream starts refusing connections is ejected within its breaker's threshold, its traffic
  moves to the other members with no message failed, and the active check readmits it within one check
  interval once the upstream is back.
- Refused credentials seen by the active check make a member `auth_broken`; fixing them and reloading the
  config makes it healthy again at once.
- Pool safety: never more than `max_ejection_percent` of a pool ejected; a pool whose only member is ejected
  defers its mail instead of retrying in a loop, and sends once the member recovers.
- Through Redis: the ejection cap holds for failures recorded at once (the cap is evaluated inside the atomic
  update), and a change another process made is seen by this one's decisions within a second.

Time is a ManualClock: check intervals and ejections end when the test moves the clock, not by waiting.
"""

from __future__ import annotations

import asyncio
import copy
import random
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog

from relay.clock import ManualClock
from relay.health import Breakers, BreakerSettings, RedisBreakerStore
from relay.providers import Outcome
from relay.runtime import Relay
from tests.emulators import mailgun as mailgun_emulator
from tests.emulators.server import ServedApp
from tests.support.health import HEALTH_CHANGED, changes, redis_run, with_health
from tests.support.net import async_wait_for, free_port
from tests.support.pools import (
    attempts_of,
    message_id_header,
    pool,
    sent_through,
    submit_many,
    views,
    wait_for_statuses,
)
from tests.support.relay import config, sandbox_workspace, settings_from, smtp_workspace, start_relay
from tests.support.services import REDIS_URL
from tests.support.sink import SmtpSink
from tests.support.tcp_proxy import TcpProxy

SENDER = "brian@invite.com"
POOL_ID = "invite-domain-pool"
SANDBOXES = ("sandbox-a", "sandbox-b")
INTERVAL = 10.0  # check_interval_seconds
JITTER = INTERVAL * 0.1  # the checker adds up to 10 % to each interval
THRESHOLD = 3  # consecutive_failures
HEALTH = {"consecutive_failures": THRESHOLD, "base_open_seconds": 30, "check_interval_seconds": INTERVAL}
SEED = 6


def sandboxes(tmp_path: Path, **health: Any) -> list[dict[str, Any]]:
    return [with_health(sandbox_workspace(ws, [], tmp_path / f"outbox-{ws}"), **health) for ws in SANDBOXES]


def delivered(tmp_path: Path, workspace_id: str) -> int:
    return len(list((tmp_path / f"outbox-{workspace_id}").glob("*.eml")))


def health_is(relay: Relay, workspace_id: str, state: str) -> bool:
    return relay.health.health(workspace_id).state == state


# -- (a) an upstream that refuses connections: ejected, traffic moves, readmitted by the active check ------------


async def test_a_member_refusing_connections_is_ejected_and_readmitted_by_its_check(
    sqlite_url: str, tmp_path: Path
) -> None:
    clock = ManualClock()
    members = ("smtp-ws", *SANDBOXES)
    with SmtpSink() as sink:
        proxy = TcpProxy("127.0.0.1", sink.port).start()
        # One connection at a time: a send admitted before the breaker opened cannot add to the count after it.
        smtp = with_health(smtp_workspace("smtp-ws", [], proxy.port, max_connections=1), **HEALTH)
        data = config(
            sqlite_url,
            [smtp, *sandboxes(tmp_path, **HEALTH)],
            load_balancing_pools=[pool(POOL_ID, ["invite.com"], [(ws, 1.0) for ws in members])],
        )
        relay = await start_relay(data, tmp_path, clock=clock, rng=random.Random(SEED))
        try:
            before = await submit_many(relay, SENDER, 15, tag="health")
            await wait_for_statuses(relay, {"sent": 15})
            used = Counter(sent_through(await attempts_of(relay, list(before.values()))).values())
            assert set(used) == set(members), used
            assert len(sink.received()) == used["smtp-ws"]

            proxy.cut()  # connections to the smtp workspace are refused from now on
            with structlog.testing.capture_logs() as logs:
                # One message at a time until the breaker opens (how fast a machine accepts compared with how
                # fast it delivers must not decide whether any message is queued after it), then 15 more.
                during: dict[int, str] = {}
                count = 15
                while not changes(logs, "smtp-ws") and count < 45:
                    during.update(await submit_many(relay, SENDER, 1, tag="health", first=count))
                    count += 1
                    await wait_for_statuses(relay, {"sent": count})  # none failed, none waiting
                during.update(await submit_many(relay, SENDER, 15, tag="health", first=count))
                await wait_for_statuses(relay, {"sent": count + 15})
            attempts = await attempts_of(relay, list(during.values()))

            # Ejected within the threshold: exactly THRESHOLD sends were refused a connection, each failed over
            # to a sandbox member in the same pass, and nothing was tried on it after that.
            refused = [a for rows in attempts.values() for a in rows if a.workspace_id == "smtp-ws"]
            assert [(a.outcome, a.attempt_number) for a in refused] == [("retry", 1)] * THRESHOLD
            assert changes(logs, "smtp-ws") == [("healthy", "open")]
            [opened] = [i for i, e in enumerate(logs) if e["event"] == HEALTH_CHANGED]
            assert logs[opened]["error"].startswith("SMTPConnectError") and str(proxy.port) in logs[opened]["error"]
            for message_id, rows in attempts.items():
                *failed, sent = rows
                assert sent.outcome == "sent" and sent.workspace_id in SANDBOXES, message_id
                assert [a.workspace_id for a in failed] in ([], ["smtp-ws"]), message_id
            # Every message queued after the breaker opened was decided after it: the member is left out.
            queued_after = {e["message_id"] for e in logs[opened:] if e["event"] == "smtp.queued"}
            assert len(queued_after) >= 10, "the breaker opened too late in the batch to show the exclusion"
            for message_id in queued_after:
                [attempt] = attempts[message_id]
                assert attempt.selection is not None
                assert attempt.selection["excluded"] == {"smtp-ws": "unhealthy"}, message_id
                assert set(attempt.selection["scores"]) == set(SANDBOXES)
            assert relay.health.health("smtp-ws").state == "open"
            assert len(sink.received()) == used["smtp-ws"]
            total = count + 15
            assert sum(delivered(tmp_path, ws) for ws in SANDBOXES) == total - used["smtp-ws"]

            # The first active check falls due (within the first interval's jitter) while it still refuses: it
            # fails and the member stays out. Calling `start_due` ourselves makes the moment exact.
            clock.advance(JITTER + 0.1)
            relay.checker.start_due()
            await relay.checker.wait_idle()
            checked = relay.health.health("smtp-ws")
            assert checked.state == "open"
            assert checked.last_error is not None and checked.last_error.startswith("check: "), checked.last_error

            # Back: nothing changes before the next check is due; that check ends the ejection at once, well before
            # its 30 s would be over, and the next send is the probe that closes the breaker. (The check does not
            # close it outright: checks are read-only and can pass while sends fail.)
            proxy.start()
            clock.advance(INTERVAL - JITTER - 0.2)  # the failing check + 8.8 s: not due before + 10 s
            relay.checker.start_due()
            await relay.checker.wait_idle()
            assert not relay.health.available("smtp-ws")
            with structlog.testing.capture_logs() as logs:
                clock.advance(2 * JITTER + 0.3)  # the failing check + one interval + the most jitter + 0.1 s
                await async_wait_for(
                    lambda: relay.health.available("smtp-ws"), timeout=5, what="the check to readmit smtp-ws"
                )
                after = await submit_many(relay, SENDER, 15, tag="health", first=total)
                await wait_for_statuses(relay, {"sent": total + 15})
            assert changes(logs, "smtp-ws") == [("open", "half_open"), ("half_open", "healthy")]
            assert relay.health.health("smtp-ws").state == "healthy"
            attempts = await attempts_of(relay, list(after.values()))
            through = sent_through(attempts)
            back = sorted(n for n, message_id in after.items() if through[message_id] == "smtp-ws")
            assert back, "no traffic returned to smtp-ws"
            assert all(len(rows) == 1 for rows in attempts.values())  # nothing failed over: it works again
            assert {r.message_id for r in sink.received()} >= {message_id_header(SENDER, "health", n) for n in back}
        finally:
            await relay.stop()
            proxy.cut()


# -- (b) refused credentials: auth_broken, then fixed by a reload ----------------------------------------------

MAILGUN_KEY = "key-health-e2e-7c2d9e41a0b3"
MAILGUN_DOMAIN = "mg.invite.com"


async def test_refused_credentials_make_a_member_auth_broken_until_a_reload_fixes_them(
    sqlite_url: str, tmp_path: Path
) -> None:
    clock = ManualClock()
    mailgun = mailgun_emulator.MailgunState(api_key=MAILGUN_KEY, domains={MAILGUN_DOMAIN: "active"})
    with ServedApp(mailgun_emulator.create_app(mailgun)) as served:
        section = {"api_key": "key-wrong-0000", "base_url": served.url, "domain": MAILGUN_DOMAIN}
        members = ("mailgun-ws", "sandbox-a")
        data = config(
            sqlite_url,
            [
                with_health({"id": "mailgun-ws", "mailgun": section}, check_interval_seconds=INTERVAL),
                with_health(sandbox_workspace("sandbox-a", [], tmp_path / "outbox-sandbox-a")),
            ],
            load_balancing_pools=[pool(POOL_ID, ["invite.com"], [(ws, 1.0) for ws in members])],
        )
        relay = await start_relay(data, tmp_path, clock=clock, rng=random.Random(SEED))
        try:
            with structlog.testing.capture_logs() as logs:
                relay.checker.check_soon("mailgun-ws")
                await relay.checker.wait_idle()
            assert [(r.method, r.path, r.status) for r in mailgun.requests] == [
                ("GET", f"/v3/domains/{MAILGUN_DOMAIN}", 401)
            ]
            assert changes(logs, "mailgun-ws") == [("healthy", "auth_broken")]
            [event] = [e for e in logs if e["event"] == HEALTH_CHANGED]
            assert "HTTP 401" in event["error"] and "key-wrong" not in event["error"]
            broken = relay.health.health("mailgun-ws")
            assert broken.state == "auth_broken"
            assert broken.until == clock.now() + timedelta(seconds=INTERVAL)  # rechecked at the next interval
            assert (await relay.states.all())["mailgun-ws"].state == "broken"  # shared with every process

            ids = list((await submit_many(relay, SENDER, 10, tag="auth")).values())
            await wait_for_statuses(relay, {"sent": 10})  # none failed
            attempts = await attempts_of(relay, ids)
            assert set(sent_through(attempts).values()) == {"sandbox-a"}
            for message_id, rows in attempts.items():
                [attempt] = rows  # never tried on the broken member, so nothing failed over
                assert attempt.selection is not None
                assert attempt.selection["excluded"] == {"mailgun-ws": "unhealthy"}, message_id
            assert len(mailgun.requests) == 1 and mailgun.deliveries == []

            # The operator fixes the key and reloads (SIGHUP): the rebuilt provider is checked at once.
            fixed = copy.deepcopy(data)
            fixed["workspaces"][0]["mailgun"]["api_key"] = MAILGUN_KEY
            with structlog.testing.capture_logs() as logs:
                assert await relay.reload(settings_from(fixed, tmp_path)) == []
                await async_wait_for(
                    lambda: health_is(relay, "mailgun-ws", "healthy"), timeout=5, what="mailgun-ws to be healthy"
                )
            assert changes(logs, "mailgun-ws") == [("auth_broken", "healthy")]
            assert mailgun.requests[-1].status == 200
            assert (await relay.states.all())["mailgun-ws"].state == "active"

            more = await submit_many(relay, SENDER, 12, tag="auth", first=10)
            await wait_for_statuses(relay, {"sent": 22})
            through = sent_through(await attempts_of(relay, list(more.values())))
            back = [n for n, message_id in more.items() if through[message_id] == "mailgun-ws"]
            assert back, "no mail reached mailgun-ws after the reload"
            assert len(mailgun.deliveries) == len(back)
        finally:
            await relay.stop()


# -- (c) pool safety: the ejection cap, and a one-member pool that waits ---------------------------------------

NO_CHECKS = {"checks_enabled": False}  # only sends drive the breakers here


async def test_a_pool_never_ejects_more_than_max_ejection_percent(sqlite_url: str, tmp_path: Path) -> None:
    clock = ManualClock()
    members = ("dead-a", "dead-b")
    # Both upstreams refuse connections (nothing listens on those ports); one connection each, so a send admitted
    # just before its breaker opened cannot add a failure after it.
    workspaces = [
        with_health(smtp_workspace(ws, [], free_port(), max_connections=1), consecutive_failures=THRESHOLD, **NO_CHECKS)
        for ws in members
    ]
    data = config(
        sqlite_url,
        workspaces,
        load_balancing_pools=[pool(POOL_ID, ["invite.com"], [(ws, 1.0) for ws in members], max_ejection_percent=50)],
    )
    relay = await start_relay(data, tmp_path, clock=clock, rng=random.Random(SEED))
    try:
        with structlog.testing.capture_logs() as logs:
            # Each message fails on one member, fails over to the other, and waits for its retry (the clock
            # stands still): two failures a message, one on each member.
            ids = list((await submit_many(relay, SENDER, 2 * THRESHOLD, tag="cap")).values())
            await wait_for_statuses(relay, {"deferred": 2 * THRESHOLD})
        attempts = await attempts_of(relay, ids)
        tried = Counter(a.workspace_id for rows in attempts.values() for a in rows)
        assert all(a.outcome == "retry" for rows in attempts.values() for a in rows)

        states = {ws: relay.health.health(ws).state for ws in members}
        assert sorted(states.values()) == ["degraded", "open"], states  # one out, never both
        [ejected] = [ws for ws, state in states.items() if state == "open"]
        [kept] = [ws for ws in members if ws != ejected]
        assert [e["workspace_id"] for e in logs if e["event"] == HEALTH_CHANGED] == [ejected]
        assert changes(logs, ejected) == [("healthy", "open")]
        breaker = relay.health.breaker(kept)
        assert breaker is not None and breaker.state == "closed" and breaker.consecutive >= THRESHOLD + 1
        # Ejected on its THRESHOLD-th failure, never tried again. The kept member failed past the threshold (it
        # would have opened) and still takes decisions: every message was tried on it.
        assert tried[ejected] == THRESHOLD
        assert tried[kept] == len(ids) > THRESHOLD
        assert await relay.queue.status_counts() == {"deferred": len(ids)}  # none failed
    finally:
        await relay.stop()


async def test_a_one_member_pool_with_its_member_ejected_defers_its_mail_until_it_recovers(
    sqlite_url: str, tmp_path: Path
) -> None:
    clock = ManualClock()
    base_open = 30.0
    with SmtpSink() as sink:
        proxy = TcpProxy("127.0.0.1", sink.port).start()
        only = with_health(
            smtp_workspace("only-ws", [], proxy.port),
            consecutive_failures=1,
            base_open_seconds=base_open,
            **NO_CHECKS,
        )
        data = config(
            sqlite_url,
            [only],
            # 100 %: the only member may be ejected (below that a one-member pool never ejects it).
            load_balancing_pools=[pool(POOL_ID, ["invite.com"], [("only-ws", 1.0)], max_ejection_percent=100)],
        )
        relay = await start_relay(data, tmp_path, clock=clock, rng=random.Random(SEED))
        try:
            await submit_many(relay, SENDER, 1, tag="alone")
            await wait_for_statuses(relay, {"sent": 1})

            proxy.cut()
            with structlog.testing.capture_logs() as logs:
                [failing] = (await submit_many(relay, SENDER, 1, tag="alone", first=1)).values()
                await wait_for_statuses(relay, {"sent": 1, "deferred": 1})
            assert changes(logs, "only-ws") == [("healthy", "open")]
            ejected = relay.health.health("only-ws")
            until = ejected.until
            assert ejected.state == "open" and until == clock.now() + timedelta(seconds=base_open)

            [waiting] = (await submit_many(relay, SENDER, 1, tag="alone", first=2)).values()
            await wait_for_statuses(relay, {"sent": 1, "deferred": 2})
            # The failed message's retry falls due (its backoff is well under a second): it waits too, untried.
            clock.advance(1)
            relay.worker.notify()  # type: ignore[union-attr]

            async def both_wait_for_the_ejection() -> bool:
                found = await views(relay, [failing, waiting])
                return all(
                    v.next_attempt_at is not None and abs((v.next_attempt_at - until).total_seconds()) < 0.01
                    for v in found
                )

            await async_wait_for(both_wait_for_the_ejection, timeout=5, what="both messages to wait for the ejection")
            attempts = await attempts_of(relay, [failing, waiting])
            assert [(a.workspace_id, a.outcome) for a in attempts[failing]] == [("only-ws", "retry")]
            assert attempts[waiting] == []  # waiting for the member is not an attempt
            for view in await views(relay, [failing, waiting]):
                assert view.status == "deferred" and view.last_error is not None
                assert view.last_error.startswith("pool_exhausted"), view.last_error
            assert len(sink.received()) == 1

            # Back, and the ejection ends: the first send is the half-open probe; it succeeds and closes the breaker.
            proxy.start()
            with structlog.testing.capture_logs() as logs:
                clock.advance(base_open)
                relay.worker.notify()  # type: ignore[union-attr]
                await async_wait_for(lambda: health_is(relay, "only-ws", "healthy"), timeout=5, what="the probe")
                # A message decided while the probe was out looks again 2 s later (not at the probe's timeout).
                clock.advance(2.1)
                relay.worker.notify()  # type: ignore[union-attr]
                await wait_for_statuses(relay, {"sent": 3})
            assert changes(logs, "only-ws") == [("open", "half_open"), ("half_open", "healthy")]
            attempts = await attempts_of(relay, [failing, waiting])
            assert [(a.workspace_id, a.outcome) for a in attempts[failing]] == [
                ("only-ws", "retry"),
                ("only-ws", "sent"),
            ]
            assert [(a.workspace_id, a.outcome) for a in attempts[waiting]] == [("only-ws", "sent")]
            assert len(sink.received()) == 3
        finally:
            await relay.stop()
            proxy.cut()


# -- shared through Redis: what one process writes, another sees ------------------------------------------------


async def test_the_ejection_cap_holds_for_failures_recorded_at_once_through_redis(
    sqlite_url: str, tmp_path: Path
) -> None:
    with redis_run() as run:
        members = (f"dead-a-{run}", f"dead-b-{run}")
        workspaces = [
            with_health(smtp_workspace(ws, [], free_port()), consecutive_failures=1, **NO_CHECKS) for ws in members
        ]
        data = config(
            sqlite_url,
            workspaces,
            load_balancing_pools=[
                pool(POOL_ID, ["invite.com"], [(ws, 1.0) for ws in members], max_ejection_percent=50)
            ],
            redis_url=REDIS_URL,
        )
        relay = await start_relay(data, tmp_path, clock=ManualClock())
        try:
            refused = Outcome("retry", response="SMTPConnectError: connection refused")
            # Two sends, one on each member, ending together: what the delivery worker reports for concurrent
            # deliveries of one process (and what two processes report to the shared store).
            await asyncio.gather(*(relay.health.observe(ws, refused, refused.response or "") for ws in members))
            stored = await relay.breakers.states(members)
            assert sorted(s.state for s in stored.values()) == ["closed", "open"], stored
        finally:
            await relay.stop()


async def test_a_change_made_by_another_process_is_seen_by_decisions_within_a_second(
    sqlite_url: str, tmp_path: Path
) -> None:
    clock = ManualClock()
    with redis_run() as run:
        member = f"member-{run}"
        data = config(
            sqlite_url,
            [with_health(sandbox_workspace(member, [], tmp_path / "outbox"), **NO_CHECKS)],
            load_balancing_pools=[pool(POOL_ID, ["invite.com"], [(member, 1.0)], max_ejection_percent=100)],
            redis_url=REDIS_URL,
        )
        relay = await start_relay(data, tmp_path, clock=clock)
        # The other process: its own breakers over the same Redis.
        other = Breakers(RedisBreakerStore(REDIS_URL), BreakerSettings(consecutive_failures=1), clock, "other-process")
        try:
            await relay.health.refresh(force=True)  # t = 0: read from Redis
            clock.advance(0.5)
            await relay.health.observe(member, Outcome("sent"), "")  # t = 0.5: this process's own send succeeds
            clock.advance(0.01)
            await other.failure(member, "SMTPConnectError: connection refused")  # t = 0.51: the other one ejects it
            assert (await other.states([member]))[member].state == "open"
            clock.advance(0.89)
            await relay.health.refresh()  # t = 1.40: the view's refresh is due
            clock.advance(0.2)
            await relay.health.refresh()  # t = 1.60: 1.09 s after the change
            assert relay.health.health(member).state == "open"
            assert relay.health.blocked_until(member) is not None
        finally:
            await other.aclose()
            await relay.stop()

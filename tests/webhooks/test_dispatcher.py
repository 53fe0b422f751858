"""The dispatcher against a real receiver, on SQLite, PostgreSQL and MariaDB, time driven by a manual clock:
a receiver down for five minutes gets every event afterwards, none lost, in order per message; an endpoint that
fails for 24 hours is disabled with an audit entry and its deliveries are given up; several dispatchers (as
several processes) share the work without breaking the order."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from datetime import timedelta

import pytest
import sqlalchemy as sa

from relay.clock import ManualClock
from relay.store import AuditLog, Database, EndpointRow, EventLog, WebhookStore
from relay.store.tables import events, webhook_deliveries
from relay.store.timestamps import to_db
from relay.webhooks import Dispatcher
from tests.support.receiver import Receiver

MESSAGES = [f"01MSG{n:021d}" for n in range(6)]
STEPS = ("message.queued", "load_balancing.workspace_selected", "message.deferred", "message.sent")


async def emit_traffic(db: Database, clock: ManualClock) -> int:
    """Each message's events interleaved with the others', as concurrent deliveries produce them; plus events
    about no message. Returns how many were emitted."""
    log = EventLog(db, clock)
    count = 0
    for step in STEPS:
        for message_id in MESSAGES:
            await log.emit(step, {"message_id": message_id, "step": step}, message_id)
            count += 1
        await log.emit("config.changed", {"target_id": step})
        count += 1
    return count


def received_in_order(receiver: Receiver) -> dict[str, list[str]]:
    """Per message, the steps in the order the receiver first accepted them."""
    seen: dict[str, list[str]] = defaultdict(list)
    for post in receiver.accepted():
        event = post.json()
        message_id = event["data"].get("message_id")
        if message_id is not None and event["data"]["step"] not in seen[message_id]:
            seen[message_id].append(event["data"]["step"])
    return seen


async def test_a_receiver_down_for_five_minutes_loses_nothing(db: Database) -> None:
    clock = ManualClock()
    store = WebhookStore(db, clock)
    with Receiver() as receiver:
        await store.sync_file([EndpointRow(id="hook", url=receiver.url, secret="s3cret", events=("*",))])
        emitted = await emit_traffic(db, clock)
        dispatcher = Dispatcher(store, clock=clock, owner="test", rng=random.Random(7), lease_seconds=30)
        back_at = clock.now() + timedelta(minutes=5)
        receiver.status = 503
        for _ in range(2000):
            if clock.now() >= back_at:
                receiver.status = 200
            await dispatcher.run_once()
            if clock.now() >= back_at and await store.pending_count() == 0:
                break
            clock.advance(5)
        await dispatcher.aclose()
        assert await store.pending_count() == 0
        # none lost: the traffic, and `config.changed` about the endpoint's own creation
        assert len({p.headers["x-relay-event-id"] for p in receiver.accepted()}) == emitted + 1
        assert received_in_order(receiver) == {m: list(STEPS) for m in MESSAGES}  # in order per message
        refused = [p for p in receiver.posts if p.answered == 503]
        assert refused, "the receiver was down: posts were refused and retried"
        [endpoint] = await store.endpoints()
        assert endpoint.enabled and endpoint.failing_since is None  # recovered: the run of failures is over
        log = await store.deliveries("hook")
        assert {d.status for d in log} == {"delivered"} and max(d.attempts for d in log) > 1


async def test_an_endpoint_failing_for_a_day_is_disabled_and_audited(db: Database) -> None:
    clock = ManualClock()
    store = WebhookStore(db, clock)
    with Receiver() as receiver:
        receiver.status = 500
        await store.sync_file([EndpointRow(id="hook", url=receiver.url, secret=None, events=("message.*",))])
        await EventLog(db, clock).emit("message.sent", {"message_id": MESSAGES[0], "step": "x"}, MESSAGES[0])
        dispatcher = Dispatcher(store, clock=clock, owner="test", rng=random.Random(1))
        for _ in range(200):
            await dispatcher.run_once()
            clock.advance(600)
            if not (await store.endpoints())[0].enabled:
                break
        await dispatcher.aclose()
    [endpoint] = await store.endpoints()
    assert not endpoint.enabled and "every delivery failed since" in (endpoint.disabled_reason or "")
    [entry] = [e for e in await AuditLog(db).entries(target_type="webhook") if e.action == "disable"]
    assert entry.actor == "dispatcher" and entry.before["enabled"] and not entry.after["enabled"]  # type: ignore[index]
    [delivery] = await store.deliveries("hook")
    assert delivery.status == "failed" and "given up" in (delivery.last_error or "")


async def test_several_dispatchers_share_the_work_in_order(db: Database) -> None:
    clock = ManualClock()
    store = WebhookStore(db, clock)
    with Receiver() as receiver:
        await store.sync_file([EndpointRow(id="hook", url=receiver.url, secret=None, events=("*",))])
        emitted = await emit_traffic(db, clock)
        dispatchers = [
            Dispatcher(WebhookStore(db, clock), clock=clock, owner=f"p{n}", rng=random.Random(n), concurrency=2)
            for n in range(3)
        ]
        for _ in range(100):
            await asyncio.gather(*(d.run_once() for d in dispatchers))
            if await store.pending_count() == 0:
                break
        for d in dispatchers:
            await d.aclose()
    # each exactly once (nothing failed, nothing was leased twice), `config.changed` of the endpoint included
    assert len(receiver.accepted()) == emitted + 1
    assert received_in_order(receiver) == {m: list(STEPS) for m in MESSAGES}


async def test_a_later_event_waits_for_an_earlier_one_not_yet_fanned_out(db: Database) -> None:
    """Events of one message committed out of id order (or held by another process's fan-out) still go in order:
    a delivery waits while an earlier event of its message is not fanned out yet."""
    clock = ManualClock()
    store = WebhookStore(db, clock)
    await store.sync_file([EndpointRow(id="hook", url="http://127.0.0.1:9/hooks", secret=None, events=("*",))])
    log = EventLog(db, clock)
    await log.emit("message.queued", {"message_id": MESSAGES[0], "step": "queued"}, MESSAGES[0])
    await log.emit("message.sent", {"message_id": MESSAGES[0], "step": "sent"}, MESSAGES[0])
    async with db.begin() as connection:  # the later event fanned out first, as another process may
        first, second = (await connection.execute(sa.select(events.c.id).order_by(events.c.id))).scalars().all()[-2:]
        await connection.execute(events.update().where(events.c.id != first).values(fanned_out=True))
        await connection.execute(
            webhook_deliveries.insert().values(
                endpoint_id="hook", event_id=second, message_id=MESSAGES[0], status="pending", attempts=0,
                next_attempt_at=to_db(clock.now()), created_at=to_db(clock.now()),
            )
        )  # fmt: skip
    assert await store.claim(owner="b", limit=10, lease_seconds=60) == []  # `sent` waits for `queued`
    await store.fan_out(await store.endpoints())
    claimed = await store.claim(owner="a", limit=10, lease_seconds=60)
    assert [c.event_id for c in claimed] == [first]


async def test_a_secret_this_process_cannot_read_is_never_posted_unsigned(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RELAY_SECRET_TEST_HOOK", raising=False)
    clock = ManualClock()
    store = WebhookStore(db, clock)
    with Receiver() as receiver:
        endpoint = EndpointRow(id="hook", url=receiver.url, secret="env:RELAY_SECRET_TEST_HOOK", events=("*",))
        await store.sync_file([endpoint])
        await EventLog(db, clock).emit("message.sent", {"message_id": MESSAGES[0], "step": "x"}, MESSAGES[0])
        dispatcher = Dispatcher(store, clock=clock, owner="test", rng=random.Random(3))
        await dispatcher.run_once()
        assert receiver.posts == []
        [pending] = [d for d in await store.deliveries("hook", status="pending") if d.event_type == "message.sent"]
        assert "RELAY_SECRET_TEST_HOOK" in (pending.last_error or "")
        monkeypatch.setenv("RELAY_SECRET_TEST_HOOK", "now-set")
        clock.advance(60)
        await dispatcher.run_once()
        await dispatcher.aclose()
        assert len(receiver.accepted()) >= 1 and all("x-relay-signature" in p.headers for p in receiver.accepted())

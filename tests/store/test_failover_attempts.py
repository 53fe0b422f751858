from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from relay.clock import ManualClock
from relay.store import (
    AttemptRecord,
    Database,
    Deferred,
    Failed,
    Ingest,
    MessageQueue,
    Messages,
    NewMessage,
    QueuedMessage,
    Sent,
    new_message_id,
)


async def claimed(db: Database, clock: ManualClock) -> QueuedMessage:
    message = NewMessage(
        id=new_message_id(),
        mail_from="brian@invite.com",
        rcpt_to=("a@example.org", "b@example.org"),
        raw=b"Subject: hi\r\n\r\nhello\r\n",
        received_at=clock.now(),
    )
    writer = Ingest(db)
    writer.start()
    await writer.store(message)
    await writer.stop()
    [queued] = await MessageQueue(db, clock).claim(owner="w", limit=1, lease_seconds=60)
    return queued


def attempt(clock: ManualClock, workspace: str, outcome: str, status: str, **kwargs: Any) -> AttemptRecord:
    started = clock.now()
    clock.advance(0.5)
    return AttemptRecord(workspace, "sandbox", started, clock.now(), outcome, status, pool_id="medical", **kwargs)


async def test_failed_over_attempts_are_numbered_in_order_and_counted(db: Database) -> None:
    clock = ManualClock()
    message = await claimed(db, clock)
    queue = MessageQueue(db, clock)
    evidence = {"strategy": "capacity_weighted", "scores": {"gmail-1": 0.8, "gmail-2": 0.4}}
    quota = attempt(clock, "gmail-1", "retry", "421", selection=evidence, sent_as="brian@gmail-1.invite.com")
    refused = attempt(clock, "gmail-2", "deferred", "452")
    sent = attempt(clock, "gmail-3", "sent", "250", provider_message_id="abc")
    assert await queue.complete(message, sent, Sent(), earlier=[quota, refused])
    records = await Messages(db).attempts(message.id)
    assert [(r.attempt_number, r.workspace_id, r.outcome) for r in records] == [
        (1, "gmail-1", "retry"),
        (2, "gmail-2", "deferred"),
        (3, "gmail-3", "sent"),
    ]
    assert [(r.pool_id, r.selection, r.sent_as) for r in records] == [
        ("medical", evidence, "brian@gmail-1.invite.com"),
        ("medical", None, None),
        ("medical", None, None),
    ]
    assert records[0].latency_ms == 500
    view = await Messages(db).get(message.id)
    assert view is not None and (view.status, view.attempts, view.workspace_id) == ("sent", 3, "gmail-3")
    sends = await Messages(db).counted_sends(clock.now() - timedelta(hours=1))
    assert [(s.workspace_id, s.outcome, s.pool_id, s.recipients) for s in sends] == [
        ("gmail-1", "retry", "medical", 2),
        ("gmail-2", "deferred", "medical", 2),
        ("gmail-3", "sent", "medical", 2),
    ]
    assert sends[0].sent_as == "brian@gmail-1.invite.com"
    assert sends[0].mail_from == "brian@invite.com"


async def test_numbering_continues_on_the_next_pass_and_temp_failures_add_up(db: Database) -> None:
    clock = ManualClock()
    message = await claimed(db, clock)
    queue = MessageQueue(db, clock)
    first = [attempt(clock, "gmail-1", "retry", "421"), attempt(clock, "gmail-2", "retry", "451")]
    until = clock.now() + timedelta(seconds=30)
    assert await queue.complete(message, first[1], Deferred(until, "all busy"), earlier=first[:1])
    clock.advance(30)
    [again] = await queue.claim(owner="w", limit=1, lease_seconds=60)
    assert (again.attempts, again.temp_failures) == (2, 2)
    second = [attempt(clock, "gmail-1", "retry", "421"), attempt(clock, "gmail-3", "permanent", "550")]
    assert await queue.complete(again, second[1], Failed("550 no"), earlier=second[:1])
    records = await Messages(db).attempts(message.id)
    assert [r.attempt_number for r in records] == [1, 2, 3, 4]
    assert [r.workspace_id for r in records] == ["gmail-1", "gmail-2", "gmail-1", "gmail-3"]
    view = await Messages(db).get(message.id)
    assert view is not None and (view.status, view.attempts, view.workspace_id) == ("failed", 4, "gmail-3")


async def test_a_lost_lease_still_records_every_attempt(db: Database) -> None:
    clock = ManualClock()
    message = await claimed(db, clock)
    queue = MessageQueue(db, clock)
    clock.advance(61)
    [other] = await queue.claim(owner="v", limit=1, lease_seconds=60)
    earlier = [attempt(clock, "gmail-1", "retry", "421")]
    assert not await queue.complete(message, attempt(clock, "gmail-2", "sent", "250"), Sent(), earlier=earlier)
    assert [r.attempt_number for r in await Messages(db).attempts(message.id)] == [1, 2]  # both sends happened
    assert await queue.complete(other, attempt(clock, "gmail-3", "sent", "250"), Sent())
    view = await Messages(db).get(message.id)
    assert view is not None and view.status == "sent"


async def test_earlier_attempts_need_a_final_one(db: Database) -> None:
    clock = ManualClock()
    message = await claimed(db, clock)
    queue = MessageQueue(db, clock)
    with pytest.raises(AssertionError):
        await queue.complete(message, None, Sent(), earlier=[attempt(clock, "gmail-1", "retry", "421")])
    # No attempt at all (the message never reached a provider) still works as before.
    assert await queue.complete(message, None, Deferred(clock.now(), "paused"))
    assert await Messages(db).attempts(message.id) == []


async def test_concurrent_completions_of_different_messages(db: Database) -> None:
    clock = ManualClock()
    messages = [await claimed(db, clock) for _ in range(5)]
    queue = MessageQueue(db, clock)
    await asyncio.gather(
        *(
            queue.complete(
                m, attempt(clock, "gmail-2", "sent", "250"), Sent(), earlier=[attempt(clock, "g1", "retry", "421")]
            )
            for m in messages
        )
    )
    for m in messages:
        assert [r.attempt_number for r in await Messages(db).attempts(m.id)] == [1, 2]

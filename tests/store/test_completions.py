"""Outcomes written together (group commit): one transaction, yet each caller learns its own result.

Concurrent `MessageQueue.complete` calls share transactions. A message whose lease was taken by another worker
must read False, alone; the others in its transaction are recorded, with their attempts and events, and every
attempt — the stale one's included — stays on record, as when each outcome had a transaction of its own.
"""

from __future__ import annotations

import asyncio

import sqlalchemy as sa

from relay.clock import ManualClock
from relay.store import AttemptRecord, Database, Deferred, MessageQueue, Messages, Sent
from relay.store.tables import events
from tests.store.test_queue import ingest, new


async def test_concurrent_outcomes_share_a_commit_and_a_lost_lease_fails_alone(db: Database) -> None:
    clock = ManualClock()
    messages = [new(clock) for _ in range(40)]
    await ingest(db, messages)
    queue = MessageQueue(db, clock)
    claimed = await queue.claim(owner="a", limit=40, lease_seconds=30)
    assert len(claimed) == 40
    # The lease of one message runs out and another worker claims it: "a"'s outcome for it is stale.
    stolen = claimed[7]
    async with db.begin() as connection:
        await connection.execute(sa.text("UPDATE messages SET lease_owner = 'b/1' WHERE id = :id"), {"id": stolen.id})
    attempt = AttemptRecord("ws", "sandbox", clock.now(), clock.now(), "sent", "250")
    retry = AttemptRecord("ws", "sandbox", clock.now(), clock.now(), "retry", "451")
    later = clock.now().replace(year=clock.now().year + 1)

    def outcome(n: int) -> tuple[AttemptRecord, Sent | Deferred]:
        return (retry, Deferred(until=later, reason="451 later")) if n % 3 == 0 else (attempt, Sent())

    results = await asyncio.gather(*(queue.complete(message, *outcome(n)) for n, message in enumerate(claimed)))

    assert results == [message.id != stolen.id for message in claimed]
    store = Messages(db)
    for n, message in enumerate(claimed):
        view = await store.get(message.id)
        assert view is not None
        assert len(await store.attempts(message.id)) == 1  # the stale attempt happened: it is on record too
        if message.id == stolen.id:
            assert view.status == "sending"  # left to the worker that holds the lease
        elif n % 3 == 0:
            assert (view.status, view.attempts, view.last_error) == ("deferred", 1, "451 later")
        else:
            assert (view.status, view.attempts) == ("sent", 1)
    async with db.read() as connection:
        subjects = [
            row.message_id
            for row in await connection.execute(
                sa.select(events.c.message_id).where(events.c.type.in_(("message.sent", "message.deferred")))
            )
        ]
    assert sorted(subjects) == sorted(message.id for message in claimed if message.id != stolen.id)
    async with db.read() as connection:
        failures = dict((await connection.execute(sa.text("SELECT id, temp_failures FROM messages"))).all())
    assert failures == {m.id: 1 if n % 3 == 0 and m.id != stolen.id else 0 for n, m in enumerate(claimed)}

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import timedelta

import sqlalchemy as sa

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
    Sent,
    WorkspaceStates,
    new_message_id,
)


def new(clock: ManualClock, **kwargs: object) -> NewMessage:
    defaults: dict[str, object] = {
        "id": new_message_id(),
        "mail_from": "brian@invite.com",
        "rcpt_to": ("a@example.org", "b@example.org"),
        "raw": b"Subject: hi\r\n\r\n\x00\xff binary-safe\r\n",
        "received_at": clock.now(),
        "metadata": {"tags": ["t"]},
    }
    defaults.update(kwargs)
    return NewMessage(**defaults)  # type: ignore[arg-type]


async def ingest(db: Database, messages: list[NewMessage]) -> Ingest:
    writer = Ingest(db)
    writer.start()
    await asyncio.gather(*(writer.store(m) for m in messages))
    await writer.stop()
    return writer


async def test_migrations_are_idempotent_and_safe_from_concurrent_processes(database_url: str) -> None:
    env = {**os.environ, "RELAY_DATABASE_URL": database_url}
    command = [sys.executable, "-m", "relay.cli", "db", "upgrade"]
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(3)]
    outputs = [p.communicate(timeout=120)[0].decode() for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], outputs
    database = Database(database_url)
    await database.upgrade()  # and once more in-process: nothing left to do
    async with database.begin() as connection:
        version = (await connection.execute(sa.text("SELECT version_num FROM alembic_version"))).scalar()
        tables = await connection.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
    assert version == "0008"
    assert {"messages", "delivery_attempts", "workspaces", "load_balancing_pools", "pool_workspaces"} <= tables
    await database.dispose()


async def test_stored_message_round_trips_exactly(db: Database) -> None:
    clock = ManualClock()
    message = new(clock, raw=bytes(range(256)) * 4000)  # ~1 MB of every byte value
    await ingest(db, [message])
    view = await Messages(db).get(message.id)
    assert view is not None
    assert (view.status, view.attempts, view.metadata) == ("queued", 0, {"tags": ["t"]})
    assert view.rcpt_to == message.rcpt_to
    assert view.created_at == clock.now()
    assert await Messages(db).raw(message.id) == message.raw


async def test_concurrent_stores_share_commits(db: Database) -> None:
    clock = ManualClock()
    writer = Ingest(db)
    commits = 0

    def counted() -> None:
        nonlocal commits
        commits += 1

    writer.on_commit(counted)
    writer.start()
    await asyncio.gather(*(writer.store(new(clock)) for _ in range(200)))
    await writer.stop()
    assert 1 <= commits < 50  # group commit: far fewer transactions than messages
    assert (await MessageQueue(db, clock).status_counts()) == {"queued": 200}


async def test_a_row_the_database_refuses_fails_alone(db: Database) -> None:
    clock = ManualClock()
    writer = Ingest(db)
    writer.start()
    taken = new(clock)
    await writer.store(taken)
    good = [new(clock) for _ in range(5)]
    clash = new(clock, id=taken.id)  # the same primary key: the database refuses this row
    results = await asyncio.gather(*(writer.store(m) for m in [*good[:3], clash, *good[3:]]), return_exceptions=True)
    await writer.stop()
    assert [type(r).__name__ for r in results] == ["NoneType"] * 3 + ["StoreError"] + ["NoneType"] * 2
    assert (await MessageQueue(db, clock).status_counts()) == {"queued": 6}


async def test_sqlite_commits_are_fsynced(sqlite_url: str) -> None:
    database = Database(sqlite_url)
    async with database.begin() as connection:
        synchronous = (await connection.execute(sa.text("PRAGMA synchronous"))).scalar()
        journal = (await connection.execute(sa.text("PRAGMA journal_mode"))).scalar()
    await database.dispose()
    assert (synchronous, journal) == (2, "wal")  # FULL: the WAL is fsynced at every commit


async def test_claims_are_exclusive_across_engines(db: Database, database_url: str) -> None:
    clock = ManualClock()
    await ingest(db, [new(clock) for _ in range(60)])
    other = Database(database_url)
    queues = [MessageQueue(db, clock), MessageQueue(other, clock)] * 3
    batches = await asyncio.gather(*(q.claim(owner=f"w{i}", limit=15, lease_seconds=60) for i, q in enumerate(queues)))
    claimed = [m.id for batch in batches for m in batch]
    assert len(claimed) == len(set(claimed)) == 60
    await other.dispose()


async def test_an_expired_lease_is_claimed_again_and_the_old_owner_loses(db: Database) -> None:
    clock = ManualClock()
    await ingest(db, [new(clock)])
    queue = MessageQueue(db, clock)
    [first] = await queue.claim(owner="a", limit=10, lease_seconds=30)
    assert await queue.claim(owner="b", limit=10, lease_seconds=30) == []
    clock.advance(29)
    assert await queue.claim(owner="b", limit=10, lease_seconds=30) == []
    clock.advance(2)
    [second] = await queue.claim(owner="b", limit=10, lease_seconds=30)
    assert second.id == first.id
    attempt = AttemptRecord("ws", "sandbox", clock.now(), clock.now(), "sent", "250")
    assert not await queue.complete(first, attempt, Sent())  # the first owner's lease is gone
    assert await queue.complete(second, attempt, Sent())
    view = await Messages(db).get(first.id)
    assert view is not None and view.status == "sent" and view.next_attempt_at is None
    assert len(await Messages(db).attempts(first.id)) == 2  # both sends happened, both are on record


async def test_deferred_messages_wait_and_narrow_their_recipients(db: Database) -> None:
    clock = ManualClock()
    message = new(clock)
    await ingest(db, [message])
    queue = MessageQueue(db, clock)
    [claimed] = await queue.claim(owner="a", limit=1, lease_seconds=30)
    attempt = AttemptRecord("ws", "smtp", clock.now(), clock.now() + timedelta(milliseconds=250), "sent", "250")
    until = clock.now() + timedelta(seconds=60)
    assert await queue.complete(claimed, attempt, Deferred(until, "b deferred", ("b@example.org",)))
    assert await queue.claim(owner="a", limit=1, lease_seconds=30) == []
    assert await queue.next_due() == until
    clock.advance(60)
    [again] = await queue.claim(owner="a", limit=1, lease_seconds=30)
    assert again.pending_rcpts == ("b@example.org",)
    assert again.rcpt_to == message.rcpt_to
    assert again.attempts == 1
    [record] = await Messages(db).attempts(message.id)
    assert (record.attempt_number, record.latency_ms, record.outcome) == (1, 250, "sent")


async def test_failed_messages_leave_the_queue(db: Database) -> None:
    clock = ManualClock()
    message = new(clock)
    await ingest(db, [message])
    queue = MessageQueue(db, clock)
    [claimed] = await queue.claim(owner="a", limit=1, lease_seconds=30)
    attempt = AttemptRecord("ws", "smtp", clock.now(), clock.now(), "permanent", "550", "5.1.1 unknown user")
    assert await queue.complete(claimed, attempt, Failed("550 5.1.1 unknown user"))
    clock.advance(10**6)
    assert await queue.claim(owner="a", limit=1, lease_seconds=30) == []
    view = await Messages(db).get(message.id)
    assert view is not None and (view.status, view.last_error) == ("failed", "550 5.1.1 unknown user")


async def test_release_leases_of_a_restarted_instance(db: Database) -> None:
    clock = ManualClock()
    await ingest(db, [new(clock) for _ in range(3)])
    queue = MessageQueue(db, clock)
    await queue.claim(owner="relay-1", limit=2, lease_seconds=300)
    await queue.claim(owner="relay-10", limit=1, lease_seconds=300)
    assert await queue.release_leases("relay-1") == 2  # not relay-10's
    assert len(await queue.claim(owner="relay-1", limit=10, lease_seconds=300)) == 2


async def test_workspace_state_is_shared(db: Database, database_url: str) -> None:
    clock = ManualClock()
    other = Database(database_url)
    mine, theirs = WorkspaceStates(db, clock), WorkspaceStates(other, clock)
    await mine.mark_broken("gmail-1", "535 5.7.8 bad credentials", clock.now() + timedelta(minutes=5))
    state = (await theirs.all())["gmail-1"]
    assert (state.state, state.reason) == ("broken", "535 5.7.8 bad credentials")
    assert state.recheck_at == clock.now() + timedelta(minutes=5)
    await theirs.mark_active("gmail-1")
    assert (await mine.all())["gmail-1"].state == "active"
    await other.dispose()


async def test_sqlite_reads_do_not_wait_for_a_writer(sqlite_url: str) -> None:
    database = Database(sqlite_url)
    await database.upgrade()
    async with database.begin() as writer:  # holds SQLite's write lock (BEGIN IMMEDIATE)
        await writer.execute(sa.text("UPDATE workspaces SET state = state"))
        async with asyncio.timeout(5):
            assert await WorkspaceStates(database, ManualClock()).all() == {}
            assert await MessageQueue(database, ManualClock()).status_counts() == {}
    await database.dispose()

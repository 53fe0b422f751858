from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection
from structlog.testing import capture_logs

from relay.clock import ManualClock
from relay.store import Database, SelectionLog, SelectionView
from relay.store.tables import load_balancing_selections


class FlakyDatabase(Database):
    """The real database, except that writes fail while `down` is set, or once `budget` writes are used up."""

    down = False
    budget: int | None = None
    writes = 0

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        if self.budget is not None:
            self.down = self.down or self.budget == 0
            self.budget -= 1
        if self.down:
            raise OperationalError("INSERT", {}, ConnectionRefusedError("database is down"))
        self.writes += 1
        async with super().begin() as connection:
            yield connection


async def rows(db: Database) -> list[tuple[object, ...]]:
    table = load_balancing_selections
    query = sa.select(table.c.workspace_id, table.c.sender_email, table.c.success).order_by(table.c.id)
    async with db.read() as connection:
        return [tuple(r) for r in (await connection.execute(query)).all()]


async def test_settled_picks_are_written_with_their_outcome(db: Database) -> None:
    clock = ManualClock()
    selections = SelectionLog(db, clock)
    ok = selections.record("medical", "gmail-1", "brian@invite.com", 0.75)
    clock.advance(1)
    bad = selections.record("medical", "gmail-2", "anna@invite.com", 0.5)
    waiting = selections.record("medical", "gmail-3", "carl@invite.com", 0.25)
    selections.settle(bad, success=False)
    selections.settle(ok, success=True)
    selections.settle(10**9, success=True)  # unknown: ignored
    assert await selections.flush() == 2
    assert await rows(db) == [("gmail-1", "brian@invite.com", True), ("gmail-2", "anna@invite.com", False)]
    assert (selections.written, selections.pending) == (2, 1)
    [newest, oldest] = await selections.recent("medical")
    assert newest == SelectionView(newest.id, "medical", "gmail-2", "anna@invite.com", clock.now(), False, 0.5)
    assert oldest.selected_at == clock.now() - timedelta(seconds=1)
    assert oldest.selected_at.tzinfo is not None
    selections.settle(waiting, success=True)
    await selections.flush()
    assert selections.pending == 0


async def test_unsettled_picks_are_written_after_the_settle_timeout(db: Database) -> None:
    clock = ManualClock()
    selections = SelectionLog(db, clock, settle_timeout=30)
    handle = selections.record("medical", "gmail-1", "brian@invite.com", None)
    clock.advance(29)
    assert await selections.flush() == 0
    clock.advance(1)
    assert await selections.flush() == 1
    assert await rows(db) == [("gmail-1", "brian@invite.com", None)]
    selections.settle(handle, success=True)  # too late: already written, ignored
    assert await selections.flush() == 0
    [view] = await selections.recent()
    assert (view.success, view.capacity_score) == (None, None)


async def test_stop_writes_everything_still_buffered(db: Database) -> None:
    clock = ManualClock()
    selections = SelectionLog(db, clock, flush_interval=3600)
    selections.start()
    settled = selections.record("medical", "gmail-1", "a@invite.com", 1.0)
    selections.settle(settled, success=True)
    selections.record("medical", "gmail-2", "b@invite.com", 1.0)
    await selections.stop()
    assert await rows(db) == [("gmail-1", "a@invite.com", True), ("gmail-2", "b@invite.com", None)]
    assert (selections.written, selections.pending) == (2, 0)


async def test_the_background_task_writes_settled_picks(db: Database) -> None:
    selections = SelectionLog(db, ManualClock(), flush_interval=0.01)
    selections.start()
    selections.settle(selections.record("medical", "gmail-1", "a@invite.com", 1.0), success=True)
    async with asyncio.timeout(10):
        while selections.written < 1:
            await asyncio.sleep(0.01)
    await selections.stop()
    assert await rows(db) == [("gmail-1", "a@invite.com", True)]


async def test_a_database_error_keeps_the_entries_for_the_next_flush(database_url: str) -> None:
    db = FlakyDatabase(database_url)
    await db.upgrade()
    clock = ManualClock()
    selections = SelectionLog(db, clock, batch_size=2)
    for n in range(5):
        selections.settle(selections.record("medical", f"gmail-{n}", f"u{n}@invite.com", 0.5), success=n % 2 == 0)
    db.down = True
    with capture_logs() as logs:
        assert await selections.flush() == 0
    assert [(e["event"], e["log_level"]) for e in logs] == [("selections.write_failed", "warning")]
    assert "database is down" in logs[0]["error"]
    assert (selections.written, selections.pending, selections.dropped) == (0, 5, 0)
    db.down = False
    assert await selections.flush() == 5
    assert db.writes == 3  # batches of 2, 2 and 1, one transaction each
    assert await rows(db) == [(f"gmail-{n}", f"u{n}@invite.com", n % 2 == 0) for n in range(5)]
    await db.dispose()


async def test_an_outage_mid_flush_keeps_the_rest_in_order(database_url: str) -> None:
    db = FlakyDatabase(database_url)
    await db.upgrade()
    selections = SelectionLog(db, ManualClock(), batch_size=2)
    for n in range(5):
        selections.settle(selections.record("medical", f"gmail-{n}", "a@invite.com", 0.5), success=True)
    db.budget = 1  # the first batch goes through, the second meets the outage
    assert await selections.flush() == 2
    assert selections.pending == 3
    selections.settle(selections.record("medical", "gmail-5", "a@invite.com", 0.5), success=True)
    db.down, db.budget = False, None
    assert await selections.flush() == 4
    assert [r[0] for r in await rows(db)] == [f"gmail-{n}" for n in range(6)]
    assert (selections.written, selections.dropped) == (6, 0)
    await db.dispose()


async def test_an_outage_that_outlasts_the_buffer_drops_the_oldest(database_url: str) -> None:
    db = FlakyDatabase(database_url)
    await db.upgrade()
    selections = SelectionLog(db, ManualClock(), max_buffer=4)
    db.down = True
    with capture_logs() as logs:
        for n in range(6):
            selections.settle(selections.record("medical", f"gmail-{n}", "a@invite.com", 0.5), success=True)
            assert await selections.flush() == 0
    assert [e["event"] for e in logs].count("selections.buffer_full") == 1  # once per outage, not per pick
    db.down = False
    await selections.stop()
    assert [r[0] for r in await rows(db)] == [f"gmail-{n}" for n in range(2, 6)]
    assert (selections.written, selections.dropped) == (4, 2)
    await db.dispose()


async def test_an_overflowing_buffer_drops_the_oldest_and_counts_them(db: Database) -> None:
    clock = ManualClock()
    selections = SelectionLog(db, clock, max_buffer=3)
    handles = [selections.record("medical", f"gmail-{n}", "a@invite.com", 0.5) for n in range(5)]
    assert (selections.dropped, selections.pending) == (2, 3)
    for handle in handles:
        selections.settle(handle, success=True)  # the dropped two are unknown now: ignored
    assert await selections.flush() == 3
    assert [r[0] for r in await rows(db)] == ["gmail-2", "gmail-3", "gmail-4"]


async def test_scores_are_clamped_and_senders_truncated(db: Database) -> None:
    clock = ManualClock()
    selections = SelectionLog(db, clock)
    sender = "x" * 300 + "@invite.com"
    for score in (12.5, -0.3, 0.123456, 0.99995, float("nan")):
        selections.settle(selections.record("medical", "gmail-1", sender, score), success=True)
    await selections.flush()
    views = await selections.recent(limit=10)
    assert [v.capacity_score for v in reversed(views)] == [9.9999, 0.0, 0.1235, 1.0, None]
    assert {v.sender_email for v in views} == {sender[:255]}


async def test_recent_and_counts_per_pool(db: Database) -> None:
    clock = ManualClock()
    selections = SelectionLog(db, clock)
    start = clock.now()
    for pool, workspace, success in [
        ("medical", "gmail-1", True),
        ("medical", "gmail-1", False),
        ("medical", "gmail-2", True),
        ("general", "gmail-1", True),
    ]:
        clock.advance(1)
        selections.settle(selections.record(pool, workspace, "a@invite.com", 0.5), success=success)
    clock.advance(1)
    selections.record("medical", "gmail-2", "a@invite.com", 0.5)  # never settled
    clock.advance(60)
    await selections.flush()
    assert await selections.counts("medical", start) == {"gmail-1": (2, 1), "gmail-2": (2, 1)}
    assert await selections.counts("medical", start + timedelta(seconds=2)) == {"gmail-1": (1, 0), "gmail-2": (2, 1)}
    assert await selections.counts("nothing", start) == {}
    assert [v.pool_id for v in await selections.recent()] == ["medical", "general", "medical", "medical", "medical"]
    assert [v.workspace_id for v in await selections.recent("medical", limit=2)] == ["gmail-2", "gmail-2"]

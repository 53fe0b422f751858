"""The load-balancing decision log: every pick, buffered in memory and written in batches off the delivery path.

`record()` and `settle()` never do I/O and never raise, so logging a decision can neither slow down nor fail a
delivery. A background task writes entries once their outcome is known, or once `settle_timeout` has passed
without one (their `success` stays NULL). While the database is unreachable the entries wait in memory, up to
`max_buffer` of them; past that the oldest are dropped and counted in `dropped`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import sqlalchemy as sa
import structlog

from ..clock import Clock
from .database import Database
from .tables import load_balancing_selections
from .timestamps import from_db, to_db

__all__ = ["SelectionLog", "SelectionView"]

log = structlog.get_logger(__name__)

_MAX_SCORE = Decimal("9.9999")  # the largest value Numeric(5, 4) holds
_WRITE_TIMEOUT = 30.0  # a hung database must not hold up `stop()` for ever


@dataclass(frozen=True, slots=True)
class SelectionView:
    """One row of `load_balancing_selections`; `success` is None when no outcome arrived in time."""

    id: int
    pool_id: str | None
    workspace_id: str | None
    sender_email: str | None
    selected_at: datetime
    success: bool | None
    capacity_score: float | None


@dataclass(slots=True)
class _Entry:
    pool_id: str
    workspace_id: str
    sender: str
    selected_at: datetime
    capacity_score: Decimal | None
    recorded: float  # clock.monotonic() at record time: the settle timeout runs from here
    success: bool | None = None
    settled: bool = False

    def row(self) -> dict[str, Any]:
        return {
            "pool_id": self.pool_id,
            "workspace_id": self.workspace_id,
            "sender_email": self.sender,
            "selected_at": to_db(self.selected_at),
            "success": self.success,
            "capacity_score": self.capacity_score,
        }


class SelectionLog:
    """A buffered writer for the decision log. `written` and `dropped` count rows since construction."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        flush_interval: float = 0.5,
        settle_timeout: float = 30.0,
        max_buffer: int = 100_000,
        batch_size: int = 1000,
    ) -> None:
        self._db = db
        self._clock = clock
        self._flush_interval = flush_interval
        self._settle_timeout = settle_timeout
        self._max_buffer = max_buffer
        self._batch_size = max(1, batch_size)
        self._handles = itertools.count(1)
        # Keyed by handle, in handle order, which is age order: the first keys are the oldest entries.
        self._entries: dict[int, _Entry] = {}
        self._in_flight: dict[int, _Entry] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._overflowing = False
        self.written = 0
        self.dropped = 0

    def record(self, pool_id: str, workspace_id: str, sender: str, capacity_score: float | None) -> int:
        """Buffer one pick made now; returns the handle to `settle()` it with. No I/O."""
        handle = next(self._handles)
        self._entries[handle] = _Entry(
            pool_id=pool_id,
            workspace_id=workspace_id,
            sender=sender[:255],
            selected_at=self._clock.now(),
            capacity_score=_score(capacity_score),
            recorded=self._clock.monotonic(),
        )
        self._trim()
        return handle

    def settle(self, handle: int, success: bool) -> None:
        """Attach the delivery's outcome to a recorded pick. Unknown or already written handles are ignored."""
        entry = self._entries.get(handle) or self._in_flight.get(handle)
        if entry is not None:
            entry.success = success
            entry.settled = True

    @property
    def pending(self) -> int:
        """Entries not written yet."""
        return len(self._entries) + len(self._in_flight)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="relay-selection-log")

    async def stop(self) -> None:
        """Stop the background task, then write every buffered entry, settled or not."""
        if self._task is not None:
            async with self._lock:  # never cancel a batch half-written
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._flush(everything=True)

    async def flush(self) -> int:
        """Write every entry that is due now (settled, or past `settle_timeout`); returns how many were written."""
        return await self._flush(everything=False)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval)
            await self._flush(everything=False)

    async def _flush(self, *, everything: bool) -> int:
        async with self._lock:
            cutoff = self._clock.monotonic() - self._settle_timeout
            due = [h for h, e in self._entries.items() if everything or e.settled or e.recorded <= cutoff]
            total = 0
            for start in range(0, len(due), self._batch_size):
                batch = due[start : start + self._batch_size]
                self._in_flight = {h: self._entries.pop(h) for h in batch if h in self._entries}
                try:
                    await self._write([entry.row() for entry in self._in_flight.values()])
                except Exception as exc:
                    self._restore()
                    log.warning("selections.write_failed", error=_describe(exc), pending=len(self._entries))
                    break
                except BaseException:  # cancelled mid-write: the entries stay for whoever flushes next
                    self._restore()
                    raise
                total += len(self._in_flight)
                self._in_flight = {}
            if total:
                self.written += total
                self._overflowing = False
            return total

    async def _write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        async with asyncio.timeout(_WRITE_TIMEOUT), self._db.begin() as connection:
            await connection.execute(load_balancing_selections.insert().values(rows))

    def _restore(self) -> None:
        """Put a batch that failed back among the buffered entries, in age order, for the next flush."""
        merged = {**self._entries, **self._in_flight}
        self._entries = dict(sorted(merged.items()))
        self._in_flight = {}
        self._trim()

    def _trim(self) -> None:
        excess = len(self._entries) - self._max_buffer
        if excess <= 0:
            return
        for handle in list(itertools.islice(self._entries, excess)):
            del self._entries[handle]
        self.dropped += excess
        if not self._overflowing:
            self._overflowing = True  # once per outage, not once per pick
            log.warning("selections.buffer_full", max_buffer=self._max_buffer, dropped=self.dropped)

    async def recent(self, pool_id: str | None = None, limit: int = 100) -> list[SelectionView]:
        """The latest written selections, newest first, optionally of one pool."""
        table = load_balancing_selections
        query = sa.select(table).order_by(table.c.selected_at.desc(), table.c.id.desc()).limit(limit)
        if pool_id is not None:
            query = query.where(table.c.pool_id == pool_id)
        async with self._db.read() as connection:
            rows = (await connection.execute(query)).all()
        return [
            SelectionView(
                id=r.id,
                pool_id=r.pool_id,
                workspace_id=r.workspace_id,
                sender_email=r.sender_email,
                selected_at=from_db(r.selected_at),
                success=None if r.success is None else bool(r.success),
                capacity_score=None if r.capacity_score is None else float(r.capacity_score),
            )
            for r in rows
        ]

    async def counts(self, pool_id: str, since: datetime) -> dict[str, tuple[int, int]]:
        """workspace_id -> (selections, successes) of one pool since `since`; unsettled picks count as selections."""
        table = load_balancing_selections
        successes = sa.func.sum(sa.case((table.c.success.is_(sa.true()), 1), else_=0))
        query = (
            sa.select(table.c.workspace_id, sa.func.count(), successes)
            .where(table.c.pool_id == pool_id, table.c.selected_at >= to_db(since))
            .group_by(table.c.workspace_id)
        )
        async with self._db.read() as connection:
            rows = (await connection.execute(query)).all()
        return {r[0]: (int(r[1]), int(r[2] or 0)) for r in rows}


def _score(value: float | None) -> Decimal | None:
    """Clamp to what Numeric(5, 4) holds, [0, 9.9999], rounded to 4 places; NaN means no score."""
    if value is None or math.isnan(value):
        return None
    clamped = min(max(value, 0.0), float(_MAX_SCORE))
    return min(Decimal(repr(clamped)).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP), _MAX_SCORE)


def _describe(exc: BaseException) -> str:
    """The driver's own error (SQLAlchemy wraps it in `orig`), first line only."""
    cause = getattr(exc, "orig", None) or exc
    return f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"

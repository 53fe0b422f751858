"""What the dashboard reads about recent activity (issue 9): attempts per minute, sends per workspace and pool,
a workspace's last failures, and the event log. Each read is one grouped or limited query, cheap enough for a
page that refreshes every few seconds."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from .database import Database
from .tables import delivery_attempts, events
from .timestamps import from_db, to_db

__all__ = ["Activity", "EventView", "FailureView", "MinuteCounts", "minutes_back"]


@dataclass(frozen=True, slots=True)
class MinuteCounts:
    minute: datetime  # the minute's start, UTC
    outcomes: dict[str, int]  # attempt outcome ("sent", "retry", "permanent", ...) -> attempts that minute


@dataclass(frozen=True, slots=True)
class FailureView:
    message_id: str
    at: datetime
    outcome: str
    provider_status: str | None
    provider_response: str | None


@dataclass(frozen=True, slots=True)
class EventView:
    id: int
    type: str
    message_id: str | None
    occurred_at: datetime
    payload: dict[str, Any]  # what webhooks carry: {"event", "timestamp", "data"}

    @property
    def data(self) -> dict[str, Any]:
        data = self.payload.get("data")
        return data if isinstance(data, dict) else {}


def _minute(db: Database, column: Any) -> Any:
    """The column truncated to its minute, as text the same on every database ("2026-12-05 10:31")."""
    if db.dialect == "sqlite":
        return sa.func.strftime("%Y-%m-%d %H:%M", column)
    if db.dialect == "postgresql":
        return sa.func.to_char(column, "YYYY-MM-DD HH24:MI")
    return sa.func.date_format(column, "%Y-%m-%d %H:%i")


class Activity:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def per_minute(self, since: datetime) -> list[MinuteCounts]:
        """Attempts finished since `since`, by minute and outcome, oldest first (minutes without any left out)."""
        minute = _minute(self._db, delivery_attempts.c.finished_at).label("minute")
        query = (
            sa.select(minute, delivery_attempts.c.outcome, sa.func.count())
            .where(delivery_attempts.c.finished_at >= to_db(since))
            .group_by(minute, delivery_attempts.c.outcome)
        )
        by_minute: dict[str, dict[str, int]] = {}
        async with self._db.read() as connection:
            for label, outcome, count in await connection.execute(query):
                by_minute.setdefault(str(label), {})[outcome] = int(count)
        return [
            MinuteCounts(from_db(datetime.strptime(label, "%Y-%m-%d %H:%M")), outcomes)
            for label, outcomes in sorted(by_minute.items())
        ]

    async def sent_by_route(self, since: datetime) -> dict[tuple[str | None, str], int]:
        """Messages a provider accepted since `since`, by (pool or None for a direct route, workspace)."""
        attempts = delivery_attempts.c
        query = (
            sa.select(attempts.pool_id, attempts.workspace_id, sa.func.count())
            .where(attempts.finished_at >= to_db(since), attempts.outcome == "sent", attempts.workspace_id.is_not(None))
            .group_by(attempts.pool_id, attempts.workspace_id)
        )
        async with self._db.read() as connection:
            return {(pool, workspace): int(n) for pool, workspace, n in await connection.execute(query)}

    async def last_failures(self, workspace_id: str, limit: int = 5) -> list[FailureView]:
        """The workspace's latest attempts that did not end in `sent`, newest first."""
        attempts = delivery_attempts.c
        query = (
            sa.select(attempts.message_id, attempts.finished_at, attempts.outcome, attempts.provider_status,
                      attempts.provider_response)
            .where(attempts.workspace_id == workspace_id, attempts.outcome != "sent")
            .order_by(attempts.id.desc())
            .limit(limit)
        )  # fmt: skip
        async with self._db.read() as connection:
            rows = (await connection.execute(query)).all()
        return [FailureView(r[0], from_db(r[1]), r[2], r[3], r[4]) for r in rows]

    async def events(
        self, *, types: tuple[str, ...] = (), since: datetime | None = None, limit: int = 100
    ) -> list[EventView]:
        """The newest events first, of `types` when given."""
        query = sa.select(events).order_by(events.c.id.desc()).limit(limit)
        if types:
            query = query.where(events.c.type.in_(types))
        if since is not None:
            query = query.where(events.c.occurred_at >= to_db(since))
        async with self._db.read() as connection:
            rows = (await connection.execute(query)).all()
        return [EventView(r.id, r.type, r.message_id, from_db(r.occurred_at), dict(r.payload or {})) for r in rows]


def minutes_back(now: datetime, minutes: int) -> list[datetime]:
    """The starts of the last `minutes` minutes up to and including now's, oldest first."""
    current = now.replace(second=0, microsecond=0)
    return [current - timedelta(minutes=n) for n in range(minutes - 1, -1, -1)]

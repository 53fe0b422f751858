"""The delivery queue: claim due messages under a lease, write each outcome guarded by that lease."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from ..clock import Clock
from .database import Database, is_deadlock
from .events import completion_events, insert_events
from .tables import delivery_attempts, messages
from .timestamps import from_db, to_db
from .types import AttemptRecord, Deferred, Failed, QueuedMessage, Sent, Transition

__all__ = ["MessageQueue"]

_CLAIM_COLUMNS = [
    messages.c.id,
    messages.c.mail_from,
    messages.c.rcpt_to,
    messages.c.pending_rcpts,
    messages.c.raw,
    messages.c.attempts,
    messages.c.temp_failures,
    messages.c.created_at,
    messages.c["metadata"],
    messages.c.lease_owner,
]


class MessageQueue:
    """Claims are exclusive: SKIP LOCKED on PostgreSQL/MariaDB, BEGIN IMMEDIATE on SQLite."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._claims = itertools.count(1)

    async def claim(self, *, owner: str, limit: int, lease_seconds: float) -> list[QueuedMessage]:
        """Lease up to `limit` due messages (waiting ones, or sending ones whose lease ran out).

        A claim the database rolled back to break a deadlock is run again (up to three tries): it changed nothing.
        """
        for attempt in range(3):
            try:
                return await self._claim(owner=owner, limit=limit, lease_seconds=lease_seconds)
            except DBAPIError as exc:
                if attempt == 2 or not is_deadlock(exc):
                    raise
        raise AssertionError("unreachable")

    async def _claim(self, *, owner: str, limit: int, lease_seconds: float) -> list[QueuedMessage]:
        now = self._clock.now()
        expires = to_db(now + timedelta(seconds=lease_seconds))
        token = f"{owner}/{next(self._claims)}"
        due = (
            sa.select(messages.c.id)
            .where(messages.c.next_attempt_at <= to_db(now))
            .order_by(messages.c.next_attempt_at)
            .limit(limit)
        )
        if self._db.supports_skip_locked:
            due = due.with_for_update(skip_locked=True)
        async with self._db.begin() as connection:
            ids = list((await connection.execute(due)).scalars())
            if not ids:
                return []
            await connection.execute(
                messages.update()
                .where(messages.c.id.in_(ids))
                .values(
                    status="sending",
                    lease_owner=token,
                    lease_expires_at=expires,
                    next_attempt_at=expires,
                    updated_at=to_db(now),
                )
            )
            rows = (await connection.execute(sa.select(*_CLAIM_COLUMNS).where(messages.c.id.in_(ids)))).all()
        return [_queued(row) for row in sorted(rows, key=lambda r: ids.index(r.id))]

    async def complete(
        self,
        message: QueuedMessage,
        attempt: AttemptRecord | None,
        transition: Transition,
        *,
        earlier: Sequence[AttemptRecord] = (),
        events: Sequence[dict[str, Any]] = (),
    ) -> bool:
        """Record `attempt` and move the message on. False if the lease was lost to another worker.

        `earlier` are attempts of the same delivery pass that failed over before `attempt`, in order; all
        of them are written in this transaction and numbered consecutively, `attempt` last. So are the events
        the pass implies (`store.events.completion_events`), after `events` given by the caller.
        """
        assert attempt is not None or not earlier, "failed-over attempts need the attempt that ended the pass"
        attempts = [*earlier, attempt] if attempt is not None else []
        now = to_db(self._clock.now())
        values: dict[str, Any] = {"updated_at": now, "lease_owner": None, "lease_expires_at": None}
        match transition:
            case Sent(note=note):
                values.update(status="sent", next_attempt_at=None, pending_rcpts=None, last_error=note)
            case Deferred(until=until, reason=reason, pending_rcpts=pending):
                values.update(status="deferred", next_attempt_at=to_db(until), last_error=reason)
                if pending is not None:
                    values["pending_rcpts"] = list(pending)
            case Failed(reason=reason):
                values.update(status="failed", next_attempt_at=None, last_error=reason)
        if attempts:
            values.update(attempts=messages.c.attempts + len(attempts), workspace_id=attempts[-1].workspace_id)
            retries = sum(1 for a in attempts if a.outcome == "retry")
            if retries:
                values["temp_failures"] = messages.c.temp_failures + retries
        rows = [_attempt_row(message, a, message.attempts + n) for n, a in enumerate(attempts, start=1)]
        async with self._db.begin() as connection:
            if rows:
                await connection.execute(delivery_attempts.insert(), rows)
            result = await connection.execute(
                messages.update()
                .where(messages.c.id == message.id, messages.c.lease_owner == message.lease_owner)
                .values(**values)
            )
            if result.rowcount == 1:
                at = self._clock.now()
                await insert_events(connection, [*events, *completion_events(message, attempts, transition, at)])
        return result.rowcount == 1

    async def release_leases(self, owner: str) -> int:
        """Make messages leased by `owner` (a previous run of this instance) due now; returns how many."""
        now = to_db(self._clock.now())
        async with self._db.begin() as connection:
            result = await connection.execute(
                messages.update()
                .where(messages.c.status == "sending", messages.c.lease_owner.startswith(f"{owner}/", autoescape=True))
                .values(status="queued", lease_owner=None, lease_expires_at=None, next_attempt_at=now)
            )
        return result.rowcount

    async def release(self, message: QueuedMessage) -> bool:
        """Give back a claimed message that was never sent (for example at shutdown): due again at once."""
        now = to_db(self._clock.now())
        async with self._db.begin() as connection:
            result = await connection.execute(
                messages.update()
                .where(messages.c.id == message.id, messages.c.lease_owner == message.lease_owner)
                .values(status="queued", lease_owner=None, lease_expires_at=None, next_attempt_at=now, updated_at=now)
            )
        return result.rowcount == 1

    async def cancel(self, message_id: str, reason: str) -> bool:
        """Fail a message that is waiting (queued or deferred) so it is never sent; False if it is not waiting
        (already sent or failed, unknown, or being sent right now)."""
        now = to_db(self._clock.now())
        async with self._db.begin() as connection:
            result = await connection.execute(
                messages.update()
                .where(messages.c.id == message_id, messages.c.status.in_(("queued", "deferred")))
                .values(status="failed", next_attempt_at=None, last_error=reason[:2000], updated_at=now)
            )
        return result.rowcount == 1

    async def next_due(self) -> datetime | None:
        """When the earliest waiting or leased message becomes due, or None if nothing is pending."""
        async with self._db.read() as connection:
            value = (await connection.execute(sa.select(sa.func.min(messages.c.next_attempt_at)))).scalar()
        return from_db(value) if value is not None else None

    async def status_counts(self) -> dict[str, int]:
        async with self._db.read() as connection:
            rows = await connection.execute(sa.select(messages.c.status, sa.func.count()).group_by(messages.c.status))
            return {row[0]: row[1] for row in rows}


def _queued(row: sa.Row[Any]) -> QueuedMessage:
    rcpt_to = tuple(row.rcpt_to)
    return QueuedMessage(
        id=row.id,
        mail_from=row.mail_from,
        rcpt_to=rcpt_to,
        pending_rcpts=tuple(row.pending_rcpts) if row.pending_rcpts is not None else rcpt_to,
        raw=bytes(row.raw),
        attempts=row.attempts,
        temp_failures=row.temp_failures,
        created_at=from_db(row.created_at),
        metadata=row._mapping["metadata"],
        lease_owner=row.lease_owner,
    )


def _attempt_row(message: QueuedMessage, attempt: AttemptRecord, number: int) -> dict[str, Any]:
    return {
        "message_id": message.id,
        "attempt_number": number,
        "workspace_id": attempt.workspace_id,
        "provider_kind": attempt.provider_kind,
        "started_at": to_db(attempt.started_at),
        "finished_at": to_db(attempt.finished_at),
        "outcome": attempt.outcome,
        "provider_status": attempt.provider_status,
        "provider_response": (attempt.provider_response or "")[:4000] or None,
        "provider_message_id": attempt.provider_message_id,
        "latency_ms": attempt.latency_ms,
        "recipients": attempt.recipients,
        "pool_id": attempt.pool_id,
        "selection": attempt.selection,
        "sent_as": attempt.sent_as,
    }

"""The delivery queue: claim due messages under a lease, write each outcome guarded by that lease."""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from ..clock import Clock
from ..errors import StoreError
from .database import Database, is_deadlock
from .events import completion_events, insert_events
from .tables import delivery_attempts, messages
from .timestamps import from_db, to_db
from .types import AttemptRecord, Deferred, Failed, QueuedMessage, Sent, Transition

__all__ = ["MessageQueue"]

_MAX_COMPLETIONS = 128  # outcomes per transaction

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
        self._completions: list[_Completion] = []
        self._committing = asyncio.Lock()

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

        Outcomes that arrive while another is being committed share the next transaction (group commit, as
        `Ingest` does for new mail): one fsync records many deliveries, and each caller still returns only
        once its own outcome is durable.
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
            values.update(attempts=len(attempts), workspace_id=attempts[-1].workspace_id)  # attempts: added
            retries = sum(1 for a in attempts if a.outcome == "retry")
            if retries:
                values["temp_failures"] = retries  # added
        completion = _Completion(
            message_id=message.id,
            owner=message.lease_owner,
            attempt_rows=[_attempt_row(message, a, message.attempts + n) for n, a in enumerate(attempts, start=1)],
            update=_completion_update(tuple(sorted(values)), leased=message.lease_owner is not None),
            params={
                **{f"v_{name}": value for name, value in values.items()},
                "w_id": message.id,
                **({"w_owner": message.lease_owner} if message.lease_owner is not None else {}),
            },
            events=[*events, *completion_events(message, attempts, transition, self._clock.now())],
            done=asyncio.get_running_loop().create_future(),
        )
        self._completions.append(completion)
        while not completion.done.done():
            async with self._committing:  # FIFO: whoever holds it commits everything pending, up to a batch
                if completion.done.done():
                    break
                batch = self._completions[:_MAX_COMPLETIONS]
                del self._completions[:_MAX_COMPLETIONS]
                if not batch:  # taken by a commit that failed without resolving it: never spin
                    raise StoreError("the outcome's commit was lost; it is written again")
                await self._commit_completions(batch)
        return completion.done.result()

    async def _commit_completions(self, batch: list[_Completion]) -> None:
        try:
            results = await self._write_completions(batch)
        except asyncio.CancelledError:
            # Cancelled mid-commit (shutdown): the others in this batch must not wait forever. Their callers
            # retry; a lost lease then reads False, as for any outcome recorded twice.
            for item in batch:
                if not item.done.done():
                    item.done.set_exception(StoreError("the commit was interrupted"))
            raise
        except Exception as exc:
            if len(batch) == 1:
                batch[0].done.set_exception(exc)
                return
            # One row the database refuses (or a deadlock) must not fail everyone sharing the transaction.
            try:
                for item in batch:
                    await self._commit_completions([item])
            except BaseException:  # cancelled in the fallback: the rest of the batch must not wait forever
                for item in batch:
                    if not item.done.done():
                        item.done.set_exception(StoreError("the commit was interrupted"))
                raise
            return
        for item, recorded in zip(batch, results, strict=True):
            item.done.set_result(recorded)

    async def _write_completions(self, batch: list[_Completion]) -> list[bool]:
        async with self._db.begin() as connection:
            # Which leases still hold, read under the write lock (BEGIN IMMEDIATE on SQLite; elsewhere the rows'
            # locks, taken first and in id order, before the attempts' foreign keys share-lock them): then one
            # executemany per statement shape instead of one round trip per outcome.
            current = (
                sa.select(messages.c.id, messages.c.lease_owner)
                .where(messages.c.id.in_([item.message_id for item in batch]))
                .order_by(messages.c.id)
            )
            if self._db.supports_skip_locked:
                current = current.with_for_update(key_share=True)  # PostgreSQL: FOR NO KEY UPDATE, as UPDATE takes
            owners: dict[str, str | None] = {row.id: row.lease_owner for row in await connection.execute(current)}
            rows = [row for item in batch for row in item.attempt_rows]
            if rows:
                await connection.execute(delivery_attempts.insert(), rows)
            held = [item for item in batch if item.message_id in owners and owners[item.message_id] == item.owner]
            shapes: dict[sa.Update, list[dict[str, Any]]] = {}
            for item in held:
                shapes.setdefault(item.update, []).append(item.params)
            counted = len(held) < 2 or connection.dialect.supports_sane_multi_rowcount  # not asyncpg's executemany
            for statement, params in shapes.items():
                result = await connection.execute(statement, params)
                if counted and result.rowcount != len(params):  # cannot happen under the lock; never guess
                    raise StoreError(f"recorded {result.rowcount} of {len(params)} outcomes")
            await insert_events(connection, [event for item in held for event in item.events])
        recorded = {item.message_id for item in held}
        return [item.message_id in recorded for item in batch]

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


@functools.cache
def _completion_update(columns: tuple[str, ...], *, leased: bool) -> sa.Update:
    """The guarded UPDATE that records an outcome, one per set of columns, built once: building it per message
    cost more CPU than executing it. `attempts` and `temp_failures` take what to add; the rest, their value."""
    values: dict[str, Any] = {}
    for name in columns:
        parameter = sa.bindparam(f"v_{name}", type_=messages.c[name].type)
        values[name] = messages.c[name] + parameter if name in ("attempts", "temp_failures") else parameter
    # `= NULL` matches nothing: a message without a lease is matched by IS NULL, as `== None` compiles.
    owner = messages.c.lease_owner == sa.bindparam("w_owner") if leased else messages.c.lease_owner.is_(None)
    return messages.update().where(messages.c.id == sa.bindparam("w_id"), owner).values(**values)


@dataclass
class _Completion:
    """One outcome waiting for the group commit."""

    message_id: str
    owner: str | None  # the lease it was claimed under
    attempt_rows: list[dict[str, Any]]
    update: sa.Update
    params: dict[str, Any]
    events: list[dict[str, Any]]
    done: asyncio.Future[bool]


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

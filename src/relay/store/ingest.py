"""Durable acceptance of new messages with group commit.

`store()` returns only after the message's row is committed (fsync'd by the database), so an SMTP
`250` sent after it survives `kill -9`. Callers that arrive while a commit is in flight are written
together in the next transaction: one fsync serves many sessions, and throughput grows with load.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy.exc import IntegrityError

from ..errors import StoreError
from .database import Database
from .events import insert_events, queued_event
from .tables import idempotency_keys, messages
from .timestamps import to_db
from .types import NewMessage

__all__ = ["Ingest"]

log = structlog.get_logger(__name__)


class Ingest:
    def __init__(self, db: Database, *, max_batch: int = 256, commit_timeout: float = 30.0) -> None:
        self._db = db
        self._max_batch = max_batch
        self._commit_timeout = commit_timeout
        self._pending: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._keys: dict[str, dict[str, Any]] = {}  # message id -> its idempotency key row, until committed
        self._events: dict[str, dict[str, Any]] = {}  # message id -> its `message.queued` event, until committed
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._on_commit: list[Callable[[], None]] = []
        self._idle = asyncio.Event()  # set whenever nothing is pending
        self._idle.set()

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Call `callback` after each batch commits (delivery workers use it to wake up)."""
        self._on_commit.append(callback)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="relay-ingest")

    async def stop(self) -> None:
        """Commit what is pending or in flight, then stop."""
        if self._task is None:
            return
        self._wakeup.set()
        await self._idle.wait()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def store(self, message: NewMessage) -> None:
        """Return once `message` is committed; raise StoreError if it could not be."""
        if self._task is None:
            raise StoreError("ingest is not running")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((_row(message), future))
        self._events[message.id] = queued_event(message)
        if message.idempotency_key is not None:
            self._keys[message.id] = {
                "key": message.idempotency_key,
                "message_id": message.id,
                "created_at": to_db(message.received_at),
            }
        self._idle.clear()
        self._wakeup.set()
        await future

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._commit(batch)
            self._idle.set()

    async def _commit(self, batch: list[tuple[dict[str, Any], asyncio.Future[None]]]) -> None:
        try:
            await self._insert([row for row, _ in batch])
        except IntegrityError as exc:
            if len(batch) > 1:
                for item in batch:
                    await self._commit([item])
                return
            key = self._keys.pop(batch[0][0]["id"], None)
            self._events.pop(batch[0][0]["id"], None)
            error: StoreError = (
                DuplicateKeyError(key["key"]) if key is not None else StoreError(f"could not store: {_describe(exc)}")
            )
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        except Exception as exc:
            if len(batch) > 1:
                # One row the database refuses must not cost every session sharing its transaction a 451:
                # write them one by one so only the bad one fails.
                for item in batch:
                    await self._commit([item])
                return
            log.error("ingest.commit_failed", message_id=batch[0][0]["id"], error=_describe(exc))
            failure = StoreError(f"could not store the message: {type(exc).__name__}")
            for row, future in batch:
                self._keys.pop(row["id"], None)
                self._events.pop(row["id"], None)
                if not future.done():
                    future.set_exception(failure)
            return
        for row, _ in batch:
            self._keys.pop(row["id"], None)
            self._events.pop(row["id"], None)
        for _, future in batch:
            if not future.done():
                future.set_result(None)
        for callback in self._on_commit:
            callback()

    async def _insert(self, rows: list[dict[str, Any]]) -> None:
        keys = [self._keys[row["id"]] for row in rows if row["id"] in self._keys]
        async with asyncio.timeout(self._commit_timeout), self._db.begin() as connection:
            await connection.execute(messages.insert(), rows)
            if keys:  # in the message's own transaction: a message and its key exist together or not at all
                await connection.execute(idempotency_keys.insert(), keys)
            # The outbox: `message.queued` commits with the message, or neither does.
            await insert_events(connection, [self._events[row["id"]] for row in rows if row["id"] in self._events])


class DuplicateKeyError(StoreError):
    """The message's idempotency key belongs to a message stored before; nothing was stored."""

    def __init__(self, key: str) -> None:
        super().__init__("this idempotency key was used already")
        self.key = key


def _row(message: NewMessage) -> dict[str, Any]:
    received = to_db(message.received_at)
    return {
        "id": message.id,
        "mail_from": message.mail_from,
        "rcpt_to": list(message.rcpt_to),
        "pending_rcpts": None,
        "raw": message.raw,
        "size": len(message.raw),
        "status": "queued",
        "attempts": 0,
        "temp_failures": 0,
        "next_attempt_at": received,
        "metadata": message.metadata,
        "source": message.source,
        "client_address": message.client_address,
        "authenticated_user": message.authenticated_user,
        "created_at": received,
        "updated_at": received,
        "resent_from": message.resent_from,
    }


def _describe(exc: BaseException) -> str:
    """The driver's own error (SQLAlchemy wraps it in `orig`), first line only."""
    cause = getattr(exc, "orig", None) or exc
    return f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"

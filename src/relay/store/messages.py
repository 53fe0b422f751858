"""Read access to stored messages and their attempts, for the CLI, the API and tests."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from .database import Database
from .tables import delivery_attempts, idempotency_keys, messages
from .timestamps import from_db, to_db

__all__ = ["AttemptView", "CountedSend", "MessageView", "Messages"]


@dataclass(frozen=True, slots=True)
class MessageView:
    id: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    status: str
    attempts: int
    next_attempt_at: datetime | None
    workspace_id: str | None
    last_error: str | None
    metadata: dict[str, Any]
    size: int
    created_at: datetime
    resent_from: str | None = None  # the message this one is a copy of (a resend), if any


@dataclass(frozen=True, slots=True)
class AttemptView:
    attempt_number: int
    workspace_id: str | None
    outcome: str
    provider_status: str | None
    provider_response: str | None
    provider_message_id: str | None
    started_at: datetime
    finished_at: datetime
    latency_ms: int
    recipients: dict[str, str] | None
    pool_id: str | None = None
    selection: dict[str, Any] | None = None
    sent_as: str | None = None


@dataclass(frozen=True, slots=True)
class CountedSend:
    """One delivery attempt as rate limits see it; the caller decides whether it still counts."""

    workspace_id: str
    mail_from: str
    recipients: int
    at: datetime
    provider_kind: str | None
    outcome: str
    provider_status: str | None
    pool_id: str | None = None  # a pool's failed-over attempts are rows like any other and count the same
    sent_as: str | None = None  # the envelope sender used, when rewritten; `mail_from` stays the original


class Messages:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, message_id: str) -> MessageView | None:
        async with self._db.read() as connection:
            row = (await connection.execute(sa.select(*_VIEW_COLUMNS).where(messages.c.id == message_id))).first()
        return _view(row) if row is not None else None

    async def search(
        self,
        *,
        status: str | None = None,
        sender: str | None = None,
        recipient: str | None = None,
        workspace_id: str | None = None,
        before: str | None = None,
        limit: int = 50,
    ) -> list[MessageView]:
        """Newest first (ids are ULIDs, so they sort by time); `before` continues a page after that id. `sender` and
        `recipient` match case-insensitively on part of the address."""
        query = sa.select(*_VIEW_COLUMNS).order_by(messages.c.id.desc()).limit(limit)
        if status is not None:
            query = query.where(messages.c.status == status)
        if sender is not None:
            query = query.where(sa.func.lower(messages.c.mail_from).contains(sender.lower(), autoescape=True))
        if recipient is not None:
            rcpts = sa.func.lower(sa.cast(messages.c.rcpt_to, sa.Text))
            query = query.where(rcpts.contains(recipient.lower(), autoescape=True))
        if workspace_id is not None:
            query = query.where(messages.c.workspace_id == workspace_id)
        if before is not None:
            query = query.where(messages.c.id < before)
        async with self._db.read() as connection:
            rows = (await connection.execute(query)).all()
        return [_view(row) for row in rows]

    async def by_idempotency_key(self, key: str, since: datetime) -> str | None:
        """The id of the message sent with `key` at or after `since`, if any."""
        query = sa.select(idempotency_keys.c.message_id).where(
            idempotency_keys.c.key == key, idempotency_keys.c.created_at >= to_db(since)
        )
        async with self._db.read() as connection:
            return (await connection.execute(query)).scalar()

    async def forget_idempotency_key(self, key: str, before: datetime) -> None:
        """Drop `key` if it is older than `before` (24 h): the key may be used again."""
        async with self._db.begin() as connection:
            await connection.execute(
                idempotency_keys.delete().where(
                    idempotency_keys.c.key == key, idempotency_keys.c.created_at < to_db(before)
                )
            )

    async def raw(self, message_id: str) -> bytes | None:
        async with self._db.read() as connection:
            value = (await connection.execute(sa.select(messages.c.raw).where(messages.c.id == message_id))).scalar()
        return bytes(value) if value is not None else None

    async def attempts(self, message_id: str) -> list[AttemptView]:
        query = (
            sa.select(delivery_attempts)
            .where(delivery_attempts.c.message_id == message_id)
            .order_by(delivery_attempts.c.attempt_number, delivery_attempts.c.id)
        )
        async with self._db.read() as connection:
            rows = (await connection.execute(query)).all()
        return [
            AttemptView(
                attempt_number=r.attempt_number,
                workspace_id=r.workspace_id,
                outcome=r.outcome,
                provider_status=r.provider_status,
                provider_response=r.provider_response,
                provider_message_id=r.provider_message_id,
                started_at=from_db(r.started_at),
                finished_at=from_db(r.finished_at),
                latency_ms=r.latency_ms,
                recipients=r.recipients,
                pool_id=r.pool_id,
                selection=r.selection,
                sent_as=r.sent_as,
            )
            for r in rows
        ]

    async def counted_sends(self, since: datetime) -> list[CountedSend]:
        """Every delivery attempt since `since`, oldest first, for rebuilding rate-limit counters."""
        query = (
            sa.select(
                delivery_attempts.c.workspace_id,
                messages.c.mail_from,
                messages.c.rcpt_to,
                delivery_attempts.c.started_at,
                delivery_attempts.c.provider_kind,
                delivery_attempts.c.outcome,
                delivery_attempts.c.provider_status,
                delivery_attempts.c.pool_id,
                delivery_attempts.c.sent_as,
            )
            .join(messages, messages.c.id == delivery_attempts.c.message_id)
            .where(delivery_attempts.c.started_at >= to_db(since), delivery_attempts.c.workspace_id.is_not(None))
            .order_by(delivery_attempts.c.started_at, delivery_attempts.c.id)
        )
        async with self._db.read() as connection:
            rows = (await connection.execute(query)).all()
        return [
            CountedSend(
                r.workspace_id,
                r.mail_from,
                len(r.rcpt_to),
                from_db(r.started_at),
                r.provider_kind,
                r.outcome,
                r.provider_status,
                r.pool_id,
                r.sent_as,
            )
            for r in rows
        ]


_VIEW_COLUMNS = [c for c in messages.c if c.name != "raw"]  # the list never carries message bodies


def _view(row: sa.Row[Any]) -> MessageView:
    m = row._mapping
    return MessageView(
        id=m["id"],
        mail_from=m["mail_from"],
        rcpt_to=tuple(m["rcpt_to"]),
        status=m["status"],
        attempts=m["attempts"],
        next_attempt_at=from_db(m["next_attempt_at"]) if m["next_attempt_at"] else None,
        workspace_id=m["workspace_id"],
        last_error=m["last_error"],
        metadata=m["metadata"],
        size=m["size"],
        created_at=from_db(m["created_at"]),
        resent_from=m["resent_from"],
    )

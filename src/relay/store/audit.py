"""The configuration audit log: every change with who, when, what, before and after (issue 7)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from .database import Database
from .events import event_row, insert_events
from .tables import audit_log
from .timestamps import from_db

__all__ = ["AuditEntry", "AuditLog", "audit_row", "record_change"]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    target_type: str
    target_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


def audit_row(
    at: datetime,
    actor: str,
    action: str,
    target_type: str,
    target_id: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> sa.Insert:
    """The insert that records one change; run it in the transaction that makes the change."""
    return audit_log.insert().values(
        at=at, actor=actor, action=action, target_type=target_type, target_id=target_id, before=before, after=after
    )


async def record_change(
    connection: AsyncConnection,
    at: datetime,
    actor: str,
    action: str,
    target_type: str,
    target_id: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    """Audit one configuration change and emit its `config.changed` event, in the change's transaction. The event
    says what changed and who changed it, not the documents (they may hold secrets): `GET /api/v1/audit` has
    them."""
    await connection.execute(audit_row(at, actor, action, target_type, target_id, before, after))
    data = {"target_type": target_type, "target_id": target_id, "action": action, "actor": actor}
    await insert_events(connection, [event_row("config.changed", at, data)])


class AuditLog:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, entry_id: int) -> AuditEntry | None:
        found = await self._select(sa.select(audit_log).where(audit_log.c.id == entry_id))
        return found[0] if found else None

    async def entries(
        self, *, target_type: str | None = None, target_id: str | None = None, limit: int = 100
    ) -> list[AuditEntry]:
        """Newest first."""
        query = sa.select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
        if target_type is not None:
            query = query.where(audit_log.c.target_type == target_type)
        if target_id is not None:
            query = query.where(audit_log.c.target_id == target_id)
        return await self._select(query)

    async def _select(self, query: sa.Select[Any]) -> list[AuditEntry]:
        async with self._db.read() as connection:
            rows = (await connection.execute(query)).all()
        return [
            AuditEntry(r.id, from_db(r.at), r.actor, r.action, r.target_type, r.target_id, r.before, r.after)
            for r in rows
        ]

"""Workspace definitions in the `workspaces` table: the source of truth every process runs by (issue 7).

The config file seeds them (`managed_by = "file"`, rewritten at start and on SIGHUP, removed when the file drops
them); the API and `relay config apply` take a workspace over (`managed_by = "api"`), after which the file leaves
it alone. Each change increments `version`, which every process polls to follow changes within a second.
Documents are JSON (the config file's workspace object); this module does not interpret them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from ..clock import Clock
from .audit import record_change
from .config_lock import config_change
from .database import Database
from .tables import workspaces
from .timestamps import to_db

__all__ = ["FILE_ACTOR", "WorkspaceDefinition", "WorkspaceTables"]

FILE_ACTOR = "config-file"


@dataclass(frozen=True, slots=True)
class WorkspaceDefinition:
    id: str
    document: dict[str, Any]
    managed_by: str
    version: int


class WorkspaceTables:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    @property
    def db(self) -> Database:
        return self._db

    async def versions(self) -> dict[str, int]:
        """(id → version) of every defined workspace: one small query, polled every second."""
        query = sa.select(workspaces.c.id, workspaces.c.version).where(workspaces.c.definition.is_not(None))
        async with self._db.read() as connection:
            return {row.id: row.version for row in (await connection.execute(query)).all()}

    async def load(self, connection: AsyncConnection | None = None) -> list[WorkspaceDefinition]:
        query = (
            sa.select(workspaces.c.id, workspaces.c.definition, workspaces.c.managed_by, workspaces.c.version)
            .where(workspaces.c.definition.is_not(None))
            .order_by(workspaces.c.id)
        )
        async with self._db.using(connection, write=False) as connection:
            rows = (await connection.execute(query)).all()
        return [WorkspaceDefinition(r.id, r.definition, r.managed_by or "file", r.version) for r in rows]

    async def get(self, workspace_id: str, connection: AsyncConnection | None = None) -> WorkspaceDefinition | None:
        return next((d for d in await self.load(connection) if d.id == workspace_id), None)

    async def sync_file(
        self, documents: Sequence[dict[str, Any]], connection: AsyncConnection | None = None
    ) -> list[str]:
        """Make the file-managed definitions exactly `documents` (audited as `config-file` where they change),
        except workspaces the API has taken over. Returns the ids left alone. Without `connection`, in a
        transaction of its own under the configuration write lock (an API change cannot interleave)."""
        listed = {str(d["id"]): d for d in documents}
        if connection is not None:
            return await self._sync(connection, listed)
        for tries_left in reversed(range(3)):
            try:
                async with config_change(self._db) as locked:
                    return await self._sync(locked, listed)
            except IntegrityError:
                # Another process inserted the same workspace first; the next try updates its row instead.
                if not tries_left:
                    raise
        raise AssertionError("unreachable")

    async def _sync(self, connection: AsyncConnection, listed: dict[str, dict[str, Any]]) -> list[str]:
        now = to_db(self._clock.now())
        query = sa.select(workspaces.c.id, workspaces.c.definition, workspaces.c.managed_by).where(
            sa.or_(workspaces.c.definition.is_not(None), workspaces.c.id.in_(list(listed)))
        )
        current = {r.id: r for r in (await connection.execute(query)).all()}
        ignored = []
        for workspace_id, document in listed.items():
            row = current.get(workspace_id)
            before = row.definition if row is not None else None
            if row is not None and row.managed_by == "api" and before is not None:
                ignored.append(workspace_id)
            elif before != document or (row is not None and row.managed_by != "file"):
                await _define(connection, workspace_id, document, "file", now, exists=row is not None)
                action = "create" if before is None else "update"
                await record_change(connection, now, FILE_ACTOR, action, "workspace", workspace_id, before, document)
        for workspace_id, row in current.items():
            if workspace_id not in listed and row.definition is not None and row.managed_by == "file":
                await _undefine(connection, workspace_id)
                await record_change(
                    connection, now, FILE_ACTOR, "delete", "workspace", workspace_id, row.definition, None
                )
        return sorted(ignored)

    async def save(
        self,
        document: dict[str, Any],
        *,
        actor: str,
        action: str,
        before: dict[str, Any] | None,
        connection: AsyncConnection | None = None,
    ) -> None:
        """Create or change one workspace (it becomes API-managed) and audit it, in one transaction (`connection`'s,
        when given)."""
        now = to_db(self._clock.now())
        workspace_id = str(document["id"])
        async with self._db.using(connection, write=True) as connection:
            exists = await connection.execute(sa.select(workspaces.c.id).where(workspaces.c.id == workspace_id))
            await _define(connection, workspace_id, document, "api", now, exists=exists.first() is not None)
            await record_change(connection, now, actor, action, "workspace", workspace_id, before, document)

    async def remove(
        self,
        workspace_id: str,
        *,
        actor: str,
        before: dict[str, Any],
        action: str = "delete",
        connection: AsyncConnection | None = None,
    ) -> bool:
        """Delete one workspace's definition (its state row stays) and audit it; False if it was not defined."""
        now = to_db(self._clock.now())
        async with self._db.using(connection, write=True) as connection:
            if not await _undefine(connection, workspace_id):
                return False
            await record_change(connection, now, actor, action, "workspace", workspace_id, before, None)
        return True


async def _define(
    connection: AsyncConnection,
    workspace_id: str,
    document: dict[str, Any],
    managed_by: str,
    now: datetime,
    *,
    exists: bool,
) -> None:
    values: dict[str, Any] = {"definition": document, "managed_by": managed_by, "defined_at": now}
    if exists:
        await connection.execute(
            workspaces.update()
            .where(workspaces.c.id == workspace_id)
            .values(version=workspaces.c.version + 1, **values)
        )
    else:
        await connection.execute(
            workspaces.insert().values(id=workspace_id, state="active", state_changed_at=now, version=1, **values)
        )


async def _undefine(connection: AsyncConnection, workspace_id: str) -> bool:
    result = await connection.execute(
        workspaces.update()
        .where(workspaces.c.id == workspace_id, workspaces.c.definition.is_not(None))
        .values(definition=None, managed_by=None, version=workspaces.c.version + 1)
    )
    return bool(result.rowcount)

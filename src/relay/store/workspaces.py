"""Shared runtime state of workspaces (active, or broken after refused credentials)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from ..clock import Clock
from .database import Database
from .events import event_row, insert_events, timestamp
from .tables import workspaces
from .timestamps import from_db, to_db
from .types import WorkspaceState

__all__ = ["WorkspaceStates"]


class WorkspaceStates:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def all(self) -> dict[str, WorkspaceState]:
        async with self._db.read() as connection:
            rows = (await connection.execute(sa.select(workspaces))).all()
        return {row.id: _state(row) for row in rows}

    async def troubled(self) -> dict[str, WorkspaceState]:
        """The workspaces not `active` (broken, paused): what the health view polls every half second, so it reads
        those rows' state columns alone, not every workspace's definition."""
        columns = (workspaces.c.id, workspaces.c.state, workspaces.c.state_reason, workspaces.c.state_changed_at)
        query = sa.select(*columns, workspaces.c.recheck_at).where(workspaces.c.state != "active")
        async with self._db.read() as connection:
            rows = (await connection.execute(query)).all()
        return {row.id: _state(row) for row in rows}

    async def mark_broken(self, workspace_id: str, reason: str, recheck_at: datetime) -> None:
        await self._set(workspace_id, state="broken", state_reason=reason[:2000], recheck_at=to_db(recheck_at))

    async def mark_paused(self, workspace_id: str, reason: str, until: datetime) -> None:
        """No new mail until `until`: an account-level quota (the workspace itself is fine)."""
        await self._set(workspace_id, state="paused", state_reason=reason[:2000], recheck_at=to_db(until))

    async def mark_active(self, workspace_id: str) -> None:
        await self._set(workspace_id, state="active", state_reason=None, recheck_at=None)

    async def _set(self, workspace_id: str, **values: Any) -> None:
        now = self._clock.now()
        values["state_changed_at"] = to_db(now)
        async with self._db.begin() as connection:
            previous = (
                await connection.execute(sa.select(workspaces.c.state).where(workspaces.c.id == workspace_id))
            ).scalar()
            updated = await connection.execute(
                workspaces.update().where(workspaces.c.id == workspace_id).values(**values)
            )
            if previous is not None and previous != values["state"]:
                await insert_events(connection, [_changed(workspace_id, previous, values, now)])
            if updated.rowcount:
                return
        try:
            async with self._db.begin() as connection:
                await connection.execute(workspaces.insert().values(id=workspace_id, **values))
                if values["state"] != "active":
                    await insert_events(connection, [_changed(workspace_id, "active", values, now)])
        except IntegrityError:  # another process inserted it first: update theirs
            async with self._db.begin() as connection:
                await connection.execute(workspaces.update().where(workspaces.c.id == workspace_id).values(**values))


def _changed(workspace_id: str, previous: str, values: dict[str, Any], at: datetime) -> dict[str, Any]:
    """`workspace.health_changed` for a change of the shared state (broken credentials, an account quota)."""
    names = {"active": "healthy", "broken": "auth_broken", "paused": "throttled"}
    recheck = values.get("recheck_at")
    return event_row(
        "workspace.health_changed",
        at,
        {
            "workspace_id": workspace_id,
            "previous": names.get(previous, previous),
            "state": names.get(values["state"], values["state"]),
            "reason": values.get("state_reason"),
            "until": timestamp(from_db(recheck)) if recheck is not None else None,
        },
    )


def _state(row: Any) -> WorkspaceState:
    return WorkspaceState(
        id=row.id,
        state=row.state,
        reason=row.state_reason,
        changed_at=from_db(row.state_changed_at),
        recheck_at=from_db(row.recheck_at) if row.recheck_at else None,
    )

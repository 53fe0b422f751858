"""Which workspaces may take mail now, from the shared `workspaces` table, cached for a second.

Until active health checks land (issue 6) a workspace is healthy unless it is broken (refused credentials) or
paused (an account-level quota) with its recheck time still ahead. Once that time has passed it is offered mail
again: the next send is the recheck.
"""

from __future__ import annotations

from datetime import datetime

from ..clock import Clock
from ..store import WorkspaceState, WorkspaceStates

__all__ = ["HealthView"]


class HealthView:
    def __init__(self, states: WorkspaceStates | None, clock: Clock, *, refresh_seconds: float = 1.0) -> None:
        self._states = states
        self._clock = clock
        self._refresh_seconds = refresh_seconds
        self._known: dict[str, WorkspaceState] = {}
        self._read_at = float("-inf")

    async def refresh(self, *, force: bool = False) -> None:
        """Re-read the table if the cached copy is older than `refresh_seconds` (or always with `force`)."""
        if self._states is None:
            return
        now = self._clock.monotonic()
        if force or now - self._read_at >= self._refresh_seconds:
            self._known = {k: v for k, v in (await self._states.all()).items() if v.state != "active"}
            self._read_at = now

    def state(self, workspace_id: str) -> WorkspaceState | None:
        """The workspace's trouble (broken or paused), or None when it is active."""
        return self._known.get(workspace_id)

    def blocked_until(self, workspace_id: str, now: datetime | None = None) -> datetime | None:
        """When a broken or paused workspace may be tried again, or None when it may take mail now."""
        state = self._known.get(workspace_id)
        if state is None or state.recheck_at is None:
            return None
        return state.recheck_at if state.recheck_at > (now or self._clock.now()) else None

    def available(self, workspace_id: str, now: datetime | None = None) -> bool:
        return self.blocked_until(workspace_id, now) is None

    def note(self, state: WorkspaceState) -> None:
        """This process just changed a workspace's state: use it before the next read."""
        if state.state == "active":
            self._known.pop(state.id, None)
        else:
            self._known[state.id] = state

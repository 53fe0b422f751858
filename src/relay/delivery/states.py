"""What a send's outcome says about its workspace (throttled, auth-broken, recovered): noted in this process at
once, written to the shared `workspaces` table after the attempt is recorded."""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog

from ..pools import HealthView
from ..providers import Outcome
from ..store import WorkspaceState, WorkspaceStates
from .backoff import RetryPolicy
from .transitions import summary

__all__ = ["StateRecorder"]

log = structlog.get_logger(__name__)

_MAX_PAUSE_SECONDS = 2 * 86_400.0


class StateRecorder:
    def __init__(self, states: WorkspaceStates, health: HealthView, policy: RetryPolicy) -> None:
        self._states = states
        self._health = health
        self._policy = policy
        self._changes: list[WorkspaceState] = []

    def note(self, workspace_id: str, outcome: Outcome, now: datetime) -> None:
        """What `outcome` says about the workspace: paused, broken or recovered. Noted in this process at once
        (the next decision avoids it); `persist` writes it for every process after the attempt."""
        wait = outcome.workspace_wait
        if outcome.kind == "quota" and outcome.quota_scope == "workspace":
            # The provider's own signal: stricter than our count, so the workspace gets no mail until then.
            wait = max(wait or 0.0, outcome.retry_after or self._policy.quota_retry_seconds)
        if wait:
            wait = min(wait, _MAX_PAUSE_SECONDS)  # a bogus far-future "retry after" must not park a workspace
            until = now + timedelta(seconds=wait)
            reason = summary(outcome)
            self._changes.append(WorkspaceState(workspace_id, "paused", reason, now, until))
            log.warning("workspace.paused", workspace_id=workspace_id, until=until.isoformat(), response=reason)
        elif outcome.kind == "auth":
            recheck = now + timedelta(seconds=self._policy.auth_recheck_seconds)
            reason = summary(outcome) or "credentials refused"
            self._changes.append(WorkspaceState(workspace_id, "broken", reason, now, recheck))
            log.warning("workspace.broken", workspace_id=workspace_id, response=reason)
        elif outcome.kind == "sent" and self._health.state(workspace_id) is not None:
            self._changes.append(WorkspaceState(workspace_id, "active", None, now, None))
            log.info("workspace.recovered", workspace_id=workspace_id)
        else:
            return
        old = self._health.health(workspace_id, now).state
        self._health.note(self._changes[-1])
        new = self._health.health(workspace_id, now).state
        if new != old:
            log.warning(
                "workspace.health_changed", workspace_id=workspace_id, old=old, new=new, error=summary(outcome) or None
            )

    async def persist(self) -> None:
        """Write the workspace states noted since the last call. A failure only delays what other processes
        learn (this one already knows); it must never keep an attempt that happened from being recorded."""
        changes, self._changes = self._changes, []
        for state in changes:
            try:
                if state.state == "paused" and state.recheck_at is not None:
                    await self._states.mark_paused(state.id, state.reason or "", state.recheck_at)
                elif state.state == "broken" and state.recheck_at is not None:
                    await self._states.mark_broken(state.id, state.reason or "", state.recheck_at)
                else:
                    await self._states.mark_active(state.id)
            except Exception as exc:
                log.warning("workspace.state_write_failed", workspace_id=state.id, error=f"{type(exc).__name__}: {exc}")

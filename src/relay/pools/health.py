"""Which workspaces may take mail now, and why not (issue 6), as one process sees it.

Two sources, each kept apart by kind of trouble:
- the shared `workspaces` table: `auth_broken` (credentials refused; rechecked) and `throttled` (an account quota
  or Retry-After; until then) — these are capacity and credentials, not health;
- the circuit breakers (`relay.health`, shared through Redis when configured): `open` (ejected until its
  deadline), `half_open` (one probe across all processes), and `degraded` (closed, but failing lately).
Both are cached for at most `refresh_seconds`; a decision reads the cache, and the send itself asks the breaker
for admission (`admit`), so a half-open workspace gets exactly one probe. `version` changes whenever this view may
answer differently for a reason other than the clock (a refresh that found something new, a noted state, a
breaker write through it or through `changed()`), so that a caller keeping what it read (the `LoadBalancer`'s
plans) knows to read again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import structlog

from ..clock import Clock
from ..health import Breakers, BreakerState, EjectionGroups
from ..providers import Outcome
from ..store import WorkspaceState, WorkspaceStates

__all__ = ["HealthState", "HealthView", "WorkspaceHealth"]

log = structlog.get_logger(__name__)

HealthState = Literal["healthy", "degraded", "throttled", "open", "half_open", "auth_broken"]

_STORE_BACKOFF_SECONDS = 5.0
_PROBE_WAIT_SECONDS = 2.0
_DB_STATES: dict[str, HealthState] = {"broken": "auth_broken", "paused": "throttled"}


@dataclass(frozen=True, slots=True)
class WorkspaceHealth:
    workspace_id: str
    state: HealthState
    last_error: str | None = None
    since: datetime | None = None
    until: datetime | None = None  # when it may take mail again (recheck, quota reset, end of the ejection)


class HealthView:
    def __init__(
        self,
        states: WorkspaceStates | None,
        clock: Clock,
        *,
        breakers: Breakers | None = None,
        refresh_seconds: float = 0.5,
    ) -> None:
        self._states = states
        self._clock = clock
        self._breakers = breakers
        self._refresh_seconds = refresh_seconds
        self._known: dict[str, WorkspaceState] = {}
        self._read_at = float("-inf")
        self._workspace_ids: list[str] = []
        self._down_until = float("-inf")
        self.version = 0
        # workspace id -> the pools it is in, for the breaker's ejection cap (set by the runtime)
        self.ejection_groups: Callable[[str], EjectionGroups] = lambda _workspace_id: ()

    def changed(self) -> None:
        """Something this view reads changed outside it (a health check wrote a breaker): answers may differ."""
        self.version += 1

    def track(self, workspace_ids: list[str]) -> None:
        """The workspaces whose breakers `refresh` keeps fresh."""
        self._workspace_ids = list(workspace_ids)

    async def refresh(self, *, force: bool = False) -> None:
        """Re-read both sources if the cached copy is older than `refresh_seconds` (or always with `force`)."""
        now = self._clock.monotonic()
        if not force and now - self._read_at < self._refresh_seconds:
            return
        self._read_at = now
        before = (self._known, self._blocked())
        try:
            if self._states is not None:
                self._known = await self._states.troubled()
            if self._breakers is not None and self._workspace_ids and not self._store_down():
                try:
                    await self._breakers.states(self._workspace_ids, fresh=True)  # one MGET: the view is never older
                except Exception as exc:  # Redis away: keep the last view
                    self._store_failed("health.refresh_failed", "*", exc)
        finally:
            if (self._known, self._blocked()) != before:  # most refreshes find nothing new: plans stay
                self.version += 1

    def state(self, workspace_id: str) -> WorkspaceState | None:
        """The workspace's credential or quota trouble (the shared table), or None when it has none."""
        return self._known.get(workspace_id)

    def breaker(self, workspace_id: str) -> BreakerState | None:
        return self._breakers.cached(workspace_id) if self._breakers is not None else None

    def health(self, workspace_id: str, now: datetime | None = None) -> WorkspaceHealth:
        now = now or self._clock.now()
        trouble = self._known.get(workspace_id)
        if trouble is not None and trouble.recheck_at is not None and trouble.recheck_at > now:
            return WorkspaceHealth(
                workspace_id, _DB_STATES.get(trouble.state, "throttled"), trouble.reason, trouble.changed_at,
                trouble.recheck_at,
            )  # fmt: skip
        breaker = self.breaker(workspace_id)
        if breaker is None:
            return WorkspaceHealth(workspace_id, "healthy")
        since = _at(breaker.last_change) if breaker.last_change else None
        if breaker.state == "open":
            return WorkspaceHealth(workspace_id, "open", breaker.last_error, since, _at(breaker.open_until))
        if breaker.state == "half_open":
            return WorkspaceHealth(workspace_id, "half_open", breaker.last_error, since, _at(breaker.probe_until))
        if breaker.consecutive > 0:
            return WorkspaceHealth(workspace_id, "degraded", breaker.last_error, since)
        return WorkspaceHealth(workspace_id, "healthy", None, since)

    def blocked_until(self, workspace_id: str, now: datetime | None = None) -> datetime | None:
        """When a workspace that may not take mail now may be tried again, or None when it may take mail now.

        Open: until its deadline (then the first send is the probe). Half-open with another process's probe
        under way: until that probe's timeout. Auth-broken or throttled: until the recheck / reset.
        """
        now = now or self._clock.now()
        trouble = self._known.get(workspace_id)
        if trouble is not None and trouble.recheck_at is not None and trouble.recheck_at > now:
            return trouble.recheck_at
        breaker = self.breaker(workspace_id)
        if breaker is None or breaker.state == "closed":
            return None
        stamp = now.timestamp()
        if breaker.state == "open" and breaker.open_until is not None and breaker.open_until > stamp:
            return _at(breaker.open_until)
        if breaker.state == "half_open" and breaker.probe_until is not None and breaker.probe_until > stamp:
            # A probe is out (ours or another process's): look again soon rather than at its timeout, since a
            # successful probe usually closes the breaker within a second.
            return min(_at(breaker.probe_until) or now, now + timedelta(seconds=_PROBE_WAIT_SECONDS))
        return None

    def available(self, workspace_id: str, now: datetime | None = None) -> bool:
        return self.blocked_until(workspace_id, now) is None

    async def admit(self, workspace_id: str) -> tuple[bool, str | None]:
        """May this process send through `workspace_id` now (the breaker's verdict), and the probe token when
        this send is the half-open probe. Fails open while the breaker store is away: health is advice, the rate
        limits are the law."""
        if self._breakers is None or self._store_down():
            return True, None
        before = self._blocking(workspace_id)
        try:
            return await self._breakers.admit_send(workspace_id)
        except Exception as exc:
            self._store_failed("health.admit_failed", workspace_id, exc)
            return True, None
        finally:
            self._moved(workspace_id, before)

    async def release(self, workspace_id: str, probe: str | None) -> None:
        """The send admitted with `probe` did not happen: let the next caller probe."""
        if probe is None or self._breakers is None or self._store_down():
            return
        before = self._blocking(workspace_id)
        try:
            await self._breakers.release_probe(workspace_id, probe)
        except Exception as exc:
            self._store_failed("health.release_failed", workspace_id, exc)
        finally:
            self._moved(workspace_id, before)

    async def observe(self, workspace_id: str, outcome: Outcome, error: str, probe: str | None = None) -> None:
        """Feed a send's outcome to the breaker: answered (sent, or refused for the message's own reasons) is
        success; a whole-message temporary failure (5xx, timeout, refused connection) is failure. Quota and
        credential answers are capacity and auth states, not health, and per-recipient trouble is the message's:
        if such a send was the probe, the probe is given back. Never raises."""
        breakers = self._breakers
        if breakers is None or self._store_down():
            return
        who = probe or ""  # "" never owns a probe: only the probe's own result may close or reopen
        before = self._blocking(workspace_id)
        try:
            if outcome.kind in ("sent", "permanent"):
                if probe is None and breakers.quiet_success(workspace_id):
                    return
                await breakers.success(workspace_id, probe=who)
            elif outcome.kind == "retry" and not outcome.rejected_recipients and not outcome.retry_recipients:
                await breakers.failure(workspace_id, error, self.ejection_groups(workspace_id), probe=who)
            elif probe is not None:
                await breakers.release_probe(workspace_id, probe)
        except Exception as exc:
            self._store_failed("health.record_failed", workspace_id, exc)
        finally:
            self._moved(workspace_id, before)

    def _blocked(self) -> dict[str, tuple[str, float | None, float | None]]:
        """What `blocked_until` reads of every tracked breaker that is not closed."""
        if self._breakers is None:
            return {}
        out: dict[str, tuple[str, float | None, float | None]] = {}
        for workspace_id in self._workspace_ids:
            breaker = self._breakers.cached(workspace_id)
            if breaker is not None and breaker.state != "closed":
                out[workspace_id] = (breaker.state, breaker.open_until, breaker.probe_until)
        return out

    def _blocking(self, workspace_id: str) -> tuple[str, float | None, float | None] | None:
        """What `blocked_until` reads of the workspace's cached breaker."""
        breaker = self.breaker(workspace_id)
        return None if breaker is None else (breaker.state, breaker.open_until, breaker.probe_until)

    def _moved(self, workspace_id: str, before: tuple[str, float | None, float | None] | None) -> None:
        if self._blocking(workspace_id) != before:
            self.version += 1

    def _store_down(self) -> bool:
        return self._clock.monotonic() < self._down_until

    def _store_failed(self, event: str, workspace_id: str, exc: Exception) -> None:
        """Log once, then leave the store alone for a few seconds: a blackholed Redis must not add its timeout
        to every send."""
        self._down_until = self._clock.monotonic() + _STORE_BACKOFF_SECONDS
        log.warning(event, workspace_id=workspace_id, error=f"{type(exc).__name__}: {exc}")

    def note(self, state: WorkspaceState) -> None:
        """This process just changed a workspace's credential or quota state: use it before the next read."""
        self.version += 1
        if state.state == "active":
            self._known.pop(state.id, None)
        else:
            self._known[state.id] = state


def _at(stamp: float | None) -> datetime | None:
    return datetime.fromtimestamp(stamp, UTC) if stamp is not None else None

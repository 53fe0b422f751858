"""Active health checks (issue 6, scope 1): each workspace's provider `check()` on an interval with jitter and a
timeout, in the background, never on the delivery path. With Redis one process checks each workspace per
interval (a lease); the verdict is shared through the breaker store and the `workspaces` table.

A passing check readmits an ejected workspace at once and clears refused credentials; refused credentials make
it `auth_broken` (rechecked at the next interval); any other failure feeds its breaker like a failed send.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from datetime import timedelta

import structlog

from ..clock import Clock
from ..config import HealthSettings
from ..health import Breakers, BreakerSettings, BreakerState
from ..providers import Health, Provider
from ..store import WorkspaceState, WorkspaceStates
from .health import HealthView

__all__ = ["HealthChecker", "breaker_settings", "log_breaker_change"]

log = structlog.get_logger(__name__)


class HealthChecker:
    def __init__(
        self,
        providers: Mapping[str, Provider],
        settings_for: Callable[[str], HealthSettings | None],
        health: HealthView,
        states: WorkspaceStates,
        breakers: Breakers,
        clock: Clock,
        *,
        rng: random.Random | None = None,
        tick_seconds: float = 0.5,
        max_concurrent: int = 8,
    ) -> None:
        self._providers = providers
        self._settings_for = settings_for
        self._health = health
        self._states = states
        self._breakers = breakers
        self._clock = clock
        self._rng = rng or random.Random()
        self._tick = tick_seconds
        self._due: dict[str, float] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()  # asked for while a check was running: check once more when it ends
        self._slots = asyncio.Semaphore(max_concurrent)

    async def run(self) -> None:
        """Check every due workspace, forever (cancel to stop). Due times follow the injectable clock."""
        while True:
            self.start_due()
            await asyncio.sleep(self._tick)

    def start_due(self) -> None:
        now = self._clock.monotonic()
        for workspace_id in list(self._providers):
            settings = self._settings_for(workspace_id)
            if settings is None or not settings.checks_enabled or workspace_id in self._running:
                continue
            due = self._due.setdefault(workspace_id, now + self._jitter(settings))
            if now >= due:
                self._due[workspace_id] = now + settings.check_interval_seconds + self._jitter(settings)
                self._start(workspace_id, settings, shared=True)

    def check_soon(self, workspace_id: str) -> None:
        """Check `workspace_id` now (its credentials were just changed by a reload), whatever its interval; if a
        check is running, once more after it."""
        settings = self._settings_for(workspace_id)
        if settings is None or not settings.checks_enabled:
            return
        if workspace_id in self._running:
            self._again.add(workspace_id)
        else:
            self._start(workspace_id, settings, shared=False)

    async def wait_idle(self) -> None:
        """Wait for the checks under way (tests)."""
        while self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)

    def stop(self) -> None:
        for task in self._running.values():
            task.cancel()

    def _jitter(self, settings: HealthSettings) -> float:
        return self._rng.uniform(0, settings.check_interval_seconds * 0.1)

    def _start(self, workspace_id: str, settings: HealthSettings, *, shared: bool) -> None:
        task = asyncio.create_task(self._check(workspace_id, settings, shared), name=f"health-check-{workspace_id}")
        self._running[workspace_id] = task
        task.add_done_callback(lambda _t: self._finished(workspace_id))

    def _finished(self, workspace_id: str) -> None:
        self._running.pop(workspace_id, None)
        if workspace_id in self._again:
            self._again.discard(workspace_id)
            self.check_soon(workspace_id)

    async def _check(self, workspace_id: str, settings: HealthSettings, shared: bool) -> None:
        provider = self._providers.get(workspace_id)
        if provider is None:
            return
        try:
            # One checker per workspace and interval across every process sharing the breaker store.
            if shared and not await self._breakers.lease(
                f"check:{workspace_id}", settings.check_interval_seconds * 0.9
            ):
                return
            async with self._slots:
                result = await self._probe(provider, settings)
            if self._providers.get(workspace_id) is not provider:
                self._again.add(workspace_id)  # a reload replaced it meanwhile: this verdict is about old settings
                return
            await self._apply(workspace_id, settings, result)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the store or the database is away: the next interval tries again
            log.warning("health.check_failed", workspace_id=workspace_id, error=f"{type(exc).__name__}: {exc}")

    @staticmethod
    async def _probe(provider: Provider, settings: HealthSettings) -> Health:
        try:
            async with asyncio.timeout(settings.check_timeout_seconds):
                return await provider.check()
        except TimeoutError:
            return Health(False, f"no answer within {settings.check_timeout_seconds:g} s")
        except Exception as exc:  # a provider bug: unhealthy, with the reason
            return Health(False, f"{type(exc).__name__}: {exc}")

    async def _apply(self, workspace_id: str, settings: HealthSettings, result: Health) -> None:
        now = self._clock.now()
        trouble = self._health.state(workspace_id)
        if result.ok:
            if trouble is not None and trouble.state == "broken":
                await self._states.mark_active(workspace_id)
                self._health.note(WorkspaceState(workspace_id, "active", None, now, None))
                log.info("workspace.health_changed", workspace_id=workspace_id, old="auth_broken", new="healthy")
            # The store decides, not this process's cache: another process may have opened it a moment ago.
            try:
                await self._breakers.recovered(workspace_id)
            finally:
                self._health.changed()
            return
        if result.auth:
            old = self._health.health(workspace_id, now).state
            recheck = now + timedelta(seconds=settings.check_interval_seconds)
            await self._states.mark_broken(workspace_id, result.detail, recheck)
            self._health.note(WorkspaceState(workspace_id, "broken", result.detail, now, recheck))
            if old != "auth_broken":
                log.warning(
                    "workspace.health_changed",
                    workspace_id=workspace_id,
                    old=old,
                    new="auth_broken",
                    error=result.detail,
                )
            return
        try:
            await self._breakers.failure(
                workspace_id, f"check: {result.detail}", self._health.ejection_groups(workspace_id)
            )
        finally:
            self._health.changed()


def breaker_settings(health: HealthSettings, probe_timeout_seconds: float) -> BreakerSettings:
    """A workspace's `health` section as the breaker's settings."""
    return BreakerSettings(
        consecutive_failures=health.consecutive_failures,
        failure_rate=health.failure_rate,
        window_seconds=health.window_seconds,
        min_requests=health.min_requests,
        base_open_seconds=health.base_open_seconds,
        max_open_seconds=health.max_open_seconds,
        decay_seconds=health.decay_seconds,
        probe_timeout_seconds=probe_timeout_seconds,
    )


def log_breaker_change(workspace_id: str, old: BreakerState, new: BreakerState) -> None:
    """`workspace.health_changed` for a breaker transition (the events issue turns it into a webhook event)."""
    names = {"closed": "healthy", "open": "open", "half_open": "half_open"}
    log.warning(
        "workspace.health_changed",
        workspace_id=workspace_id,
        old=names[old.state],
        new=names[new.state],
        error=new.last_error,
        ejections=new.ejections,
        open_until=new.open_until,
    )

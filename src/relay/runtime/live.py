"""The configuration one process runs by, kept current without restarts.

Three things change it: a SIGHUP (the config file again), a change in the database (a workspace or pool changed
by the API, `relay config apply`, a rollback or another process), and this process's own API writes. Database
changes are found by polling — one small query a second for workspace versions, the pool tables — and, with
Redis, a pub/sub notice makes every process look at once. Whatever the source, the new configuration is adopted
the same way: pools written and re-read, providers rebuilt where their section changed, routing and limits
swapped. A configuration that does not validate is refused as a whole and the running one kept.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from ..config import Settings
from ..config.reload import header_rewrites, restart_required
from ..errors import ConfigError, ProviderError
from ..pools import ChangeNotices, HealthChecker, HealthView, PoolCatalog, Reading, WorkspaceDefinitions
from ..providers import Provider, ProviderContext, build_provider
from ..routing import Router

__all__ = ["LiveConfig"]

log = structlog.get_logger(__name__)


class LiveConfig:
    def __init__(
        self,
        file_settings: Settings,
        *,
        definitions: WorkspaceDefinitions,
        pools: PoolCatalog,
        router: Router,
        health: HealthView,
        checker: HealthChecker,
        providers: dict[str, Provider],
        provider_context: Callable[[], ProviderContext],
        notices: ChangeNotices,
    ) -> None:
        self.file_settings = file_settings
        self.settings = file_settings
        self.rate_limits = {w.id: w.rate_limits for w in file_settings.workspaces}
        self.header_rewrites = header_rewrites(file_settings)  # the worker holds this dict: changed in place
        self.notices = notices
        self._definitions = definitions
        self._pools = pools
        self._router = router
        self._health = health
        self._checker = checker
        self._providers = providers
        self._provider_context = provider_context
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._adopted = False
        self.retired: list[Provider] = []  # replaced by a change, closed once their sends are done
        self._retiring: set[asyncio.Task[None]] = set()
        self._unbuilt: set[str] = set()  # enabled workspaces whose provider could not be built: retried each poll

    async def start(self) -> None:
        """Seed the database from the file, then run by what it holds. Raises `ConfigError` when the file would add
        a problem to the database's configuration (a domain a workspace of the API already serves)."""
        async with self._lock:
            # The file this process ran before is not known here: problems are "added" relative to this file with
            # the database as it is, i.e. a workspace of the file against the API's ones.
            added = await self._definitions.seed_checked(self.file_settings, self.file_settings)
            if added:
                raise ConfigError(added)
            await self._adopt(await self._definitions.read(self.file_settings), "config.started", write_pools=True)

    async def inspect(self) -> None:
        """Run by the database's workspaces and pools without writing anything (dry runs such as `relay pools
        test`); raises `ConfigError` when they are invalid here, or the database's error when it is not set up."""
        settings = (await self._definitions.read(self.file_settings)).settings
        self.settings = settings
        self.rate_limits = {w.id: w.rate_limits for w in settings.workspaces}
        self._router.update(settings)
        self._health.track([w.id for w in settings.workspaces])
        await self._pools.use(settings)

    async def reload(self, file_settings: Settings) -> list[str]:
        """SIGHUP: adopt a re-read config file. Changes that need new connections or listeners are refused as a
        whole and returned (nothing is applied then); so is a result the database's workspaces make invalid."""
        needs_restart = restart_required(self.file_settings, file_settings)
        if needs_restart:
            log.error("config.reload_refused", restart_required=needs_restart)
            return needs_restart
        async with self._lock:
            added = await self._definitions.seed_checked(self.file_settings, file_settings)
            if added:  # nothing written: the database and every process keep what they have
                problems = [str(p) for p in added]
                log.error("config.reload_refused", problems=problems)
                return problems
            reading = await self._definitions.read(file_settings)
            self.file_settings = file_settings
            await self._adopt(reading, "config.reloaded", write_pools=True)
        await self.notices.publish("config-file")
        return []

    async def refresh(self, trigger: str = "poll") -> None:
        """Look at the database now: adopt changed workspace definitions, or re-read the pools. `trigger` (poll,
        notice, api) is logged with the change."""
        async with self._lock:
            if self._unbuilt:
                self._build_missing()
            if not await self._definitions.changed():
                await self._pools.refresh()
                return
            reading = await self._definitions.read(self.file_settings)
            # The writing process also writes its file's pools (their members may follow a workspace's opt-in);
            # the others only read, so processes with different files never take turns rewriting them.
            await self._adopt(reading, "config.applied", write_pools=trigger == "api", trigger=trigger)

    async def changed_here(self, what: str) -> None:
        """This process changed the database (an API write): follow at once, and tell the others."""
        await self.refresh("api")
        await self.notices.publish(what)

    def wake(self) -> None:
        """Another process says something changed: look before the next poll."""
        self._wake.set()

    async def follow(self, interval: float = 1.0) -> None:
        """Poll every `interval` (sooner when woken) until cancelled; an unreachable database keeps what runs."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            trigger = "notice" if self._wake.is_set() else "poll"
            self._wake.clear()
            try:
                await self.refresh(trigger)
            except Exception as exc:
                log.warning("config.refresh_failed", error=f"{type(exc).__name__}: {exc}")

    async def _adopt(self, reading: Reading, event: str, *, write_pools: bool, **context: str) -> None:
        settings = reading.settings
        if reading.problems:
            log.error(
                "config.database_invalid",
                problems=[str(p) for p in reading.problems],
                action="running the other workspaces; a workspace named here runs its last good version, or not at "
                "all: fix it through the API or roll the change back",
            )
        # First: if writing or reading the pools fails, nothing has changed (and the versions are not seen yet).
        await (self._pools.apply(settings) if write_pools else self._pools.use(settings))
        previous = self.settings if self._adopted else None
        self.settings = settings
        self.rate_limits = {w.id: w.rate_limits for w in settings.workspaces}
        changed = self._swap_providers(previous, settings)
        self._router.update(settings)
        self._health.track([w.id for w in settings.workspaces])
        if self._adopted:
            for workspace_id in changed:
                self._checker.check_soon(workspace_id)  # new credentials: learn at once whether they work
            log.info(
                event,
                **context,
                pools=len(self._pools.pools),
                workspaces=len(settings.workspaces),
                providers_rebuilt=changed or None,
            )
        self._adopted = True
        self._definitions.commit(reading)

    def _swap_providers(self, old: Settings | None, new: Settings) -> list[str]:
        """Build providers for new workspaces, rebuild those whose section changed (credentials, base_url, kind,
        enabled), retire those of removed workspaces. Sends in flight keep the old client; it is closed once they
        have had the send timeout to finish."""
        before = {w.id: w for w in old.workspaces} if old is not None else {}
        changed: list[str] = []
        retired: list[Provider] = []
        context = self._provider_context()
        for workspace in new.workspaces:
            previous = before.pop(workspace.id, None)
            if previous is not None and previous.provider == workspace.provider:
                continue
            changed.append(workspace.id)
            old_provider = self._providers.pop(workspace.id, None)
            if old_provider is not None:
                retired.append(old_provider)
            self._unbuilt.discard(workspace.id)
            if workspace.provider.enabled:
                try:
                    self._providers[workspace.id] = build_provider(workspace, context)
                except ProviderError as exc:
                    if not self._adopted:
                        raise  # at start: refuse to run with a workspace that cannot send
                    # Its mail waits (no provider) and the build is retried every second; the rest adopts the change.
                    self._unbuilt.add(workspace.id)
                    log.error("workspace.provider_unavailable", workspace_id=workspace.id, error=str(exc))
        for gone in before:
            self._unbuilt.discard(gone)
            provider = self._providers.pop(gone, None)
            if provider is not None:
                retired.append(provider)
        self.header_rewrites.clear()
        self.header_rewrites.update(header_rewrites(new))
        if retired:
            self.retired.extend(retired)
            task = asyncio.create_task(self._retire(retired, new.delivery.send_timeout_seconds + 5.0))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        return changed

    def _build_missing(self) -> None:
        """Retry the providers that could not be built (a key file not there yet, a variable set later)."""
        context = self._provider_context()
        for workspace_id in sorted(self._unbuilt):
            workspace = self.settings.workspace(workspace_id)
            if workspace is None or not workspace.provider.enabled:
                self._unbuilt.discard(workspace_id)
                continue
            try:
                self._providers[workspace_id] = build_provider(workspace, context)
            except ProviderError:
                continue
            self._unbuilt.discard(workspace_id)
            self._checker.check_soon(workspace_id)
            log.info("workspace.provider_built", workspace_id=workspace_id)

    async def _retire(self, providers: list[Provider], after: float) -> None:
        # Sends pick the current provider right before sending, so the last one on a retired client started before
        # the swap and ends within the send timeout.
        await asyncio.sleep(after)
        for provider in providers:
            self.retired.remove(provider)
            with contextlib.suppress(Exception):
                await provider.aclose()

    async def aclose(self) -> None:
        """Stop retiring (the caller closes `retired` with the rest) and release the notices' connection."""
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        await self.notices.aclose()

"""Wires one Relay process: database, ingest, delivery workers, the SMTP listener and the HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
import sqlalchemy.exc
import structlog
from fastapi import FastAPI

from ..clock import Clock, SystemClock
from ..config import HealthSettings, RateLimits, Settings, SmtpSettings
from ..delivery import CapacityGate, DeliveryWorker, RetryPolicy, certainly_refused
from ..health import Breakers, BreakerSettings, BreakerState, BreakerStore, MemoryBreakerStore, RedisBreakerStore
from ..limits import Limit, LimitBackend, MemoryLimits, RedisLimits, Usage
from ..limits.policy import cost_of, limits_for
from ..metrics import Metrics
from ..pools import (
    CapacityView,
    ChangeNotices,
    HealthChecker,
    HealthView,
    LoadBalancer,
    PoolCatalog,
    WorkspaceDefinitions,
    breaker_settings,
    log_breaker_change,
)
from ..providers import Outcome, Provider, ProviderContext
from ..routing import Router
from ..smtp import NetworkPolicy, RelayHandler, start_smtp_server
from ..store import (
    CountedSend,
    Database,
    EventLog,
    InboundEvents,
    Ingest,
    MessageQueue,
    Messages,
    PoolTables,
    SelectionLog,
    SuppressionList,
    WebhookStore,
    WorkspaceStates,
    WorkspaceTables,
    timestamp,
)
from ..webhooks import Dispatcher, endpoints_from_settings
from ..webhooks.worker import WorkerProcess
from .http import HttpServer, http_app, start_http_server
from .live import LiveConfig
from .scrape import Scrape

__all__ = ["Relay"]

log = structlog.get_logger(__name__)


class Relay:
    """`start()` brings every part up (the 250 path first); `stop()` shuts down without losing mail."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        http: bool = True,
        webhooks_process: bool = False,
    ) -> None:
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.owner = settings.instance_name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._http_enabled = http
        self.db = Database(settings.database_url)
        self.queue = MessageQueue(self.db, self.clock)
        self.states = WorkspaceStates(self.db, self.clock)
        self.ingest = Ingest(self.db)
        self.providers: dict[str, Provider] = {}
        self.limits: LimitBackend = (
            RedisLimits(settings.redis_url, clock=self.clock) if settings.redis_url else MemoryLimits(self.clock)
        )
        self._counts_restored = False
        self.router = Router(settings, pools=())
        self.pool_tables = PoolTables(self.db, self.clock)
        self.pools = PoolCatalog(settings, self.pool_tables, self.router)
        self.workspace_tables = WorkspaceTables(self.db, self.clock)
        breaker_store: BreakerStore = (
            RedisBreakerStore(settings.redis_url) if settings.redis_url else MemoryBreakerStore()
        )
        self.event_log = EventLog(self.db, self.clock)
        self._emitting: set[asyncio.Task[None]] = set()
        self.breakers = Breakers(
            breaker_store, self._breaker_settings, self.clock, self.owner, on_change=self._breaker_changed
        )
        self.health = HealthView(self.states, self.clock, breakers=self.breakers)
        self.health.track([w.id for w in settings.workspaces])
        self.health.ejection_groups = self.pools.ejection_groups
        self.checker = HealthChecker(
            self.providers, self._health_settings, self.health, self.states, self.breakers, self.clock, rng=self.rng
        )
        self.selections = SelectionLog(self.db, self.clock)
        self.metrics = Metrics()
        # Webhooks (issue 8): the outbox's endpoints and the dispatcher that posts to them.
        self.webhook_store = WebhookStore(self.db, self.clock)
        self.dispatcher = Dispatcher(
            self.webhook_store,
            clock=self.clock,
            owner=self.owner,
            rng=self.rng,
            on_result=self.metrics.webhook_delivery,
        )
        # `relay serve` posts webhooks from a process of its own (never event-loop time taken from mail); tests
        # and tools run the dispatcher in this loop.
        self._webhooks_worker = (
            WorkerProcess(
                settings.database_url,
                self.owner,
                settings.log_level,
                settings.log_format,
                on_result=self.metrics.webhook_delivery,  # its posts, counted in this process's /metrics
            )
            if webhooks_process
            else None
        )
        self.balancer = LoadBalancer(
            self.pools,
            CapacityView(self.limits, self._limits_for_send, self.clock),
            self.health,
            clock=self.clock,
            rng=self.rng,
            selections=self.selections,
            metrics=self.metrics,
        )
        self.live = LiveConfig(
            settings,
            definitions=WorkspaceDefinitions(self.workspace_tables, self.pool_tables),
            pools=self.pools,
            router=self.router,
            health=self.health,
            checker=self.checker,
            providers=self.providers,
            provider_context=lambda: ProviderContext(rng=self.rng, clock=self.clock),
            notices=ChangeNotices(settings.redis_url, sender=self.owner),
        )
        # Suppression list and inbound provider events (issue 8): refusing is switched live by `suppression.enabled`.
        self.suppressions = SuppressionList(self.db, self.clock, enabled=lambda: self.settings.suppression.enabled)
        self.inbound = InboundEvents(self.db, self.clock)
        self.worker: DeliveryWorker | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._smtp: asyncio.Server | None = None
        self._http: HttpServer | None = None

    @property
    def settings(self) -> Settings:
        """The configuration this process runs by now: the file's, with the database's workspaces and pools."""
        return self.live.settings

    @property
    def smtp_address(self) -> tuple[str, int]:
        assert self._smtp is not None
        assert self._smtp.sockets
        host, port = self._smtp.sockets[0].getsockname()[:2]
        return host, port

    async def start(self) -> None:
        await self.db.upgrade()
        await self.live.start()  # the workspaces and pools the database holds (seeded from the file)
        s = self.settings
        if s.instance_name:
            released = await self.queue.release_leases(s.instance_name)
            if released:
                log.info("delivery.leases_released", owner=s.instance_name, messages=released)
        if isinstance(self.limits, MemoryLimits):
            await self._restore_counts(self.limits, await self._recent_sends())
            if self.db.dialect != "sqlite":
                log.warning(
                    "limits.per_process",
                    reason="without redis_url each process counts alone; several "
                    "processes on one database would together send up to N times each limit",
                )
        self.selections.start()
        await self.webhook_store.sync_file(endpoints_from_settings(s))
        if self._webhooks_worker is not None:
            self._webhooks_worker.start()
            self._tasks.append(asyncio.create_task(self._webhooks_worker.supervise(), name="relay-webhooks"))
        else:
            self._tasks.append(asyncio.create_task(self.dispatcher.run(), name="relay-webhooks"))
        self._tasks.append(asyncio.create_task(self.live.follow(), name="relay-config"))
        self._tasks.append(asyncio.create_task(self.live.notices.listen(self.live.wake), name="relay-config-notices"))
        self._tasks.append(asyncio.create_task(self.checker.run(), name="relay-health"))
        router = self.router
        self.ingest.start()
        self.worker = DeliveryWorker(
            queue=self.queue,
            states=self.states,
            router=router,
            balancer=self.balancer,
            health=self.health,
            providers=self.providers,
            policy=RetryPolicy.from_settings(s.delivery.retry),
            gate=CapacityGate(self.limits, self._limits_for_send),
            header_rewrites=self.live.header_rewrites,
            owner=self.owner,
            concurrency=s.delivery.concurrency,
            lease_seconds=s.delivery.lease_seconds,
            poll_interval=s.delivery.poll_interval_seconds,
            send_timeout=s.delivery.send_timeout_seconds,
            clock=self.clock,
            rng=self.rng,
            metrics=self.metrics,
        )
        if s.delivery.enabled:
            self.ingest.on_commit(self.worker.notify)
            self._tasks.append(asyncio.create_task(self.worker.run(), name="relay-delivery"))
        else:
            log.warning("delivery.disabled", reason="delivery.enabled is false: mail is accepted and queued only")
        smtp_settings = await self._fit_message_size(s.smtp)
        await self.suppressions.refresh(full=True)  # suppression list: known before the first RCPT (issue 8)
        self._tasks.append(asyncio.create_task(self.suppressions.run(), name="relay-suppressions"))
        handler = RelayHandler(
            router=router,
            ingest=self.ingest,
            networks=NetworkPolicy(s.smtp.allowed_networks),
            max_recipients=s.smtp.max_recipients,
            clock=self.clock,
            suppressed=self.suppressions.refuses,  # suppression list (issue 8)
            metrics=self.metrics,
        )
        self._smtp = await start_smtp_server(smtp_settings, handler, self.metrics)
        if self._http_enabled:
            await self._start_http()
        log.info(
            "relay.started",
            smtp=f"{self.smtp_address[0]}:{self.smtp_address[1]}",
            http=f"{s.http.host}:{s.http.port}" if self._http_enabled else None,
            database=self.db.dialect,
            workspaces=len(self.providers),
            pools=len(self.pools.pools),
            owner=self.owner,
        )

    def _breaker_changed(self, workspace_id: str, old: BreakerState, new: BreakerState) -> None:
        """Log a breaker transition and emit `workspace.health_changed` (its own transaction: the breaker's state
        lives in Redis or memory, not in the database)."""
        log_breaker_change(workspace_id, old, new)
        names = {"closed": "healthy", "open": "open", "half_open": "half_open"}
        data = {
            "workspace_id": workspace_id,
            "previous": names[old.state],
            "state": names[new.state],
            "reason": new.last_error,
            "until": timestamp(datetime.fromtimestamp(new.open_until, UTC)) if new.open_until else None,
        }
        task = asyncio.create_task(self._emit("workspace.health_changed", data))
        self._emitting.add(task)
        task.add_done_callback(self._emitting.discard)

    async def _emit(self, event: str, data: dict[str, Any]) -> None:
        try:
            await self.event_log.emit(event, data)
        except Exception as exc:  # the database is away: the log line above still says it
            log.warning("events.emit_failed", event_type=event, error=f"{type(exc).__name__}: {exc}")

    def _health_settings(self, workspace_id: str) -> HealthSettings | None:
        workspace = self.settings.workspace(workspace_id)
        return workspace.health if workspace is not None else None

    def _breaker_settings(self, workspace_id: str) -> BreakerSettings:
        workspace = self.settings.workspace(workspace_id)
        # the probe is a real send: it may take the whole send timeout
        probe_timeout = self.settings.delivery.send_timeout_seconds + 10.0
        return breaker_settings(workspace.health if workspace is not None else HealthSettings(), probe_timeout)

    async def reload(self, settings: Settings) -> list[str]:
        """Apply a re-read config file without a restart (SIGHUP); see `LiveConfig.reload`."""
        return await self.live.reload(settings)

    def _limits_for_send(self, workspace_id: str, sender: str, recipients: int) -> tuple[list[Limit], int]:
        # A workspace removed while its send was in flight is still counted, by the defaults.
        rate_limits = self.live.rate_limits.get(workspace_id) or RateLimits()
        cost = cost_of(rate_limits, recipients)
        return limits_for(workspace_id, rate_limits, sender, self.settings.default_per_user_daily, cost), cost

    async def capacity_report(
        self, workspace_id: str | None = None, sender: str | None = None
    ) -> list[tuple[str, Limit, Usage]]:
        """(workspace, limit, usage) for every workspace limit and every sender seen in the last day — or only
        those asked for. Reads the counters without changing them (the memory backend is rebuilt first)."""
        sends = await self._recent_sends()
        if isinstance(self.limits, MemoryLimits):
            await self._restore_counts(self.limits, sends)
        seen = {(s.workspace_id, (s.sent_as or s.mail_from).lower()) for s in sends}
        rows: list[tuple[str, Limit, Usage]] = []
        for ws in self.settings.workspaces:
            if workspace_id is not None and ws.id != workspace_id:
                continue
            senders = [sender] if sender else sorted(s for w, s in seen if w == ws.id) or ["(any sender)"]
            keys: set[str] = set()
            for who in senders:
                for limit in self._limits_for_send(ws.id, who, 1)[0]:
                    if limit.key not in keys:
                        keys.add(limit.key)
                        [usage] = await self.limits.usage([limit])
                        rows.append((ws.id, limit, usage))
        return rows

    async def open_for_inspection(self) -> str:
        """Load counters, health and pools for a dry run (`relay pools test`) without starting or changing anything
        (no migration either: a newer build must not upgrade a live database from a dry run).

        Returns where the pools came from: the database, or the config file when the database has none yet.
        """
        try:
            if await self.workspace_tables.versions():
                await self.live.inspect()  # the database's workspaces, first: their counters are restored next
            else:
                await self.pools.refresh()
            sends = await self._recent_sends()
            if isinstance(self.limits, MemoryLimits):
                await self._restore_counts(self.limits, sends)
            await self.health.refresh(force=True)
        except sa.exc.DBAPIError as exc:
            log.debug("pools.inspect_without_tables", error=type(exc).__name__)
            self.pools.use_config()
            return "config file (the database is not set up: `relay db upgrade` creates its tables)"
        if self.pools.pools:
            return "database"
        self.pools.use_config()
        return "config file (the database has no pools yet)"

    async def _recent_sends(self) -> list[CountedSend]:
        since = self.clock.now() - timedelta(hours=26)  # a rolling day, or a calendar day of up to 25 h
        return await Messages(self.db).counted_sends(since)

    async def _restore_counts(self, limits: MemoryLimits, sends: list[CountedSend]) -> None:
        """A restart must not reset a limit: count again what the window still holds, from the attempts."""
        if self._counts_restored:
            return
        self._counts_restored = True
        restored = 0
        for send in sends:
            if send.workspace_id not in self.live.rate_limits:
                continue
            answer = Outcome(send.outcome, send.provider_status)  # type: ignore[arg-type]
            if certainly_refused(answer, send.provider_kind or ""):
                continue  # its reservation was given back when it happened
            applicable, cost = self._limits_for_send(send.workspace_id, send.sent_as or send.mail_from, send.recipients)
            await limits.record([x for x in applicable if x.kind != "gcra"], cost, send.at)
            restored += 1
        if restored:
            log.info("limits.restored", sends=restored)

    async def _fit_message_size(self, smtp: SmtpSettings) -> SmtpSettings:
        """Never advertise a SIZE the database cannot store: a message MariaDB refuses would get 451 forever."""
        packet = await self.db.max_packet_bytes()
        headroom = 1 << 20  # the rest of the row and the statement
        if packet is None or smtp.max_message_size + headroom <= packet:
            return smtp
        fitted = max(packet - headroom, 1024)
        log.warning(
            "smtp.max_message_size_lowered",
            configured=smtp.max_message_size,
            effective=fitted,
            reason=f"the database's max_allowed_packet is {packet} bytes; raise it to accept larger messages",
        )
        return smtp.model_copy(update={"max_message_size": fitted})

    async def _start_http(self) -> None:
        http = self.settings.http
        self._http = await start_http_server(self.api_app(), http.host, http.port, self._tasks)

    def api_app(self) -> FastAPI:
        """The HTTP app: probes, `/metrics`, the `/api/v1` routers and the dashboard over this process's parts."""
        return http_app(self)

    async def scrape(self) -> bytes:
        """The metrics, with the queue, capacity, health, pool and webhook gauges read now (see `Scrape`)."""
        scrape = Scrape(
            self.metrics,
            queue=self.queue,
            limits=self.limits,
            limits_for=self._limits_for_send,
            workspaces=lambda: [w.id for w in self.settings.workspaces],
            health=self.health,
            balancer=self.balancer,
            webhooks=self.webhook_store,
        )
        return await scrape()

    async def readiness(self) -> str | None:
        try:
            async with self.db.read() as connection:
                await connection.execute(sa.text("SELECT 1"))
        except Exception as exc:
            return f"database unavailable: {type(exc).__name__}"
        if isinstance(self.limits, RedisLimits):
            try:
                await self.limits.usage([Limit("readyz", "rolling", 1)])
            except Exception as exc:
                return f"rate limits unavailable (Redis): {type(exc).__name__}; nothing is sent until it returns"
        return None

    async def stop(self) -> None:
        if self._smtp is not None:
            self._smtp.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._smtp.wait_closed()
        await self.ingest.stop()
        if self._http is not None:
            self._http.should_exit = True
        if self.worker is not None:
            self.worker.stop()  # sends in flight finish and are recorded; unstarted claims are given back
        for task in self._tasks:
            if task.get_name() in (
                "relay-config",
                "relay-config-notices",
                "relay-health",
                "relay-webhooks",
                "relay-suppressions",  # suppression list (issue 8)
            ):
                task.cancel()
        self.checker.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.balancer.close()
        with contextlib.suppress(Exception):
            await self.selections.stop()  # the decisions still buffered
        with contextlib.suppress(Exception):
            await self.dispatcher.aclose()
        if self._webhooks_worker is not None:
            await self._webhooks_worker.stop()
        with contextlib.suppress(Exception):
            await self.live.aclose()
        for provider in [*self.providers.values(), *self.live.retired]:
            with contextlib.suppress(Exception):
                await provider.aclose()
        with contextlib.suppress(Exception):
            await self.limits.aclose()
        with contextlib.suppress(Exception):
            await self.breakers.aclose()
        await self.db.dispose()
        log.info("relay.stopped")

"""`/metrics` at scrape time: the state gauges read from their sources now, then the whole registry rendered.

Every source is read first and handed to `Metrics` only afterwards, with no await in between, so two scrapes at
once never render a gauge half rebuilt. A source that cannot be read (the database or Redis away) leaves its
gauges at their last values and counts `relay_metrics_scrape_errors_total{source}`; the scrape still answers.

What each read costs: the queue and the webhook backlog are one grouped query each, the workspace limits one call
to the limits backend, health the cached view (re-read at most every half second), and each pool's availability
one capacity read. Only workspace-wide limits are shown: per-sender counters would make a series per sender.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar, get_args

import structlog

from ..limits import Limit, LimitBackend
from ..metrics import CapacityRow, Metrics
from ..pools import HealthState, HealthView, LimitPolicy, LoadBalancer
from ..store import MessageQueue, WebhookStore

__all__ = ["Scrape"]

log = structlog.get_logger(__name__)

T = TypeVar("T")
_ANY_SENDER = "(any sender)"  # as `capacity_report` names it: only the workspace-wide limits are kept
_HEALTH_STATES: Sequence[str] = get_args(HealthState)


class Scrape:
    def __init__(
        self,
        metrics: Metrics,
        *,
        queue: MessageQueue,
        limits: LimitBackend,
        limits_for: LimitPolicy,
        workspaces: Callable[[], Iterable[str]],
        health: HealthView,
        balancer: LoadBalancer,
        webhooks: WebhookStore,
    ) -> None:
        self._metrics = metrics
        self._queue = queue
        self._limits = limits
        self._limits_for = limits_for
        self._workspaces = workspaces
        self._health = health
        self._balancer = balancer
        self._webhooks = webhooks

    async def __call__(self) -> bytes:
        """The metrics in Prometheus text, the state gauges read now."""
        workspaces = list(self._workspaces())
        queue = await self._read("queue", self._queue.status_counts())
        capacity = await self._read("capacity", self._capacity(workspaces))
        health = await self._read("health", self._health_states(workspaces))
        pools = await self._read("pools", self._pools())
        webhooks = await self._read("webhooks", self._webhooks.pending_by_endpoint())
        m = self._metrics
        if queue is not None:
            m.queue(queue)
        if capacity is not None:
            m.capacity(capacity)
        if health is not None:
            m.health(health, _HEALTH_STATES)
        if pools is not None:
            m.pools(pools)
        if webhooks is not None:
            m.webhook_pending(webhooks)
        return m.render()

    async def _read(self, source: str, read: Awaitable[T]) -> T | None:
        try:
            return await read
        except Exception as exc:
            log.warning("metrics.source_unavailable", source=source, error=type(exc).__name__)
            self._metrics.scrape_failed(source)
            return None

    async def _capacity(self, workspaces: list[str]) -> list[CapacityRow]:
        named: list[tuple[str, str, Limit]] = []
        for workspace_id in workspaces:
            for limit in self._limits_for(workspace_id, _ANY_SENDER, 1)[0]:
                name = _limit_name(workspace_id, limit)
                if name is not None:
                    named.append((workspace_id, name, limit))
        if not named:
            return []
        usages = await self._limits.usage([limit for _, _, limit in named])
        return [(ws, name, u.remaining, u.limit) for (ws, name, _), u in zip(named, usages, strict=True)]

    async def _health_states(self, workspaces: list[str]) -> dict[str, str]:
        await self._health.refresh()
        return {workspace_id: self._health.health(workspace_id).state for workspace_id in workspaces}

    async def _pools(self) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for pool_id in list(self._balancer.catalog.pools):
            status = await self._balancer.get_pool_status(pool_id)
            if status is not None:
                takers = sum(1 for m in status.members if m.enabled and m.weight > 0)
                out[pool_id] = (status.available, takers)
        return out


def _limit_name(workspace_id: str, limit: Limit) -> str | None:
    """The label of a workspace-wide limit (`limits_for`'s keys), or None for the sender's own limit."""
    if limit.key == f"ws:{workspace_id}":
        return "daily"
    if limit.key == f"rate:{workspace_id}:s":
        return "per_second"
    if limit.key == f"rate:{workspace_id}:m":
        return "per_minute"
    return None

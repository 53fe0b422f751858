"""What the API reads and drives, handed in by the runtime (the API never builds its own parts)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..clock import Clock
from ..config import Settings
from ..limits import Limit, Usage
from ..pools import ConfigStore, LoadBalancer
from ..store import (
    AuditLog,
    InboundEvents,
    MessageQueue,
    Messages,
    PoolTables,
    SelectionLog,
    SuppressionList,
    WebhookStore,
)
from .messages import Ingress

__all__ = ["ApiServices"]

CapacityReport = Callable[[str | None, str | None], Awaitable[list[tuple[str, Limit, Usage]]]]


@dataclass(frozen=True, slots=True)
class ApiServices:
    balancer: LoadBalancer
    selections: SelectionLog
    capacity_report: CapacityReport
    settings: Callable[[], Settings]
    clock: Clock
    pool_tables: PoolTables
    refresh_pools: Callable[[], Awaitable[bool]]
    audit: AuditLog
    messages: Messages
    queue: MessageQueue
    config: ConfigStore
    ingress: Ingress | None = None  # sending through the API
    webhooks: WebhookStore | None = None  # webhook endpoints and their delivery log
    webhooks_changed: Callable[[], None] = lambda: None  # an endpoint changed here: the dispatcher re-reads
    suppressions: SuppressionList | None = None  # the suppression list (issue 8)
    inbound: InboundEvents | None = None  # provider events, recorded (issue 8)

"""Prometheus metrics of one Relay process (issue 9), in a registry of its own (several Relays in one test
process never mix). Labels are bounded: pools, workspaces, strategies, outcomes, statuses, limits, health states,
SMTP reply codes and webhook endpoint ids — never senders or recipients.

Two kinds of metric: counters and histograms that the code paths move as things happen (deliveries, selections,
SMTP), and gauges of shared state (queue, capacity, health, pools, webhooks) that the runtime reads at scrape
time and hands over whole. A state gauge is rebuilt from scratch on each hand-over, so a workspace or pool removed
from the configuration disappears instead of keeping its last value. No I/O here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "QUEUE_STATUSES", "SELECTION_BUCKETS", "CapacityRow", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
QUEUE_STATUSES = ("queued", "sending", "deferred", "sent", "failed")
# A decision is pure and takes tens of microseconds; the top buckets catch a stalled event loop or a slow
# capacity read from Redis (the snapshot is part of the decision).
SELECTION_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 5e-2)

CapacityRow = tuple[str, str, int, int]
"""(workspace id, limit name such as "daily" or "per_second", remaining, maximum)."""


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        # Moved by the code paths, as things happen.
        self._deliveries = Counter(
            "relay_deliveries", "Delivery attempts by workspace and outcome", ["workspace", "outcome"], registry=r
        )
        self._delivery_seconds = Histogram(
            "relay_delivery_duration_seconds", "Time one provider took to answer a send", ["workspace"], registry=r
        )
        self._selections = Counter(
            "relay_selections", "Load-balancing decisions placed", ["pool", "workspace", "strategy"], registry=r
        )
        self._selection_seconds = Histogram(
            "relay_selection_duration_seconds", "Time one load-balancing decision took (snapshot and pick)", ["pool"],
            buckets=SELECTION_BUCKETS, registry=r,
        )  # fmt: skip
        self._smtp_sessions = Counter("relay_smtp_sessions", "SMTP connections accepted", registry=r)
        self._smtp_active = Gauge("relay_smtp_sessions_active", "SMTP connections open now", registry=r)
        self._smtp_accepted = Counter(
            "relay_smtp_messages_accepted", "Messages committed to the queue and answered 250 over SMTP", registry=r
        )
        self._smtp_rejections = Counter(
            "relay_smtp_rejections",
            "SMTP replies refusing something (4xx and 5xx), by reply code",
            ["code"],
            registry=r,
        )
        self._webhook_posts = Counter(
            "relay_webhook_deliveries", "Webhook posts by endpoint and outcome (delivered, retry, gave_up)",
            ["endpoint", "outcome"], registry=r,
        )  # fmt: skip
        self._scrape_errors = Counter(
            "relay_metrics_scrape_errors", "State gauges that could not be read at a scrape (kept at their last value)",
            ["source"], registry=r,
        )  # fmt: skip
        # Read at scrape time.
        self._queue = Gauge("relay_queue_messages", "Messages in the queue by status", ["status"], registry=r)
        self._capacity_remaining = Gauge(
            "relay_workspace_capacity_remaining", "Sends a workspace-wide rate limit still admits now",
            ["workspace", "limit"], registry=r,
        )  # fmt: skip
        self._capacity_limit = Gauge(
            "relay_workspace_capacity_limit",
            "A workspace-wide rate limit's maximum",
            ["workspace", "limit"],
            registry=r,
        )
        self._health = Gauge(
            "relay_workspace_health", "1 for the workspace's current health state, 0 for the others",
            ["workspace", "state"], registry=r,
        )  # fmt: skip
        self._pool_available = Gauge(
            "relay_pool_available_workspaces", "Members of a pool that could be chosen now", ["pool"], registry=r
        )
        self._pool_members = Gauge(
            "relay_pool_workspaces", "Members of a pool that take mail when available (enabled, weight above 0)",
            ["pool"], registry=r,
        )  # fmt: skip
        self._webhook_pending = Gauge(
            "relay_webhook_pending", "Webhook deliveries not yet delivered nor given up, by endpoint", ["endpoint"],
            registry=r,
        )  # fmt: skip

    # Events

    def delivery(self, workspace: str | None, outcome: str, seconds: float) -> None:
        self._deliveries.labels(workspace or "none", outcome).inc()
        self._delivery_seconds.labels(workspace or "none").observe(max(seconds, 0.0))

    def selection(self, pool: str, workspace: str, strategy: str) -> None:
        self._selections.labels(pool, workspace, strategy).inc()

    def selection_time(self, pool: str, seconds: float) -> None:
        self._selection_seconds.labels(pool).observe(max(seconds, 0.0))

    def smtp_opened(self) -> None:
        self._smtp_sessions.inc()
        self._smtp_active.inc()

    def smtp_closed(self) -> None:
        self._smtp_active.dec()

    def smtp_accepted(self) -> None:
        self._smtp_accepted.inc()

    def smtp_rejected(self, code: str) -> None:
        self._smtp_rejections.labels(code).inc()

    def webhook_delivery(self, endpoint: str, outcome: str, count: int = 1) -> None:
        self._webhook_posts.labels(endpoint, outcome).inc(count)

    def scrape_failed(self, source: str) -> None:
        self._scrape_errors.labels(source).inc()

    # State, read at scrape time

    def queue(self, counts: Mapping[str, int]) -> None:
        for status in QUEUE_STATUSES:
            self._queue.labels(status).set(counts.get(status, 0))

    def capacity(self, rows: Iterable[CapacityRow]) -> None:
        self._capacity_remaining.clear()
        self._capacity_limit.clear()
        for workspace, limit, remaining, maximum in rows:
            self._capacity_remaining.labels(workspace, limit).set(remaining)
            self._capacity_limit.labels(workspace, limit).set(maximum)

    def health(self, states: Mapping[str, str], every_state: Sequence[str]) -> None:
        """`states`: workspace id -> its state now; `every_state`: the states there are (each gets a 0 or a 1, so
        `relay_workspace_health{state="open"} == 1` is an alert expression that works without `absent()`)."""
        self._health.clear()
        for workspace, current in states.items():
            for state in every_state:
                self._health.labels(workspace, state).set(1 if state == current else 0)

    def pools(self, members: Mapping[str, tuple[int, int]]) -> None:
        """pool id -> (members available now, members that take mail when available)."""
        self._pool_available.clear()
        self._pool_members.clear()
        for pool, (available, takers) in members.items():
            self._pool_available.labels(pool).set(available)
            self._pool_members.labels(pool).set(takers)

    def webhook_pending(self, counts: Mapping[str, int]) -> None:
        """endpoint id -> deliveries pending."""
        self._webhook_pending.clear()
        for endpoint, pending in counts.items():
            self._webhook_pending.labels(endpoint).set(pending)

    def render(self) -> bytes:
        return generate_latest(self.registry)

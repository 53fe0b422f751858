"""Prometheus metrics of one Relay process (issue 9), in a registry of its own (several Relays in one test
process never mix). Labels are bounded: pools, workspaces, strategies, outcomes and statuses — never senders or
recipients."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._deliveries = Counter(
            "relay_deliveries", "Delivery attempts by workspace and outcome", ["workspace", "outcome"],
            registry=self.registry,
        )  # fmt: skip
        self._delivery_seconds = Histogram(
            "relay_delivery_duration_seconds", "Time one provider took to answer a send", ["workspace"],
            registry=self.registry,
        )  # fmt: skip
        self._selections = Counter(
            "relay_selections", "Load-balancing decisions placed", ["pool", "workspace", "strategy"],
            registry=self.registry,
        )  # fmt: skip
        self._queue = Gauge(
            "relay_queue_messages", "Messages in the queue by status", ["status"], registry=self.registry
        )

    def delivery(self, workspace: str | None, outcome: str, seconds: float) -> None:
        self._deliveries.labels(workspace or "none", outcome).inc()
        self._delivery_seconds.labels(workspace or "none").observe(max(seconds, 0.0))

    def selection(self, pool: str, workspace: str, strategy: str) -> None:
        self._selections.labels(pool, workspace, strategy).inc()

    def queue(self, counts: Mapping[str, int]) -> None:
        for status in ("queued", "sending", "deferred", "sent", "failed"):
            self._queue.labels(status).set(counts.get(status, 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)

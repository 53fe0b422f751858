"""Posts outbox events to webhook endpoints, at least once, in order per message, never on the mail path.

Each pass: fan new outbox events out to the subscribed endpoints, lease the due deliveries (several processes
share the work; a lease that runs out hands a delivery to another), post them concurrently, and record each
answer. A 2xx is delivered. Anything else is retried with exponential backoff (5 s doubling to 1 h, ±10 %) for
24 h after the event, then given up (`failed` in the delivery log). An endpoint that has failed without a single
success for 24 h is disabled, with an audit entry; its pending deliveries wait until it is enabled again.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

import httpx
import structlog

from ..clock import Clock
from ..store import ClaimedDelivery, EndpointRow, Settlement, WebhookStore
from .formats import UnsignableError, request_for

__all__ = ["Dispatcher", "OnResult"]

log = structlog.get_logger(__name__)

# (endpoint id, outcome, count): told once a pass's answers are recorded; outcome is delivered, retry or gave_up.
OnResult = Callable[[str, str, int], None]


class Dispatcher:
    def __init__(
        self,
        store: WebhookStore,
        *,
        clock: Clock,
        owner: str,
        rng: random.Random | None = None,
        client: httpx.AsyncClient | None = None,
        concurrency: int = 16,
        batch: int = 512,
        timeout: float = 10.0,
        lease_seconds: float = 300.0,
        poll_interval: float = 0.25,
        give_up_after: timedelta = timedelta(hours=24),
        disable_after: timedelta = timedelta(hours=24),
        on_result: OnResult | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._owner = owner
        self._rng = rng or random.Random()
        self._client = client or httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        self._owns_client = client is None
        self._concurrency = concurrency
        self._batch = batch
        self._timeout = timeout
        self._lease_seconds = lease_seconds
        self._poll_interval = poll_interval
        self._give_up_after = give_up_after
        self._disable_after = disable_after
        self._on_result = on_result
        self._wake = asyncio.Event()
        self._endpoints: dict[str, EndpointRow] = {}
        self._endpoints_read_at: float | None = None
        self._pruned_at: float | None = None

    def notify(self) -> None:
        """Something was written to the outbox: look now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        """Until cancelled. Errors (the database away) are logged and the pass is tried again."""
        while True:
            try:
                await self.run_once()
            except Exception as exc:
                log.warning("webhooks.pass_failed", error=f"{type(exc).__name__}: {exc}")
            # Never back to back, even with a backlog: a pass takes the database's write lock three times
            # (fan-out, claim, settle), and mail must get it first. A pass moves up to `batch` deliveries, so a
            # backlog still drains at thousands of events per second.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval)
            self._wake.clear()

    async def run_once(self) -> int:
        """One pass: fan out, claim, post, record. Returns the number of deliveries attempted."""
        endpoints = await self._current_endpoints()
        await self._store.fan_out([e for e in endpoints.values() if e.enabled], limit=4 * self._batch)
        await self._prune()
        # A pass must end well inside its leases, even if every post waits the whole timeout: else another process
        # takes them over and posts again. So no more than half what `concurrency` posts can do in a lease.
        fits = int(self._concurrency * self._lease_seconds / self._timeout / 2)
        claims = await self._store.claim(
            owner=self._owner, limit=max(1, min(self._batch, fits)), lease_seconds=self._lease_seconds
        )
        if any(c.endpoint_id not in endpoints for c in claims):
            self._endpoints_read_at = None  # created since the last read, by another process
            endpoints = await self._current_endpoints()
        if not claims:
            return 0
        limit = asyncio.Semaphore(self._concurrency)

        async def deliver(claim: ClaimedDelivery) -> tuple[Settlement, bool | None]:
            async with limit:
                return await self._deliver(claim, endpoints.get(claim.endpoint_id))

        results = await asyncio.gather(*(deliver(c) for c in claims))
        await self._store.settle([settlement for settlement, _ in results])
        self._count(results)
        # Then each endpoint's run of failures: ended by a success, started (or, after a day, ended by disabling
        # the endpoint) by a failure.
        outcomes: dict[str, list[tuple[Settlement, bool | None]]] = {}
        for settlement, ok in results:
            outcomes.setdefault(settlement.claim.endpoint_id, []).append((settlement, ok))
        for endpoint_id, answers in outcomes.items():
            endpoint = endpoints.get(endpoint_id)
            if endpoint is not None:
                await self._note_endpoint(endpoint, answers)
        return len(claims)

    def _count(self, results: list[tuple[Settlement, bool | None]]) -> None:
        """Tell `on_result` what each post came to (answers where nothing was posted are not counted)."""
        if self._on_result is None:
            return
        for settlement, ok in results:
            if ok is None:
                continue
            given_up = settlement.values.get("status") == "failed"
            self._on_result(settlement.claim.endpoint_id, "delivered" if ok else "gave_up" if given_up else "retry", 1)

    async def _current_endpoints(self) -> dict[str, EndpointRow]:
        now = self._clock.monotonic()
        if self._endpoints_read_at is None or now - self._endpoints_read_at >= 1.0:
            self._endpoints = {e.id: e for e in await self._store.endpoints()}
            self._endpoints_read_at = now
        return self._endpoints

    async def _prune(self) -> None:
        """Every 10 minutes: the outbox and the delivery log keep 7 days (what is still pending stays)."""
        now = self._clock.monotonic()
        if self._pruned_at is not None and now - self._pruned_at < 600:
            return
        self._pruned_at = now
        await self._store.prune(self._clock.now() - timedelta(days=7))

    def forget_endpoints(self) -> None:
        """Re-read the endpoints at the next pass (an API change in this process)."""
        self._endpoints_read_at = None

    async def _deliver(self, claim: ClaimedDelivery, endpoint: EndpointRow | None) -> tuple[Settlement, bool | None]:
        """Post one delivery; what to record, and whether the endpoint answered well (None: not asked)."""
        now = self._clock.now()
        if endpoint is None:
            return self._store.give_up(claim, None, "the endpoint was deleted"), None
        if not endpoint.enabled:
            return self._store.retry(claim, now + timedelta(minutes=5), None, "endpoint disabled"), None
        try:
            request = request_for(endpoint, claim, now=now.timestamp())
        except UnsignableError as exc:
            log.error("webhooks.unsignable", endpoint_id=endpoint.id, error=str(exc))
            return self._store.retry(claim, now + self.backoff(claim.attempts + 1), None, str(exc)), False
        if request is None:  # nothing in this endpoint's format for this event
            return self._store.delivered(claim, 0), None
        status: int | None = None
        try:
            response = await self._client.post(
                endpoint.url, content=request.content, headers=request.headers, timeout=self._timeout
            )
            status = response.status_code
            error = "" if 200 <= status < 300 else f"HTTP {status}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500] or type(exc).__name__
        if not error:
            return self._store.delivered(claim, status or 200), True
        # At least a few tries, whatever the age: a delivery that waited behind an earlier event of its message,
        # or for its endpoint to be enabled again, still gets its chance.
        if now - claim.created_at >= self._give_up_after and claim.attempts + 1 >= _MIN_ATTEMPTS:
            log.error(
                "webhooks.given_up",
                endpoint_id=endpoint.id,
                event_id=claim.event_id,
                message_id=claim.message_id,
                error=error,
            )
            return self._store.give_up(claim, status, f"given up after {claim.attempts + 1} attempts: {error}"), False
        return self._store.retry(claim, now + self.backoff(claim.attempts + 1), status, error), False

    async def _note_endpoint(self, endpoint: EndpointRow, answers: list[tuple[Settlement, bool | None]]) -> None:
        now = self._clock.now()
        if any(ok for _, ok in answers):
            if endpoint.failing_since is not None:
                await self._store.note_failing(endpoint.id, None)
                self._endpoints[endpoint.id] = _with_failing(endpoint, None)
            return
        failures = [s for s, ok in answers if ok is False]
        if not failures:
            return
        if endpoint.failing_since is None:
            await self._store.note_failing(endpoint.id, now)
            self._endpoints[endpoint.id] = _with_failing(endpoint, now)
        elif now - endpoint.failing_since >= self._disable_after:
            error = failures[-1].values.get("last_error") or "failed"
            reason = f"every delivery failed since {endpoint.failing_since.isoformat()}; last: {error}"
            await self._store.disable(endpoint, reason)
            self._endpoints[endpoint.id] = _disabled(endpoint, reason)
            log.error("webhooks.endpoint_disabled", endpoint_id=endpoint.id, reason=reason)

    def backoff(self, attempts: int) -> timedelta:
        """5 s after the first failure, doubling, at most an hour; ±10 % so endpoints coming back are not
        stampeded by every process at once."""
        base = min(5.0 * 2 ** (attempts - 1), 3600.0)
        return timedelta(seconds=base * self._rng.uniform(0.9, 1.1))

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


_MIN_ATTEMPTS = 3


def _with_failing(endpoint: EndpointRow, since: datetime | None) -> EndpointRow:
    return replace(endpoint, failing_since=since)


def _disabled(endpoint: EndpointRow, reason: str) -> EndpointRow:
    return replace(endpoint, enabled=False, disabled_reason=reason)

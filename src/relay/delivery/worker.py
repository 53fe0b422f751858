"""The delivery loop: claim due messages, route, send through the workspace's provider, record, retry.

Mechanism only: which workspace serves a sender is `routing/`'s answer, what an answer means is the
provider's `Outcome`, and when to try again is `RetryPolicy`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import structlog

from ..clock import Clock, SystemClock
from ..logs import log_context
from ..metrics import Metrics
from ..mime import PRIVATE_HEADERS, PRIVATE_PREFIXES, present_sender, remove_fields, rewrite_headers
from ..pools import HealthView, LoadBalancer
from ..providers import OutboundMessage, Outcome, Provider
from ..routing import Router
from ..store import (
    AttemptRecord,
    Deferred,
    Failed,
    MessageQueue,
    QueuedMessage,
    Transition,
    WorkspaceStates,
)
from .backoff import RetryPolicy
from .gate import Admission, CapacityGate
from .pool_path import PoolPath
from .states import StateRecorder
from .transitions import refusals, summary, transition_for

__all__ = ["DeliveryWorker"]

log = structlog.get_logger(__name__)


class DeliveryWorker:
    """Runs up to `concurrency` sends at once in one process. `run_once()`/`drain()` exist for tests."""

    def __init__(
        self,
        *,
        queue: MessageQueue,
        states: WorkspaceStates,
        router: Router,
        providers: Mapping[str, Provider],
        policy: RetryPolicy,
        owner: str,
        header_rewrites: Mapping[str, tuple[tuple[str, str], ...]] | None = None,
        gate: CapacityGate | None = None,
        balancer: LoadBalancer | None = None,
        health: HealthView | None = None,
        concurrency: int = 64,
        lease_seconds: float = 300.0,
        poll_interval: float = 1.0,
        send_timeout: float = 120.0,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._queue = queue
        self._states = states
        self._router = router
        self._providers = providers
        self._policy = policy
        self._owner = owner
        self._header_rewrites = header_rewrites or {}
        self._gate = gate
        self._concurrency = concurrency
        self._lease_seconds = lease_seconds
        self._poll_interval = poll_interval
        self._send_timeout = send_timeout
        self._clock = clock or SystemClock()
        self.metrics = metrics
        self._rng = rng or random.Random()
        self._inflight: set[asyncio.Task[None]] = set()
        self._wakeup = asyncio.Event()
        self._stopping = False
        # Sends in flight per workspace, capped at what its provider can take (`Provider.concurrency`).
        # A claimed message waits at most `_slot_wait` for a place, so waiting plus sending stays inside
        # its lease; then it goes back to the queue without an attempt.
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._slot_wait = max(0.0, (lease_seconds - send_timeout) / 2)
        self._not_started: dict[str, QueuedMessage] = {}
        self.health = health or HealthView(states, self._clock)
        self._recorder = StateRecorder(states, self.health, policy)
        self._pool_path = PoolPath(self, balancer, router) if balancer is not None else None

    def notify(self) -> None:
        """New mail was committed: look for work now instead of at the next poll."""
        self._wakeup.set()

    def stop(self) -> None:
        """Claim nothing more; `run()` then lets sends in flight finish (up to the send timeout) and returns."""
        self._stopping = True
        self._wakeup.set()

    async def run(self) -> None:
        """Deliver until `stop()`. Claimed messages that never started sending are given back at the end;
        a send still running after the grace period is cancelled and its lease left to expire, because the
        provider may already have the message."""
        try:
            while not self._stopping:
                self._wakeup.clear()
                free = self._concurrency - len(self._inflight)
                claimed = await self._claim_and_start(free) if free > 0 else 0
                if free > 0 and claimed == free:
                    continue
                timeout = self._poll_interval if free > claimed else None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wakeup.wait()
            if self._inflight:
                await asyncio.wait(set(self._inflight), timeout=self._send_timeout)
        finally:
            for task in self._inflight:
                task.cancel()
            await asyncio.gather(*self._inflight, return_exceptions=True)
            await self._give_back_unstarted()

    async def _give_back_unstarted(self) -> None:
        waiting, self._not_started = self._not_started, {}
        for message in waiting.values():
            try:
                await self._queue.release(message)
            except Exception as exc:  # its lease will expire instead
                log.warning("delivery.release_failed", message_id=message.id, error=f"{type(exc).__name__}: {exc}")

    async def run_once(self) -> int:
        """Claim one batch of due messages, deliver them all, and return how many there were."""
        claimed = await self._claim_and_start(self._concurrency)
        await asyncio.gather(*self._inflight, return_exceptions=True)
        return claimed

    async def drain(self, max_rounds: int = 10_000) -> int:
        """Deliver until nothing is due right now; returns the number of deliveries attempted."""
        total = 0
        for _ in range(max_rounds):
            count = await self.run_once()
            if count == 0:
                return total
            total += count
        return total

    async def _claim_and_start(self, limit: int) -> int:
        try:
            await self.health.refresh()
            batch = await self._queue.claim(owner=self._owner, limit=limit, lease_seconds=self._lease_seconds)
        except Exception as exc:  # database down: keep the loop alive, try again at the next poll
            log.error("delivery.claim_failed", error=f"{type(exc).__name__}: {exc}")
            return 0
        for message in batch:
            self._not_started[message.id] = message
            task = asyncio.create_task(self._deliver_safely(message), name=f"deliver-{message.id}")
            self._inflight.add(task)
            task.add_done_callback(self._finished)
        return len(batch)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._wakeup.set()

    async def _deliver_safely(self, message: QueuedMessage) -> None:
        # Each delivery is a task of its own, so what is bound here (and below: the pool, the workspace) names
        # the message on every line logged on its way, the limits', health's and providers' included.
        with log_context(message_id=message.id):
            try:
                await self._deliver(message)
            except asyncio.CancelledError:
                raise
            except Exception:  # the lease expires and another attempt follows; never lose the worker
                log.exception("delivery.unexpected_error", message_id=message.id)

    async def _deliver(self, message: QueuedMessage) -> None:
        route = self._router.route(message.mail_from)
        if route is not None and route.kind == "pool" and self._pool_path is not None:
            await self._pool_path.deliver(message, route.target)
            return
        # A direct mapping, or a sender whose route disappeared since it was accepted: the fallback workspace.
        workspace_id = route.target if route is not None and route.kind == "direct" else self._router.fallback_workspace
        await self.deliver_direct(message, workspace_id)

    async def deliver_direct(
        self, message: QueuedMessage, workspace_id: str | None, evidence: dict[str, Any] | None = None
    ) -> None:
        """Deliver through one workspace; `evidence` is a pool decision that led here (degradation)."""
        with log_context(**({"workspace_id": workspace_id} if workspace_id else {})):
            await self._deliver_direct(message, workspace_id, evidence)

    async def _deliver_direct(
        self, message: QueuedMessage, workspace_id: str | None, evidence: dict[str, Any] | None
    ) -> None:
        provider = self._providers.get(workspace_id) if workspace_id else None
        now = self._clock.now()
        if workspace_id is None or provider is None:
            self.forget_unstarted(message)
            outcome = Outcome("retry", response="no workspace serves this sender (configuration changed?)")
            await self._queue.complete(message, None, self.transition(message, outcome, now, counted=False))
            return
        blocked_until = self.health.blocked_until(workspace_id, now)
        if blocked_until is not None:
            self.forget_unstarted(message)
            health = self.health.health(workspace_id, now)
            reason = f'workspace "{workspace_id}" is {health.state}: {health.last_error or "no detail"}'
            await self._queue.complete(message, None, Deferred(until=blocked_until, reason=reason))
            return
        async with self.slot(workspace_id, provider) as acquired:
            if not acquired:
                self.forget_unstarted(message)
                until = self._clock.now() + timedelta(seconds=self._poll_interval)
                reason = f'waiting for a free connection to workspace "{workspace_id}"'
                await self._queue.complete(message, None, Deferred(until=until, reason=reason))
                return
            if self._stopping:
                return  # still in _not_started: run() gives it back
            self.forget_unstarted(message)
            started = self._clock.now()
            admission = await self.admit(workspace_id, message.mail_from, len(message.pending_rcpts))
            if admission is not None and not admission.ok:
                # Not an attempt: the message waits until capacity returns, or fails if it never can fit.
                transition: Transition = (
                    Failed(admission.reason)
                    if admission.never
                    else Deferred(until=started + timedelta(seconds=admission.wait), reason=admission.reason)
                )
                await self.record(message, None, transition)
                return
            attempt, outcome = await self.send(
                message, workspace_id, provider, admission, message.mail_from, message.pending_rcpts, evidence
            )
        await self.finish(message, attempt, outcome)

    @contextlib.asynccontextmanager
    async def slot(self, workspace_id: str, provider: Provider, wait: float | None = None) -> AsyncIterator[bool]:
        """A place among the workspace's concurrent sends, waited for at most `wait` (default `_slot_wait`);
        yields False if none."""
        slot = self._slots.setdefault(workspace_id, asyncio.Semaphore(provider.concurrency))
        try:
            async with asyncio.timeout(self._slot_wait if wait is None else max(wait, 0.0)):
                await slot.acquire()
        except TimeoutError:
            yield False
            return
        try:
            yield True
        finally:
            slot.release()

    def forget_unstarted(self, message: QueuedMessage) -> None:
        self._not_started.pop(message.id, None)

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def providers(self) -> Mapping[str, Provider]:
        return self._providers

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def poll_interval(self) -> float:
        return self._poll_interval

    def may_retry(self, message: QueuedMessage, outcomes: Sequence[str]) -> bool:
        """Whether `message` may be sent again after this pass's `outcomes`: failover never takes a message past
        `max_attempts` (temporary failures) or `max_age_seconds`."""
        failures = message.temp_failures + sum(1 for kind in outcomes if kind == "retry")
        age = (self._clock.now() - message.created_at).total_seconds()
        return self._policy.exhausted(failures, age) is None

    def slot_budget(self, pass_started: float) -> float:
        """How long this pass may still wait for a slot so that a send started then ends inside the lease (with a
        10 % margin); at most `_slot_wait`. Not above 0: no further send fits in this pass."""
        elapsed = self._clock.monotonic() - pass_started
        return min(self._slot_wait, self._lease_seconds * 0.9 - elapsed - self._send_timeout)

    def too_old(self, message: QueuedMessage) -> str | None:
        """Why `message` must stop waiting (`max_age_seconds`), or None."""
        age = (self._clock.now() - message.created_at).total_seconds()
        if age >= self._policy.max_age_seconds:
            return f"gave up after {age / 3600:.1f} hours in the queue"
        return None

    async def admit(self, workspace_id: str, sender: str, recipients: int) -> Admission | None:
        """The capacity reservation, then the workspace's circuit breaker (an open one takes nothing, a half-open
        one one probe). A breaker refusal gives the reservation back; a probe rides on the admission."""
        admission = await self._gate.admit(workspace_id, sender, recipients) if self._gate else None
        if admission is not None and not admission.ok:
            return admission
        admitted, probe = await self.health.admit(workspace_id)
        if not admitted:
            if admission is not None and self._gate is not None:
                await self._gate.release(admission)
            until = self.health.blocked_until(workspace_id)
            wait = (until - self._clock.now()).total_seconds() if until is not None else self._poll_interval
            return Admission(
                False, wait=max(wait, self._poll_interval), reason=f'workspace "{workspace_id}" is ejected'
            )
        if probe is None:
            return admission
        return Admission(True, token=admission.token if admission else None, probe=probe)

    async def send(
        self,
        message: QueuedMessage,
        workspace_id: str,
        provider: Provider,
        admission: Admission | None,
        sent_as: str,
        recipients: tuple[str, ...],
        evidence: dict[str, Any] | None = None,
    ) -> tuple[AttemptRecord, Outcome]:
        """One send of `message` through `workspace_id`, its reservation settled, its state updated."""
        # A reload may have rebuilt the provider (new credentials) while this send waited for its slot: use the
        # current one, so no send starts on a client that is about to be closed.
        provider = self._providers.get(workspace_id, provider)
        started = self._clock.now()
        probe = admission.probe if admission is not None else None
        try:
            data = rewrite_headers(
                remove_fields(message.raw, PRIVATE_HEADERS, PRIVATE_PREFIXES),
                self._header_rewrites.get(workspace_id, ()),
            )
            if sent_as != message.mail_from:
                data = present_sender(data, message.mail_from, sent_as)
            outbound = OutboundMessage(id=message.id, mail_from=sent_as, recipients=recipients, data=data)
            outcome = await self._send(provider, outbound)
        except BaseException:  # a bug before the send, or cancelled at shutdown: the probe was not answered
            await self.health.release(workspace_id, probe)
            raise
        if admission is not None and self._gate is not None:
            await self._gate.settle(admission, outcome, provider.kind)
        finished = self._clock.now()
        attempt = AttemptRecord(
            workspace_id=workspace_id,
            provider_kind=provider.kind,
            started_at=started,
            finished_at=finished,
            outcome=outcome.kind,
            provider_status=outcome.status,
            provider_response="; ".join(filter(None, [outcome.response, refusals(outcome)]))
            if outcome.kind == "sent"
            else outcome.response,
            provider_message_id=outcome.provider_message_id,
            recipients=outcome.recipient_results or None,
            pool_id=evidence.get("pool") if evidence else None,
            selection=evidence,
            sent_as=sent_as if sent_as != message.mail_from else None,
            rejected_recipients=dict(outcome.rejected_recipients),
        )
        self._recorder.note(workspace_id, outcome, finished)  # in memory now; written after the attempt is recorded
        await self.health.observe(workspace_id, outcome, summary(outcome), probe)  # never raises
        return attempt, outcome

    async def finish(
        self, message: QueuedMessage, attempt: AttemptRecord, outcome: Outcome, earlier: Sequence[AttemptRecord] = ()
    ) -> None:
        """Record the pass's attempts and move the message on according to the last outcome."""
        failures = sum(1 for a in earlier if a.outcome == "retry")
        transition = self.transition(message, outcome, attempt.finished_at, earlier_failures=failures)
        recorded = await self.record(message, attempt, transition, earlier)
        await self._recorder.persist()
        if not recorded:
            log.warning("delivery.lease_lost", message_id=message.id, workspace_id=attempt.workspace_id)
            return
        if self.metrics is not None:
            for each in (*earlier, attempt):
                seconds = (each.finished_at - each.started_at).total_seconds()
                self.metrics.delivery(each.workspace_id, each.outcome, seconds)
        log.info(
            "delivery.attempt",
            message_id=message.id,
            workspace_id=attempt.workspace_id,
            pool_id=attempt.pool_id,
            outcome=outcome.kind,
            status=outcome.status,
            attempt=message.attempts + len(earlier) + 1,
            result=type(transition).__name__.lower(),
        )

    async def record(
        self,
        message: QueuedMessage,
        attempt: AttemptRecord | None,
        transition: Transition,
        earlier: Sequence[AttemptRecord] = (),
        events: Sequence[dict[str, Any]] = (),
    ) -> bool:
        """Write the outcome of a send that already happened (with `events` beyond those it implies), retrying while
        the database is away.

        Giving up early would let the lease expire and the message be sent a second time, so this keeps
        trying for half the lease, backing off up to 5 s between tries.
        """
        deadline = self._clock.monotonic() + self._lease_seconds / 2
        pause = 0.2
        while True:
            try:
                return await self._queue.complete(message, attempt, transition, earlier=earlier, events=events)
            except Exception as exc:
                if self._clock.monotonic() + pause > deadline:
                    raise
                log.warning("delivery.record_retry", message_id=message.id, error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    async def _send(self, provider: Provider, message: OutboundMessage) -> Outcome:
        try:
            async with asyncio.timeout(self._send_timeout):
                return await provider.send(message)
        except TimeoutError:
            return Outcome("retry", response=f"no answer within {self._send_timeout:g} s")
        except Exception as exc:  # a provider bug must not lose the message: treat it as temporary
            log.exception("delivery.provider_error", message_id=message.id)
            return Outcome("retry", response=f"{type(exc).__name__}: {exc}")

    def transition(
        self,
        message: QueuedMessage,
        outcome: Outcome,
        now: datetime,
        *,
        counted: bool = True,
        earlier_failures: int = 0,
    ) -> Transition:
        return transition_for(
            message, outcome, now, self._policy, self._rng, counted=counted, earlier_failures=earlier_failures
        )

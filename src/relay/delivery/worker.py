"""The delivery loop: claim due messages, route, send through the workspace's provider, record, retry.

Mechanism only: which workspace serves a sender is `routing/`'s answer, what an answer means is the
provider's `Outcome`, and when to try again is `RetryPolicy`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Mapping
from datetime import datetime, timedelta

import structlog

from ..clock import Clock, SystemClock
from ..mime import PRIVATE_HEADERS, PRIVATE_PREFIXES, remove_fields, rewrite_headers
from ..providers import OutboundMessage, Outcome, Provider
from ..routing import Router
from ..store import (
    AttemptRecord,
    Deferred,
    Failed,
    MessageQueue,
    QueuedMessage,
    Sent,
    Transition,
    WorkspaceState,
    WorkspaceStates,
)
from .backoff import RetryPolicy
from .gate import CapacityGate

__all__ = ["DeliveryWorker"]

log = structlog.get_logger(__name__)

_STATE_REFRESH_SECONDS = 1.0
_MAX_PAUSE_SECONDS = 2 * 86_400.0


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
        concurrency: int = 64,
        lease_seconds: float = 300.0,
        poll_interval: float = 1.0,
        send_timeout: float = 120.0,
        clock: Clock | None = None,
        rng: random.Random | None = None,
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
        self._workspace_states: dict[str, WorkspaceState] = {}
        self._states_read_at = float("-inf")

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
            await self._refresh_states()
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

    async def _refresh_states(self) -> None:
        now = self._clock.monotonic()
        if now - self._states_read_at >= _STATE_REFRESH_SECONDS:
            self._workspace_states = await self._states.all()
            self._states_read_at = now

    async def _deliver_safely(self, message: QueuedMessage) -> None:
        try:
            await self._deliver(message)
        except asyncio.CancelledError:
            raise
        except Exception:  # the lease expires and another attempt follows; never lose the worker
            log.exception("delivery.unexpected_error", message_id=message.id)

    async def _deliver(self, message: QueuedMessage) -> None:
        workspace_id = self._workspace_for(message)
        provider = self._providers.get(workspace_id) if workspace_id else None
        now = self._clock.now()
        if workspace_id is None or provider is None:
            self._not_started.pop(message.id, None)
            outcome = Outcome("retry", response="no workspace serves this sender (configuration changed?)")
            await self._queue.complete(message, None, self._transition(message, outcome, now, counted=False))
            return
        state = self._workspace_states.get(workspace_id)
        if state is not None and state.state != "active" and state.recheck_at and state.recheck_at > now:
            self._not_started.pop(message.id, None)
            reason = f'workspace "{workspace_id}" is {state.state}: {state.reason}'
            await self._queue.complete(message, None, Deferred(until=state.recheck_at, reason=reason))
            return
        slot = self._slots.setdefault(workspace_id, asyncio.Semaphore(provider.concurrency))
        try:
            async with asyncio.timeout(self._slot_wait):
                await slot.acquire()
        except TimeoutError:
            self._not_started.pop(message.id, None)
            until = self._clock.now() + timedelta(seconds=self._poll_interval)
            reason = f'waiting for a free connection to workspace "{workspace_id}"'
            await self._queue.complete(message, None, Deferred(until=until, reason=reason))
            return
        try:
            if self._stopping:
                return  # still in _not_started: run() gives it back
            self._not_started.pop(message.id, None)
            await self._attempt(message, workspace_id, provider, state)
        finally:
            slot.release()

    async def _attempt(
        self, message: QueuedMessage, workspace_id: str, provider: Provider, state: WorkspaceState | None
    ) -> None:
        outbound = OutboundMessage(
            id=message.id,
            mail_from=message.mail_from,
            recipients=message.pending_rcpts,
            data=rewrite_headers(
                remove_fields(message.raw, PRIVATE_HEADERS, PRIVATE_PREFIXES),
                self._header_rewrites.get(workspace_id, ()),
            ),
        )
        started = self._clock.now()
        admission = (
            await self._gate.admit(workspace_id, message.mail_from, len(outbound.recipients)) if self._gate else None
        )
        if admission is not None and not admission.ok:
            # Not an attempt: the message waits until capacity returns, or fails if it never can fit.
            transition: Transition = (
                Failed(admission.reason)
                if admission.never
                else Deferred(until=started + timedelta(seconds=admission.wait), reason=admission.reason)
            )
            await self._record(message, None, transition)
            return
        outcome = await self._send(provider, outbound)
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
            provider_response="; ".join(filter(None, [outcome.response, _refusals(outcome)]))
            if outcome.kind == "sent"
            else outcome.response,
            provider_message_id=outcome.provider_message_id,
            recipients=outcome.recipient_results or None,
        )
        transition = self._transition(message, outcome, finished)
        if not await self._record(message, attempt, transition):
            log.warning("delivery.lease_lost", message_id=message.id, workspace_id=workspace_id)
            return
        await self._update_workspace_state(workspace_id, state, outcome, finished)
        log.info(
            "delivery.attempt",
            message_id=message.id,
            workspace_id=workspace_id,
            outcome=outcome.kind,
            status=outcome.status,
            attempt=message.attempts + 1,
            result=type(transition).__name__.lower(),
        )

    async def _record(self, message: QueuedMessage, attempt: AttemptRecord | None, transition: Transition) -> bool:
        """Write the outcome of a send that already happened, retrying while the database is away.

        Giving up early would let the lease expire and the message be sent a second time, so this keeps
        trying for half the lease, backing off up to 5 s between tries.
        """
        deadline = self._clock.monotonic() + self._lease_seconds / 2
        pause = 0.2
        while True:
            try:
                return await self._queue.complete(message, attempt, transition)
            except Exception as exc:
                if self._clock.monotonic() + pause > deadline:
                    raise
                log.warning("delivery.record_retry", message_id=message.id, error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    def _workspace_for(self, message: QueuedMessage) -> str | None:
        route = self._router.route(message.mail_from)
        if route is not None and route.kind == "direct":
            return route.target
        # Pool senders and senders whose route disappeared go to the fallback workspace until the
        # balancer (a later stage) picks inside pools.
        return self._router.fallback_workspace

    async def _send(self, provider: Provider, message: OutboundMessage) -> Outcome:
        try:
            async with asyncio.timeout(self._send_timeout):
                return await provider.send(message)
        except TimeoutError:
            return Outcome("retry", response=f"no answer within {self._send_timeout:g} s")
        except Exception as exc:  # a provider bug must not lose the message: treat it as temporary
            log.exception("delivery.provider_error", message_id=message.id)
            return Outcome("retry", response=f"{type(exc).__name__}: {exc}")

    async def _update_workspace_state(
        self, workspace_id: str, state: WorkspaceState | None, outcome: Outcome, now: datetime
    ) -> None:
        wait = outcome.workspace_wait
        if outcome.kind == "quota" and outcome.quota_scope == "workspace":
            # The provider's own signal: stricter than our count, so the workspace gets no mail until then.
            wait = max(wait or 0.0, outcome.retry_after or self._policy.quota_retry_seconds)
        if wait:
            wait = min(wait, _MAX_PAUSE_SECONDS)  # a bogus far-future "retry after" must not park a workspace
            until = now + timedelta(seconds=wait)
            reason = _summary(outcome)
            await self._states.mark_paused(workspace_id, reason, until)
            self._workspace_states[workspace_id] = WorkspaceState(workspace_id, "paused", reason, now, until)
            log.warning("workspace.paused", workspace_id=workspace_id, until=until.isoformat(), response=reason)
        elif outcome.kind == "auth":
            recheck = now + timedelta(seconds=self._policy.auth_recheck_seconds)
            reason = _summary(outcome) or "credentials refused"
            await self._states.mark_broken(workspace_id, reason, recheck)
            self._workspace_states[workspace_id] = WorkspaceState(workspace_id, "broken", reason, now, recheck)
            log.warning("workspace.broken", workspace_id=workspace_id, response=reason)
        elif outcome.kind == "sent" and state is not None and state.state != "active":
            await self._states.mark_active(workspace_id)
            self._workspace_states.pop(workspace_id, None)
            log.info("workspace.recovered", workspace_id=workspace_id)

    def _transition(
        self, message: QueuedMessage, outcome: Outcome, now: datetime, *, counted: bool = True
    ) -> Transition:
        failures = message.temp_failures + (1 if counted and outcome.kind == "retry" else 0)
        age = (now - message.created_at).total_seconds()
        policy = self._policy
        summary = _summary(outcome)
        match outcome.kind:
            case "sent":
                if not outcome.retry_recipients:
                    return Sent(_refusals(outcome))
                delay = policy.delay(failures + 1, self._rng, outcome.retry_after)
                return Deferred(
                    now + timedelta(seconds=delay), "some recipients deferred: " + summary, outcome.retry_recipients
                )
            case "permanent":
                return Failed(summary)
            case "quota" | "auth":
                if age >= policy.max_age_seconds:
                    return Failed(f"gave up after {age / 3600:.1f} hours in the queue: {summary}")
                wait = policy.quota_retry_seconds if outcome.kind == "quota" else policy.auth_recheck_seconds
                return Deferred(now + timedelta(seconds=max(wait, outcome.retry_after or 0)), summary)
            case _:
                exhausted = policy.exhausted(failures, age)
                if exhausted:
                    return Failed(f"{exhausted}: {summary}")
                delay = policy.delay(max(failures, 1), self._rng, outcome.retry_after)
                return Deferred(now + timedelta(seconds=delay), summary, outcome.retry_recipients or None)


def _summary(outcome: Outcome) -> str:
    """`451 4.3.0 try later`: the provider's status and text, as stored in `last_error`."""
    return f"{outcome.status} {outcome.response}".strip() if outcome.status else outcome.response


def _refusals(outcome: Outcome) -> str | None:
    """`refused for good: a@x.org: 550 5.1.1 …` for recipients a partly successful send could not reach."""
    if not outcome.rejected_recipients:
        return None
    return "refused for good: " + "; ".join(f"{rcpt}: {why}" for rcpt, why in outcome.rejected_recipients.items())

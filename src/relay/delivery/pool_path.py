"""Delivery of a pool sender's message: choose a member, reserve, send, fail over; degrade when none is available.

One delivery pass (issue 5, scope 5, 6 and 2):
1. the `LoadBalancer` decides among the members not yet tried or refused in this pass;
2. the chosen member's reservation is taken; refused, it is left out and the balancer decides again;
3. the send; a whole-message temporary failure (retry, quota, auth) fails over to another member, up to the
   pool's failover limit and while the lease leaves room for another send; every send is an attempt with the
   pool, the workspace and the decision's scores;
4. no member available before any send: the sender's direct mapping if any, else `fallback_workspace`, else
   the message waits until the earliest member comes back, and `pool_exhausted` is recorded. A selection that
   fails (a bug, a backend error) takes the same path: the message is never lost or bounced for it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog

from ..logs import log_context
from ..pools import Decision, LoadBalancer
from ..providers import Outcome
from ..routing import Router
from ..store import AttemptRecord, Deferred, Failed, QueuedMessage, pool_exhausted_event
from .gate import Admission

if TYPE_CHECKING:
    from .worker import DeliveryWorker

__all__ = ["PoolPath"]

log = structlog.get_logger(__name__)

_FAILOVER_KINDS = frozenset({"retry", "quota", "auth"})
_UNKNOWN_WAIT = 60.0  # no member says when it comes back (all disabled, say): look again in a minute
# How long a message waits for a connection of a member whose connections are all busy before it tries another
# member; it waits the whole slot budget only when every member is busy. Waiting holds one of the worker's
# `concurrency` places: with one slow member (5 s answers, inside the send timeout) the waiting messages took
# them all and mail to the healthy members stalled for up to the slot budget (tests/reliability, slow fault).
# Connections busy with ordinary sends free up well within this, so the shares still follow the weights.
_BUSY_WAIT = 0.5
_BUSY = "all connections busy"


class PoolPath:
    def __init__(self, worker: DeliveryWorker, balancer: LoadBalancer, router: Router) -> None:
        self._worker = worker
        self._balancer = balancer
        self._router = router

    async def deliver(self, message: QueuedMessage, pool_id: str) -> None:
        with log_context(pool_id=pool_id):
            await self._deliver(message, pool_id)

    async def _deliver(self, message: QueuedMessage, pool_id: str) -> None:
        worker, balancer = self._worker, self._balancer
        sender = message.mail_from
        pool = balancer.catalog.get(pool_id)
        limit = pool.failover_limit if pool is not None else 1
        started = worker.clock.monotonic()
        tried: list[str] = []
        refused: dict[str, Admission] = {}
        busy = False
        patient = False  # see _BUSY_WAIT
        earlier: list[AttemptRecord] = []
        last: tuple[AttemptRecord, Outcome] | None = None
        decision: Decision | None = None
        while len(tried) < limit:
            budget = worker.slot_budget(started)
            if (worker.stopping or budget <= 0) and tried:
                break  # shutting down, or no further send fits in the lease: record what happened
            try:
                decision = await balancer.decide(sender, pool_id, exclude=tried, refused=refused.keys())
            except Exception as exc:
                balancer.selection_failed(pool_id, sender, exc)
                log.exception("load_balancing.selection_error", message_id=message.id, pool_id=pool_id)
                decision = None
                break
            workspace_id = decision.workspace_id
            if workspace_id is None:
                if busy and not patient:
                    # Every member left was busy: decide among them again, and wait for a connection this time.
                    patient = True
                    refused = {ws: a for ws, a in refused.items() if a.reason != _BUSY}
                    continue
                break
            provider = worker.providers.get(workspace_id)
            if provider is None:  # the catalog only lists configured workspaces; a reload may race
                refused[workspace_id] = Admission(False, reason="not configured in this process")
                continue
            # Bound for this member's try only: a line logged after it (pool exhausted, say) is not about it.
            with log_context(workspace_id=workspace_id):
                async with worker.slot(
                    workspace_id, provider, budget if patient else min(budget, _BUSY_WAIT)
                ) as acquired:
                    if not acquired:
                        busy = True
                        refused[workspace_id] = Admission(False, wait=worker.poll_interval, reason=_BUSY)
                        continue
                    if worker.stopping:
                        if tried:
                            break  # record the attempts made; no new send
                        return  # nothing sent: still unstarted, run() gives it back
                    admission = await worker.admit(workspace_id, decision.sent_as, len(message.pending_rcpts))
                    if admission is not None and not admission.ok:
                        balancer.refused(decision)
                        refused[workspace_id] = admission
                        continue
                    worker.forget_unstarted(message)
                    handle = balancer.placed(decision)
                    result = None
                    try:
                        attempt, outcome = await worker.send(
                            message,
                            workspace_id,
                            provider,
                            admission,
                            decision.sent_as,
                            message.pending_rcpts,
                            _evidence(decision, refused, len(tried)),
                        )
                        result = outcome.kind
                    finally:
                        balancer.record_selection(workspace_id, result == "sent", pool_id=pool_id, handle=handle)
                tried.append(workspace_id)
                if last is not None:
                    earlier.append(last[0])
                last = (attempt, outcome)
                if (
                    not self._fails_over(outcome)
                    or worker.slot_budget(started) <= 0
                    or not worker.may_retry(message, [a.outcome for a in (*earlier, attempt)])
                ):
                    break
                log.info(
                    "load_balancing.failover",
                    message_id=message.id,
                    pool_id=pool_id,
                    workspace_id=workspace_id,
                    outcome=outcome.kind,
                    status=outcome.status,
                )
        if last is not None:
            await worker.finish(message, last[0], last[1], earlier)
            return
        if busy:  # capacity is there, only every connection is taken: not an exhausted pool
            worker.forget_unstarted(message)
            until = worker.clock.now() + timedelta(seconds=worker.poll_interval)
            await worker.record(message, None, Deferred(until, f'waiting for a free connection in pool "{pool_id}"'))
            return
        await self._degrade(message, pool_id, decision, refused)

    @staticmethod
    def _fails_over(outcome: Outcome) -> bool:
        """A failure of the whole message that another workspace may not share. Per-recipient refusals and
        partial sends belong to the message and follow the ordinary retry path."""
        return outcome.kind in _FAILOVER_KINDS and not outcome.rejected_recipients and not outcome.retry_recipients

    async def _degrade(
        self, message: QueuedMessage, pool_id: str, decision: Decision | None, refused: dict[str, Admission]
    ) -> None:
        worker, balancer = self._worker, self._balancer
        sender = message.mail_from
        direct = self._router.direct(sender)
        fallback = self._router.fallback_workspace
        if direct is not None and direct in worker.providers:
            action, target = "direct_mapping", direct
        elif fallback is not None and fallback in worker.providers:
            action, target = "fallback_workspace", fallback
        else:
            action, target = "wait", None
        exhausted = decision or Decision(pool_id, "", sender, None, 0.0)
        balancer.exhausted(exhausted, action)
        evidence = {**exhausted.evidence(), "fallback_action": action}
        if refused:
            evidence["refused"] = {ws: a.reason for ws, a in refused.items()}
        if target is not None:
            await worker.deliver_direct(message, target, evidence)  # it takes the message from here
            return
        worker.forget_unstarted(message)
        now = worker.clock.now()
        reason = f'pool_exhausted: no workspace of pool "{pool_id}" can take this message now'
        takers = [m.workspace_id for m in exhausted.members if m.enabled and m.weight > 0]
        if takers and all(ws in refused and refused[ws].never for ws in takers):
            # every member that could take mail refused for good (the message costs more than any limit)
            failed = Failed(f"{reason}: " + "; ".join(a.reason for a in refused.values()))
            await worker.record(message, None, failed, events=[pool_exhausted_event(message, pool_id, "fail", now)])
            return
        too_old = worker.too_old(message)
        if too_old:
            failed = Failed(f"{too_old}: {reason}")
            await worker.record(message, None, failed, events=[pool_exhausted_event(message, pool_id, "fail", now)])
            return
        earliest = exhausted.earliest_capacity_in(now)
        waits = [w for w in (earliest, *_waits(refused)) if w is not None and w > 0]
        wait = min(waits, default=_UNKNOWN_WAIT)
        deferred = Deferred(now + timedelta(seconds=wait), reason)
        await worker.record(message, None, deferred, events=[pool_exhausted_event(message, pool_id, "wait", now)])


def _waits(refused: dict[str, Admission]) -> list[float]:
    """When refused members come back (positive waits)."""
    return [a.wait for a in refused.values() if a.wait > 0 and not a.never]


def _evidence(decision: Decision, refused: dict[str, Admission], failovers: int) -> dict[str, Any]:
    evidence = decision.evidence()
    if refused:
        evidence["refused"] = {ws: a.reason for ws, a in refused.items()}
    if failovers:
        evidence["failover"] = failovers
    return evidence

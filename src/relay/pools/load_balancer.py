"""The PRD's `LoadBalancer` (TR1): one pool's choice for one sender, with its evidence, and the pool's status.

It gathers the snapshot — members from the `PoolCatalog`, capacity from the `CapacityView`, health from the
`HealthView`, in-flight sends it counts itself — and lets the pure `relay.balancer` decide. It does not
reserve: the delivery worker reserves the chosen workspace and, when the reservation is refused, asks again
with that member excluded.

A decision on a snapshot already taken is cheap: for each (pool, sender) the snapshot and its `Plan`
(eligibility and the strategy's O(n) preparation) are kept while their inputs stand — the pool's definition,
the capacity entries (until the first goes stale in the `CapacityView`, or a refused reservation drops one of
its members for that sender), the health view's version and the earliest moment a blocked member comes back —
so the next decision is one pick. Sends in flight change between decisions and are passed to the pick live
(only `least_used` reads them). The first decision in the last fifth of the TTL before an entry goes stale
starts reading the entries about to go stale in the background (refresh ahead), so under steady traffic no
decision waits for the counters. Decisions that find no current snapshot while one is being taken wait for that
one rather than read the counters again each.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from random import Random

import structlog

from ..balancer import Candidate, Plan, RoundRobin
from ..balancer.eligibility import BELOW_THRESHOLD, eligible
from ..clock import Clock
from ..metrics import Metrics
from ..routing import presented_sender
from ..store import SelectionLog
from .capacity import CapacityView
from .catalog import PoolCatalog, PoolView
from .decision import ALREADY_TRIED, RESERVATION_REFUSED, Decision, MemberReport, PoolStatus, Snapshot
from .health import HealthView

__all__ = ["ALREADY_TRIED", "RESERVATION_REFUSED", "Decision", "LoadBalancer", "MemberReport", "PoolStatus", "Snapshot"]

log = structlog.get_logger(__name__)

_MAX_PLANS = 512  # (pool, sender) plans kept; past it the stale ones go, then all (many distinct senders)
_REFRESH_AHEAD = 0.2  # of the capacity TTL: in this last part of a snapshot's life, read it again in the background


@dataclass(slots=True)
class _Kept:
    """One (pool, sender)'s snapshot and plan, valid while `pool` is the catalog's, before `expires` (monotonic),
    and while the health view's version is the one read; `refused` drops it when a member's reservation fails."""

    pool: PoolView
    snapshot: Snapshot
    plan: Plan
    position: dict[str, int]  # workspace id -> index in the snapshot's lists
    expires: float
    refresh_at: float  # monotonic: from then on a decision starts a fresh read in the background
    health_version: int
    relaxed: tuple[Snapshot, Plan] | None = None  # the same with every threshold set aside, once needed


@dataclass(slots=True)
class _Taking:
    """A snapshot being taken: decisions that need it wait on `future` instead of reading the counters again."""

    pool: PoolView
    health_version: int
    future: asyncio.Future[_Kept]


class LoadBalancer:
    def __init__(
        self,
        catalog: PoolCatalog,
        capacity: CapacityView,
        health: HealthView,
        *,
        clock: Clock,
        rng: Random | None = None,
        selections: SelectionLog | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics
        self._catalog = catalog
        self._capacity = capacity
        self._health = health
        self._clock = clock
        self._rng = rng or Random()
        self._selections = selections
        self._round_robin: dict[str, RoundRobin] = {}
        self._in_flight: Counter[str] = Counter()
        self._chosen: Counter[tuple[str, str]] = Counter()
        self._succeeded: Counter[tuple[str, str]] = Counter()
        self._exhausted: Counter[str] = Counter()
        self._last_exhausted: dict[str, datetime] = {}
        self._kept: dict[tuple[str, str], _Kept] = {}
        self._taking: dict[tuple[str, str], _Taking] = {}  # snapshots being taken, for others to wait on
        self._background: set[asyncio.Task[_Kept]] = set()
        self.selection_failures = 0

    @property
    def catalog(self) -> PoolCatalog:
        return self._catalog

    def presented(self, workspace_id: str, sender: str) -> str:
        """`sender` as `workspace_id` presents pool traffic (its `load_balancing.sender_rewrite`)."""
        workspace = self._catalog.workspace(workspace_id)
        rewritten = presented_sender(workspace, sender) if workspace is not None else None
        return rewritten or sender

    async def select_workspace(
        self, sender: str, pools: Sequence[str], *, exclude: Collection[str] = ()
    ) -> Decision | None:
        """The PRD's SelectWorkspace: the first of `pools` with an available member decides; None if none has."""
        for pool_id in pools:
            decision = await self.decide(sender, pool_id, exclude=exclude)
            if decision.workspace_id is not None:
                return decision
        return None

    def simulation(self) -> dict[str, RoundRobin]:
        """Round-robin states for dry runs: copies of this process's, so that a dry run shows the next real picks
        without moving them."""
        return copy.deepcopy(self._round_robin)

    async def decide(
        self,
        sender: str,
        pool_id: str,
        *,
        exclude: Collection[str] = (),
        refused: Collection[str] = (),
        simulation: dict[str, RoundRobin] | None = None,
    ) -> Decision:
        """One decision in `pool_id` for `sender`, leaving out members already tried (`exclude`) or whose
        reservation was refused (`refused`) in this delivery pass. With `simulation` (from `simulation()`), a dry
        run: it takes its round-robin state from there and is left out of the decision-time metric."""
        started = time.perf_counter()
        pool = self._catalog.get(pool_id)
        if pool is None:
            return Decision(pool_id, "", sender, None, 0.0)
        kept = self._kept.get((pool.id, sender))
        monotonic = self._clock.monotonic()
        if (
            kept is None
            or kept.pool is not pool
            or monotonic >= kept.expires
            or kept.health_version != self._health.version
        ):
            kept = await self._keep(pool, sender)
        elif monotonic >= kept.refresh_at:
            self._refresh_ahead(pool, sender)
        snapshot, plan = kept.snapshot, kept.plan
        if exclude or refused:
            snapshot, plan = _passing_over(snapshot, pool, exclude, refused)
        states = self._round_robin if simulation is None else simulation
        state = states.setdefault(pool.id, RoundRobin()) if pool.strategy == "round_robin" else None
        selection = plan.pick(self._rng, state, self._in_flight)
        spilled = False
        if selection is None and not plan.kept and BELOW_THRESHOLD in plan.excluded.values():
            # Every member with capacity is under its threshold: use what is left rather than call the pool
            # exhausted with capacity unused (the threshold orders members, it does not strand quota).
            if exclude or refused:
                snapshot, plan = _relaxed(snapshot, pool)
            else:
                if kept.relaxed is None:
                    kept.relaxed = _relaxed(snapshot, pool)
                snapshot, plan = kept.relaxed
            selection = plan.pick(self._rng, state, self._in_flight)
            spilled = selection is not None
        elapsed_us = self._elapsed_us(pool.id, started, simulation is None)
        if selection is None:
            return Decision(pool.id, pool.strategy, sender, None, 0.0, None, snapshot, sender, None, False, elapsed_us)
        index = kept.position[selection.workspace_id]
        return Decision(
            pool.id,
            pool.strategy,
            sender,
            selection.workspace_id,
            selection.score,
            selection,
            snapshot,
            snapshot.senders[index],
            snapshot.capacities[index].remaining_fraction,
            spilled,
            elapsed_us,
        )

    def _elapsed_us(self, pool_id: str, started: float, observe: bool) -> float:
        """Microseconds since `started` (perf_counter): the decision's time, observed per pool."""
        elapsed = time.perf_counter() - started
        if observe and self.metrics is not None:
            self.metrics.selection_time(pool_id, elapsed)
        return elapsed * 1e6

    def _refresh_ahead(self, pool: PoolView, sender: str) -> None:
        if (pool.id, sender) in self._taking:
            return
        ahead = self._capacity.ttl * _REFRESH_AHEAD
        # An empty context: the refresh serves every later message, so it must not log under this one's ids.
        task = asyncio.create_task(
            self._keep(pool, sender, within=ahead), name=f"pool-refresh-{pool.id}", context=contextvars.Context()
        )
        self._background.add(task)
        task.add_done_callback(self._refreshed)

    async def close(self) -> None:
        """Cancel the snapshot refreshes still running (at shutdown, before the backends they read close)."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    def _refreshed(self, task: asyncio.Task[_Kept]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:  # the next decision past the TTL reads in line
            log.warning("load_balancing.refresh_failed", error=type(task.exception()).__name__)

    async def _keep(self, pool: PoolView, sender: str, *, within: float = 0.0) -> _Kept:
        """Take a snapshot of `pool` for `sender` and keep it with its plan — or wait for the one being taken, if
        it was started on the same pool definition and health version. (The version is read before the awaits:
        a change while the snapshot is taken makes it stale at once.)"""
        key = (pool.id, sender)
        version = self._health.version
        taking = self._taking.get(key)
        if taking is not None and taking.pool is pool and taking.health_version == version:
            try:
                return await asyncio.shield(taking.future)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # this caller was cancelled
                # The taker was cancelled (a dry run whose request ended, say), not this caller: take it anew.
                return await self._keep(pool, sender, within=within)
        taking = self._taking[key] = _Taking(pool, version, asyncio.get_running_loop().create_future())
        try:
            snapshot, read_until, back_at = await self._snapshot(pool, sender, (), within=within)
            ahead = self._capacity.ttl * _REFRESH_AHEAD
            kept = _Kept(
                pool,
                snapshot,
                Plan(pool.strategy, snapshot.candidates),
                {m.workspace_id: i for i, m in enumerate(snapshot.members)},
                min(read_until, back_at),
                read_until - ahead if ahead > 0 else float("inf"),
                version,
            )
        except BaseException as exc:
            if isinstance(exc, Exception):
                taking.future.set_exception(exc)
                taking.future.exception()  # whoever waits gets it; nobody waiting is no error of its own
            else:
                taking.future.cancel()
            raise
        finally:
            current = self._taking.get(key) is taking
            if current:
                del self._taking[key]
        taking.future.set_result(kept)
        if current:  # not dropped by a refused reservation meanwhile
            self._install(key, kept)
        return kept

    def _install(self, key: tuple[str, str], kept: _Kept) -> None:
        plans = self._kept
        if len(plans) >= _MAX_PLANS:
            now = self._clock.monotonic()
            plans = self._kept = {k: v for k, v in plans.items() if v.expires > now}
            if len(plans) >= _MAX_PLANS:
                plans.clear()
        plans[key] = kept

    async def _snapshot(
        self,
        pool: PoolView,
        sender: str,
        exclude: Collection[str],
        refused: Collection[str] = (),
        *,
        fresh: bool = False,
        within: float = 0.0,
    ) -> tuple[Snapshot, float, float]:
        """The snapshot, and two monotonic times until which it stands: the oldest capacity entry's expiry, and
        the moment the first blocked member may take mail again (infinity when none is blocked)."""
        rewriting = self._catalog.rewriting
        members = list(pool.members)
        senders = [self.presented(m.workspace_id, sender) if m.workspace_id in rewriting else sender for m in members]
        pairs = [(m.workspace_id, who) for m, who in zip(members, senders, strict=True)]
        found, read_until = await self._capacity.read_until(pairs, fresh=fresh, within=within)
        capacities = [found[pair] for pair in pairs]
        now, monotonic = self._clock.now(), self._clock.monotonic()
        blocked = self._health.blocked_until
        in_flight = self._in_flight
        candidates = []
        back_at = float("inf")
        for m, capacity in zip(members, capacities, strict=True):
            ws = m.workspace_id
            until = blocked(ws, now)
            if until is not None:
                back_at = min(back_at, monotonic + (until - now).total_seconds())
            candidates.append(
                Candidate(
                    ws,
                    m.weight,
                    capacity.remaining_fraction,
                    capacity.next_capacity_in,
                    capacity.utilisation,
                    in_flight.get(ws, 0),
                    until is None,
                    m.min_capacity_threshold,
                    capacity.full_reset_in,
                    capacity.effective_limit,
                    m.enabled and ws not in exclude and ws not in refused,
                    True,
                )
            )
        snapshot = Snapshot(members, senders, capacities, candidates, now, self._health, exclude, refused)
        return snapshot, read_until, back_at

    def placed(self, decision: Decision) -> int | None:
        """The chosen workspace took the reservation and the send starts: count it in flight and log the decision.

        Returns the decision log's handle for `record_selection`.
        """
        assert decision.workspace_id is not None
        self._in_flight[decision.workspace_id] += 1
        self._chosen[(decision.pool_id, decision.workspace_id)] += 1
        if self.metrics is not None:
            self.metrics.selection(decision.pool_id, decision.workspace_id, decision.strategy)
        if self._selections is None:
            return None
        return self._selections.record(
            decision.pool_id, decision.workspace_id, decision.sender, decision.capacity_score
        )

    def refused(self, decision: Decision) -> None:
        """The chosen workspace's reservation was refused: the next snapshot must read its counters again, so
        every kept snapshot of this sender that has the workspace goes."""
        workspace_id = decision.workspace_id
        if workspace_id is None:
            return
        self._capacity.forget(workspace_id, decision.sent_as)
        for key in [k for k, kept in self._kept.items() if k[1] == decision.sender and workspace_id in kept.position]:
            del self._kept[key]
        for key, taking in list(self._taking.items()):  # read before this refusal: let it finish, not be kept
            if key[1] == decision.sender and any(m.workspace_id == workspace_id for m in taking.pool.members):
                del self._taking[key]

    def record_selection(
        self, workspace_id: str, success: bool, *, pool_id: str | None = None, handle: int | None = None
    ) -> None:
        """The PRD's RecordSelection: the send chosen by `placed` is over; `success` is whether it was sent."""
        count = self._in_flight.get(workspace_id, 0)
        if count > 1:
            self._in_flight[workspace_id] = count - 1
        else:  # gone rather than 0: `least_used` walks the workspaces with sends under way
            self._in_flight.pop(workspace_id, None)
        if success and pool_id is not None:
            self._succeeded[(pool_id, workspace_id)] += 1
        if handle is not None and self._selections is not None:
            self._selections.settle(handle, success)

    def exhausted(self, decision: Decision, fallback_action: str) -> None:
        """Record `pool_exhausted`: no member could take the message, and what happens to it instead."""
        self._exhausted[decision.pool_id] += 1
        self._last_exhausted[decision.pool_id] = self._clock.now()
        log.warning(
            "load_balancing.pool_exhausted",
            pool_id=decision.pool_id,
            sender_email=decision.sender,
            available_workspaces=0,
            fallback_action=fallback_action,
            excluded={m.workspace_id: m.excluded for m in decision.members if m.excluded},
        )

    def selection_failed(self, pool_id: str, sender: str, error: BaseException) -> None:
        self.selection_failures += 1
        log.error(
            "load_balancing.selection_failed", pool_id=pool_id, sender_email=sender, error=f"{type(error).__name__}"
        )

    async def get_pool_status(self, pool_id: str, sender: str | None = None) -> PoolStatus | None:
        """Members with weight, health, capacity (for `sender`, or the workspace limits alone) and the counts."""
        pool = self._catalog.get(pool_id)
        if pool is None:
            return None
        who = sender or "(any sender)"
        snapshot, _, _ = await self._snapshot(pool, who, (), fresh=True)  # a status is read rarely: the counters now
        kept, excluded = eligible(snapshot.candidates)
        # A member only under its capacity threshold still takes mail (the pool spills to it when no other can).
        spill = sum(1 for reason in excluded.values() if reason == BELOW_THRESHOLD)
        return PoolStatus(
            pool_id=pool.id,
            name=pool.name,
            strategy=pool.strategy,
            enabled=pool.enabled,
            members=snapshot.reports(None),
            available=len(kept) + spill,
            selections={ws: n for (p, ws), n in self._chosen.items() if p == pool.id},
            successes={ws: n for (p, ws), n in self._succeeded.items() if p == pool.id},
            exhausted=self._exhausted[pool.id],
            last_exhausted_at=self._last_exhausted.get(pool.id),
            skipped=pool.skipped,
        )


def _passing_over(
    snapshot: Snapshot, pool: PoolView, exclude: Collection[str], refused: Collection[str]
) -> tuple[Snapshot, Plan]:
    """`snapshot` with the members tried or refused in this delivery pass taken out, and its plan."""
    candidates = [
        replace(c, enabled=False) if c.workspace_id in exclude or c.workspace_id in refused else c
        for c in snapshot.candidates
    ]
    passed = replace(snapshot, candidates=candidates, exclude=exclude, refused=refused)
    return passed, Plan(pool.strategy, candidates)


def _relaxed(snapshot: Snapshot, pool: PoolView) -> tuple[Snapshot, Plan]:
    """`snapshot` with every member's capacity threshold set aside, and its plan."""
    relaxed = [replace(c, min_capacity_threshold=0.0) for c in snapshot.candidates]
    return replace(snapshot, candidates=relaxed), Plan(pool.strategy, relaxed)

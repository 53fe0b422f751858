"""The PRD's `LoadBalancer` (TR1): one pool's choice for one sender, with its evidence, and the pool's status.

It gathers the snapshot — members from the `PoolCatalog`, capacity from the `CapacityView`, health from the
`HealthView`, in-flight sends it counts itself — and lets the pure `relay.balancer.select` decide. It does not
reserve: the delivery worker reserves the chosen workspace and, when the reservation is refused, asks again
with that member excluded.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from random import Random
from typing import Any

import structlog

from ..balancer import Candidate, RoundRobin, Selection, eligible, select
from ..balancer.eligibility import BELOW_THRESHOLD
from ..clock import Clock
from ..limits import Capacity
from ..metrics import Metrics
from ..routing import Member, presented_sender
from ..store import SelectionLog
from .capacity import CapacityView
from .catalog import PoolCatalog, PoolView
from .health import HealthView

__all__ = ["ALREADY_TRIED", "RESERVATION_REFUSED", "Decision", "LoadBalancer", "MemberReport", "PoolStatus", "Snapshot"]

log = structlog.get_logger(__name__)

ALREADY_TRIED = "already_tried"  # sent to in this delivery pass already
RESERVATION_REFUSED = "reservation_refused"  # its limits refused this send in this pass (nothing was sent)


@dataclass(frozen=True, slots=True)
class MemberReport:
    """One member at decision time: its inputs, and its score or why it was excluded."""

    workspace_id: str
    weight: float
    enabled: bool
    health: str  # healthy | degraded | throttled | open | half_open | auth_broken
    blocked_until: datetime | None
    sender: str  # the sender as this workspace will present it
    remaining: int
    limit: int
    remaining_fraction: float
    next_capacity_in: float
    full_reset_in: float
    in_flight: int
    score: float | None = None
    excluded: str | None = None
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one decision saw, member by member (parallel lists); turned into `MemberReport`s only on demand."""

    members: list[Member]
    senders: list[str]
    capacities: list[Capacity]
    candidates: list[Candidate]
    now: datetime
    health: HealthView
    exclude: Collection[str] = ()
    refused: Collection[str] = ()

    def reports(self, selection: Selection | None) -> tuple[MemberReport, ...]:
        _, excluded = eligible(self.candidates)
        scores = selection.scores if selection else {}
        out = []
        for m, who, capacity, c in zip(self.members, self.senders, self.capacities, self.candidates, strict=True):
            ws = m.workspace_id
            blocked_until = self.health.blocked_until(ws, self.now)
            health = self.health.health(ws, self.now)
            out.append(
                MemberReport(
                    workspace_id=ws,
                    weight=m.weight,
                    enabled=m.enabled,
                    health=health.state,
                    last_error=health.last_error,
                    blocked_until=blocked_until,
                    sender=who,
                    remaining=capacity.effective_remaining,
                    limit=capacity.effective_limit,
                    remaining_fraction=capacity.remaining_fraction,
                    next_capacity_in=capacity.next_capacity_in,
                    full_reset_in=capacity.full_reset_in,
                    in_flight=c.in_flight,
                    score=scores.get(ws),
                    excluded=self.passed_over(ws) or excluded.get(ws),
                )
            )
        return tuple(out)

    def passed_over(self, workspace_id: str) -> str | None:
        """Why this pass left the member out (tried, or its reservation refused), if it did."""
        if workspace_id in self.refused:
            return RESERVATION_REFUSED
        return ALREADY_TRIED if workspace_id in self.exclude else None


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer for one message: `workspace_id` is None when no member is available (the pool is exhausted).

    `sent_as` is the sender as the chosen workspace presents it; `capacity_score` its effective remaining fraction
    (`load_balancing_selections.capacity_score`). Per-member detail (`members`) is built only when asked for:
    the delivery path needs the evidence, not the reports.
    """

    pool_id: str
    strategy: str
    sender: str
    workspace_id: str | None
    score: float
    selection: Selection | None = None
    snapshot: Snapshot | None = None
    sent_as: str = ""
    capacity_score: float | None = None
    spilled: bool = False  # every member was under its min_capacity_threshold, so the threshold was ignored
    elapsed_us: float = 0.0

    @property
    def members(self) -> tuple[MemberReport, ...]:
        return self.snapshot.reports(self.selection) if self.snapshot is not None else ()

    def member(self, workspace_id: str) -> MemberReport | None:
        return next((m for m in self.members if m.workspace_id == workspace_id), None)

    def earliest_capacity_in(self, now: datetime) -> float | None:
        """Seconds until the first member that is unavailable only for capacity or health may take mail again;
        None when no member says (all disabled, or all passed over in this pass — the caller knows why)."""
        waits: list[float] = []
        for m in self.members:
            if not m.enabled or m.weight <= 0 or m.excluded in (ALREADY_TRIED, RESERVATION_REFUSED):
                continue
            if m.blocked_until is not None:
                waits.append((m.blocked_until - now).total_seconds())
            elif m.next_capacity_in > 0:
                waits.append(m.next_capacity_in)
            elif m.excluded is None or m.remaining > 0:
                waits.append(0.0)
        positive = [w for w in waits if w > 0]
        if len(positive) < len(waits):
            return 1.0  # something may take mail now (a refused reservation raced us): look again shortly
        return min(positive, default=None)

    def evidence(self) -> dict[str, Any]:
        """What the attempt records about this decision (`delivery_attempts.selection`)."""
        out: dict[str, Any] = {"pool": self.pool_id, "strategy": self.strategy, "workspace": self.workspace_id}
        if self.workspace_id is not None:
            out["score"] = round(self.score, 4)
            out["capacity"] = round(self.capacity_score or 0.0, 4)
        selection, snapshot = self.selection, self.snapshot
        if selection is not None:
            out["scores"] = {ws: round(v, 4) for ws, v in selection.scores.items()}
            excluded = dict(selection.excluded)
        else:
            out["scores"] = {}
            excluded = eligible(snapshot.candidates)[1] if snapshot is not None else {}
        if snapshot is not None:
            for ws in [*snapshot.exclude, *snapshot.refused]:
                if ws in excluded:
                    excluded[ws] = snapshot.passed_over(ws) or excluded[ws]
        if excluded:
            out["excluded"] = excluded
        if self.spilled:
            out["spilled"] = True
        return out


@dataclass(frozen=True, slots=True)
class PoolStatus:
    pool_id: str
    name: str
    strategy: str
    enabled: bool
    members: tuple[MemberReport, ...]
    available: int
    selections: dict[str, int] = field(default_factory=dict)
    successes: dict[str, int] = field(default_factory=dict)
    exhausted: int = 0
    last_exhausted_at: datetime | None = None
    skipped: tuple[tuple[str, str], ...] = ()


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
        observe = simulation is None
        pool = self._catalog.get(pool_id)
        if pool is None:
            return Decision(pool_id, "", sender, None, 0.0)
        snapshot = await self._snapshot(pool, sender, exclude, refused)
        candidates = snapshot.candidates
        states = self._round_robin if simulation is None else simulation
        state = states.setdefault(pool.id, RoundRobin()) if pool.strategy == "round_robin" else None
        selection = select(pool.strategy, candidates, self._rng, state)
        spilled = False
        if selection is None:
            kept, excluded = eligible(candidates)
            if not kept and BELOW_THRESHOLD in excluded.values():
                # Every member with capacity is under its threshold: use what is left rather than call the pool
                # exhausted with capacity unused (the threshold orders members, it does not strand quota).
                relaxed = [replace(c, min_capacity_threshold=0.0) for c in candidates]
                snapshot = replace(snapshot, candidates=relaxed)
                selection = select(pool.strategy, relaxed, self._rng, state)
                spilled = selection is not None
        if selection is None:
            elapsed_us = self._elapsed_us(pool.id, started, observe)
            return Decision(pool.id, pool.strategy, sender, None, 0.0, None, snapshot, sender, None, False, elapsed_us)
        index = next(i for i, m in enumerate(snapshot.members) if m.workspace_id == selection.workspace_id)
        return Decision(
            pool_id=pool.id,
            strategy=pool.strategy,
            sender=sender,
            workspace_id=selection.workspace_id,
            score=selection.score,
            selection=selection,
            snapshot=snapshot,
            sent_as=snapshot.senders[index],
            capacity_score=snapshot.capacities[index].remaining_fraction,
            spilled=spilled,
            elapsed_us=self._elapsed_us(pool.id, started, observe),
        )

    def _elapsed_us(self, pool_id: str, started: float, observe: bool) -> float:
        """Microseconds since `started` (perf_counter): the decision's time, observed per pool."""
        elapsed = time.perf_counter() - started
        if observe and self.metrics is not None:
            self.metrics.selection_time(pool_id, elapsed)
        return elapsed * 1e6

    async def _snapshot(
        self,
        pool: PoolView,
        sender: str,
        exclude: Collection[str],
        refused: Collection[str] = (),
        *,
        fresh: bool = False,
    ) -> Snapshot:
        rewriting = self._catalog.rewriting
        members = list(pool.members)
        senders = [self.presented(m.workspace_id, sender) if m.workspace_id in rewriting else sender for m in members]
        pairs = [(m.workspace_id, who) for m, who in zip(members, senders, strict=True)]
        found = await self._capacity.read(pairs, fresh=fresh)
        capacities = [found[pair] for pair in pairs]
        now = self._clock.now()
        blocked = self._health.blocked_until
        in_flight = self._in_flight
        candidates = [
            Candidate(
                m.workspace_id,
                m.weight,
                capacity.remaining_fraction,
                capacity.next_capacity_in,
                capacity.utilisation,
                in_flight.get(m.workspace_id, 0),
                blocked(m.workspace_id, now) is None,
                m.min_capacity_threshold,
                capacity.full_reset_in,
                capacity.effective_limit,
                m.enabled and m.workspace_id not in exclude and m.workspace_id not in refused,
                True,
            )
            for m, capacity in zip(members, capacities, strict=True)
        ]
        return Snapshot(members, senders, capacities, candidates, now, self._health, exclude, refused)

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
        """The chosen workspace's reservation was refused: the next snapshot must read its counters again."""
        if decision.workspace_id is not None:
            self._capacity.forget(decision.workspace_id, decision.sent_as)

    def record_selection(
        self, workspace_id: str, success: bool, *, pool_id: str | None = None, handle: int | None = None
    ) -> None:
        """The PRD's RecordSelection: the send chosen by `placed` is over; `success` is whether it was sent."""
        if self._in_flight[workspace_id] > 0:
            self._in_flight[workspace_id] -= 1
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
        snapshot = await self._snapshot(pool, who, (), fresh=True)  # a status is read rarely: the counters now
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

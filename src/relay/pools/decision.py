"""What a `LoadBalancer` decision is made of and what it answers: the snapshot it saw, the decision with its
evidence, each member's report (built only when asked for), and a pool's status."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..balancer import Candidate, Selection, eligible
from ..limits import Capacity
from ..routing import Member
from .health import HealthView

__all__ = ["ALREADY_TRIED", "RESERVATION_REFUSED", "Decision", "MemberReport", "PoolStatus", "Snapshot"]

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
    """What one decision saw, member by member (parallel lists); turned into `MemberReport`s only on demand.

    A `LoadBalancer` reuses one snapshot for the decisions of one (pool, sender) while its inputs stand (at most
    the capacity cache's TTL), so `now`, health and the candidates' `in_flight` are as of when it was taken.
    """

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


# Not frozen: one is built per message on the delivery path, and a frozen dataclass of this size costs several
# times as much to construct. Nothing mutates one; treat it as a value.
@dataclass(slots=True)
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

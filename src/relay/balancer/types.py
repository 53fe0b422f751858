"""The balancer's inputs and output: snapshots the caller builds, and the decision with its evidence."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Candidate", "Selection"]


# Not frozen: one decision builds a Candidate per member (50 in a large pool), and a frozen dataclass costs three
# times as much to construct. Nothing here mutates one; treat them as values.
@dataclass(slots=True)
class Candidate:
    """One pool member as the balancer sees it at decision time; the caller fills it from config and limits.

    `weight` is the member's configured weight; `remaining_fraction`, `next_capacity_in`, `full_reset_in` and
    `utilisation` come from `relay.limits.Capacity` for (workspace, sender); `limit` is that capacity's
    effective daily limit (0 when unknown), used to turn `in_flight` (sends under way from this process, not yet
    in the snapshot) into utilisation. `min_capacity_threshold` is the workspace's
    `load_balancing.min_capacity_threshold`. `enabled` is the member's `enabled`, `healthy` the workspace's
    health, and `sender_allowed` whether it may send for this sender.
    """

    workspace_id: str
    weight: float
    remaining_fraction: float
    next_capacity_in: float
    utilisation: float
    in_flight: int
    healthy: bool
    min_capacity_threshold: float = 0.0
    full_reset_in: float = 0.0
    limit: int = 0
    enabled: bool = True
    sender_allowed: bool = True


@dataclass(frozen=True, slots=True)
class Selection:
    """A decision: the winner, its score, the strategy name (`reason`), every eligible member's score under
    that strategy, and why each other member was excluded (workspace id → reason code)."""

    workspace_id: str
    score: float
    reason: str
    scores: dict[str, float]
    excluded: dict[str, str] = field(default_factory=dict)

"""The balancer's inputs and output: snapshots the caller builds, and the decision with its evidence."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["Candidate", "Scores", "Selection"]


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


@dataclass(slots=True)  # not frozen, like Candidate: one per decision; treat it as a value
class Selection:
    """A decision: the winner, its score, the strategy name (`reason`), every eligible member's score under
    that strategy, and why each other member was excluded (workspace id → reason code). `scores` may be shared
    between selections or read lazily (`Scores`): read it, never change it."""

    workspace_id: str
    score: float
    reason: str
    scores: Mapping[str, float]
    excluded: dict[str, str] = field(default_factory=dict)


class Scores(Mapping[str, float]):
    """Every member's score as a read-only mapping over parallel `ids` and `values`, `index` mapping an id to its
    position. A pick needs only the winner's score; the full set is read once, when the attempt records the
    decision's evidence, so strategies whose scores change with every pick (`round_robin`) hand out this view
    over a copy of their values instead of building a dict per pick."""

    __slots__ = ("_ids", "_index", "_values")

    def __init__(self, ids: Sequence[str], values: Sequence[float], index: Mapping[str, int]) -> None:
        self._ids = ids
        self._values = values
        self._index = index

    def __getitem__(self, workspace_id: str) -> float:
        return self._values[self._index[workspace_id]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return repr(dict(self))

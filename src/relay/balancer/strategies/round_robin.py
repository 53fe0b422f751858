"""`round_robin`: nginx's smooth weighted round robin over the eligible members, one `RoundRobin` per pool.

Each member has `current` (starts at 0) and `effective` (starts at its weight). On each pick, for every eligible
member: `current += effective`, `total += effective`, and `effective` climbs by 1 towards the weight if a failure
lowered it. The largest `current` wins (first in candidate order on a tie) and has `total` subtracted. With
integer weights w_i a full cycle is Σw picks with exactly w_i for each, interleaved (5, 1, 1 → a a b a c a a),
and from the zero state every prefix stays within one pick of its share. The `current` values always sum to 0.

Each process starts at a random offset: on the first pick the scheduler silently advances a number of picks
drawn from the injected rng over [0, min(Σw, MAX_OFFSET)), so processes do not all send to the same member first
(Envoy #32233). Cost: O(n) per pick (one pass over the eligible members, dictionary lookups); the offset costs
up to MAX_OFFSET silent picks once per pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from random import Random

from ..types import Candidate, Selection

__all__ = ["MAX_OFFSET", "NAME", "RoundRobin", "pick"]

NAME = "round_robin"
MAX_OFFSET = 1024


class RoundRobin:
    """Smooth weighted round-robin state of one pool in one process. Not thread-safe; no I/O."""

    __slots__ = ("_current", "_effective", "_offset", "_weight")

    def __init__(self, offset: int | None = None) -> None:
        """`offset`: picks to skip before the first real one; None draws it from the rng on the first pick."""
        self._current: dict[str, float] = {}
        self._effective: dict[str, float] = {}
        self._weight: dict[str, float] = {}
        self._offset = offset

    @property
    def current(self) -> dict[str, float]:
        """A copy of every member's `current` value (their sum is 0)."""
        return dict(self._current)

    def failed(self, workspace_id: str, max_fails: int = 1) -> None:
        """nginx's passive penalty: lower the member's effective weight by weight / max_fails (not below 0)."""
        if workspace_id in self._weight:
            lowered = self._effective[workspace_id] - self._weight[workspace_id] / max(max_fails, 1)
            self._effective[workspace_id] = max(lowered, 0.0)

    def pick(self, candidates: Sequence[Candidate], rng: Random) -> Selection | None:
        """The next member among the eligible `candidates`, or None when there is none with weight > 0."""
        if not candidates:
            return None
        if self._offset is None:
            total_weight = sum(c.weight for c in candidates if c.weight > 0)
            self._offset = rng.randrange(max(1, min(round(total_weight), MAX_OFFSET)))
        if self._offset:
            skip, self._offset = self._offset, 0
            for _ in range(skip):
                self._step(candidates)
        return self._step(candidates)

    def _step(self, candidates: Sequence[Candidate]) -> Selection | None:
        current, effective, weights = self._current, self._effective, self._weight
        total = 0.0
        best: str | None = None
        best_value = 0.0
        scores: dict[str, float] = {}
        for c in candidates:
            ws, weight = c.workspace_id, c.weight
            if not weight > 0:
                continue
            if weights.get(ws) != weight:  # new member or changed weight: full effective weight again
                weights[ws] = weight
                effective[ws] = weight
                current.setdefault(ws, 0.0)
            eff = effective[ws]
            value = current[ws] + eff
            current[ws] = value
            scores[ws] = value
            total += eff
            if eff < weight:
                effective[ws] = min(weight, eff + 1.0)
            if best is None or value > best_value:
                best, best_value = ws, value
        if best is None:
            return None
        current[best] = best_value - total
        return Selection(workspace_id=best, score=best_value, reason=NAME, scores=scores)


def pick(candidates: Sequence[Candidate], rng: Random, state: RoundRobin | None = None) -> Selection | None:
    """Module-level form for `STRATEGIES`: `state` is the pool's `RoundRobin`, which the caller keeps."""
    if state is None:
        raise ValueError("round_robin needs the pool's RoundRobin state (one per pool, kept between picks)")
    return state.pick(candidates, rng)

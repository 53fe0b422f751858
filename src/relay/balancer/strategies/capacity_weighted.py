"""`capacity_weighted`: weighted random choice on a capacity score (the default strategy).

    score = weight x remaining_fraction x urgency
    urgency = 2 - min(full_reset_in, RESET_HORIZON) / RESET_HORIZON        (RESET_HORIZON = 86,400 s)

`remaining_fraction` is the effective (more restrictive of workspace and sender) remaining / limit. `urgency`
falls linearly from 2 (quota resets now) to 1 (a day or more away), so of two otherwise equal members the one
whose quota comes back sooner gets more traffic (capacity that would be lost at its reset is used first), while
the factor stays bounded at 2x and the configured weights keep deciding. The notes' unbounded
`w x remaining / max(t, 60)` would swing 1440x between "resets in a minute" and "in a day", which drowns the
weights. A score that is not > 0 is never picked. Cost: `prepare` is O(n) (scores and cumulative sums), each
pick O(log n) bisection and one `rng.random()`; the scores dict is shared by every pick of one preparation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from random import Random

from ..types import Candidate, Selection
from .random_weighted import weighted_index

__all__ = ["NAME", "RESET_HORIZON", "Prepared", "pick", "prepare", "score"]

NAME = "capacity_weighted"
RESET_HORIZON = 86_400.0


def score(c: Candidate) -> float:
    """The capacity score of one member (0 for anything without weight or remaining capacity)."""
    weight, fraction, wait = c.weight, c.remaining_fraction, c.full_reset_in
    if not (weight > 0 and fraction > 0):
        return 0.0
    urgency = 2.0 if wait <= 0 else 1.0 if wait >= RESET_HORIZON else 2.0 - wait / RESET_HORIZON
    return weight * (fraction if fraction < 1.0 else 1.0) * urgency


class Prepared:
    """Every member's score and the cumulative sums of the positive ones, for any number of picks."""

    __slots__ = ("_cumulative", "_positive", "_scores")

    def __init__(self, candidates: Sequence[Candidate]) -> None:
        scores: dict[str, float] = {}
        positive: list[str] = []
        cumulative: list[float] = []
        total = 0.0
        for c in candidates:  # `score` inlined: one pass per preparation
            weight, fraction, wait = c.weight, c.remaining_fraction, c.full_reset_in
            if weight > 0 and fraction > 0:
                urgency = 2.0 if wait <= 0 else 1.0 if wait >= RESET_HORIZON else 2.0 - wait / RESET_HORIZON
                value = weight * (fraction if fraction < 1.0 else 1.0) * urgency
                if value > 0:
                    total += value
                    positive.append(c.workspace_id)
                    cumulative.append(total)
            else:
                value = 0.0
            scores[c.workspace_id] = value
        self._scores = scores
        self._positive = positive
        self._cumulative = cumulative

    def pick(
        self,
        rng: Random,
        state: object = None,
        in_flight: Mapping[str, int] | None = None,
        excluded: dict[str, str] | None = None,
    ) -> Selection | None:
        """Probability score / total; None when every score is 0. Sends in flight do not change a score."""
        index = weighted_index(self._cumulative, rng)
        if index is None:
            return None
        winner = self._positive[index]
        return Selection(winner, self._scores[winner], NAME, self._scores, {} if excluded is None else excluded)


def prepare(candidates: Sequence[Candidate]) -> Prepared:
    return Prepared(candidates)


def pick(candidates: Sequence[Candidate], rng: Random, state: object = None) -> Selection | None:
    """Choose among eligible `candidates` with probability score / total; None when every score is 0."""
    return Prepared(candidates).pick(rng)

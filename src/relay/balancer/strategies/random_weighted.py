"""`random_weighted`: weighted random choice by configured weight, via cumulative sums and bisection.

Cost: `prepare` is O(n) (the cumulative sums), each pick O(log n) bisection and one `rng.random()`. (The alias
method would make the pick O(1) too, but its table is O(n) to build, which a preparation already pays.)
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from itertools import accumulate
from random import Random

from ..types import Candidate, Selection

__all__ = ["NAME", "Prepared", "pick", "prepare", "weighted_index"]

NAME = "random_weighted"


def weighted_index(cumulative: Sequence[float], rng: Random) -> int | None:
    """Index i with probability (cum[i] - cum[i-1]) / cum[-1]; a zero-width entry is never returned.

    `bisect_right` finds the first cumulative sum strictly above x ∈ [0, total), so an entry whose weight is 0
    (equal to its predecessor's sum) cannot be hit. None when the total is not positive.
    """
    if not cumulative or not cumulative[-1] > 0:
        return None
    index = bisect_right(cumulative, rng.random() * cumulative[-1])
    # x < total in exact arithmetic; guard the float edge so the last positive entry is returned.
    while index >= len(cumulative) or (index > 0 and cumulative[index] == cumulative[index - 1]):
        index -= 1
    return index


class Prepared:
    """The members' weights (their scores) and cumulative sums, for any number of picks."""

    __slots__ = ("_cumulative", "_ids", "_scores", "_weights")

    def __init__(self, candidates: Sequence[Candidate]) -> None:
        self._ids = [c.workspace_id for c in candidates]
        self._weights = [c.weight for c in candidates]
        self._cumulative = list(accumulate(self._weights))
        self._scores = dict(zip(self._ids, self._weights, strict=True))

    def pick(
        self,
        rng: Random,
        state: object = None,
        in_flight: Mapping[str, int] | None = None,
        excluded: dict[str, str] | None = None,
    ) -> Selection | None:
        """Probability weight / Σweight; None when there is no positive weight."""
        index = weighted_index(self._cumulative, rng)
        if index is None:
            return None
        return Selection(
            self._ids[index], self._weights[index], NAME, self._scores, {} if excluded is None else excluded
        )


def prepare(candidates: Sequence[Candidate]) -> Prepared:
    return Prepared(candidates)


def pick(candidates: Sequence[Candidate], rng: Random, state: object = None) -> Selection | None:
    """Choose among eligible `candidates` with probability weight / Σweight. Score = configured weight."""
    return Prepared(candidates).pick(rng)

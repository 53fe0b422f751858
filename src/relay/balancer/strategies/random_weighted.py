"""`random_weighted`: weighted random choice by configured weight, via cumulative sums and bisection.

Cost: O(n) to build the cumulative sums plus O(log n) to bisect, one `rng.random()` per pick. (The alias method
would make the pick O(1) but needs an O(n) table per change; weights and eligibility change between picks.)
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate
from random import Random

from ..types import Candidate, Selection

__all__ = ["NAME", "pick", "weighted_index"]

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


def pick(candidates: Sequence[Candidate], rng: Random, state: object = None) -> Selection | None:
    """Choose among eligible `candidates` with probability weight / Σweight. Score = configured weight."""
    if not candidates:
        return None
    weights = [c.weight for c in candidates]
    index = weighted_index(list(accumulate(weights)), rng)
    if index is None:
        return None
    return Selection(
        workspace_id=candidates[index].workspace_id,
        score=weights[index],
        reason=NAME,
        scores={c.workspace_id: w for c, w in zip(candidates, weights, strict=True)},
    )

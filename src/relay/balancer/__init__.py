"""Load balancer: pure, synchronous choice of one workspace in a pool (issue 5, scope 3 and 4).

No I/O, no clock, no global randomness: the caller builds `Candidate` snapshots (config weights, `Capacity` from
`relay.limits`, health), passes a `random.Random`, and for `round_robin` keeps one `RoundRobin` per pool.
`select` applies eligibility first, then the pool's strategy, and returns the `Selection` with every eligible
member's score and every other member's exclusion reason, or None when no member is eligible (the caller can
call `eligible` itself to report why). `Plan` is the same decision split in two, for callers that decide many
times on one snapshot: eligibility and the strategy's O(n) preparation once, then one cheap `pick` per decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from random import Random

from relay.config import Strategy

from .eligibility import eligible, exclusion_reason
from .plan import Plan
from .strategies import STRATEGIES, Pick, RoundRobin
from .types import Candidate, Selection

__all__ = [
    "STRATEGIES",
    "Candidate",
    "Pick",
    "Plan",
    "RoundRobin",
    "Selection",
    "eligible",
    "exclusion_reason",
    "select",
]


def select(
    strategy: Strategy, candidates: Sequence[Candidate], rng: Random, state: RoundRobin | None = None
) -> Selection | None:
    """One decision: eligibility, then `STRATEGIES[strategy]`. `state` is required for `round_robin`."""
    return Plan(strategy, candidates).pick(rng, state)

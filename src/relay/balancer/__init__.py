"""Load balancer: pure, synchronous choice of one workspace in a pool (issue 5, scope 3 and 4).

No I/O, no clock, no global randomness: the caller builds `Candidate` snapshots (config weights, `Capacity` from
`relay.limits`, health), passes a `random.Random`, and for `round_robin` keeps one `RoundRobin` per pool.
`select` applies eligibility first, then the pool's strategy, and returns the `Selection` with every eligible
member's score and every other member's exclusion reason, or None when no member is eligible (the caller can
call `eligible` itself to report why).
"""

from __future__ import annotations

from collections.abc import Sequence
from random import Random

from relay.config import Strategy

from .eligibility import eligible, exclusion_reason
from .strategies import STRATEGIES, Pick, RoundRobin
from .types import Candidate, Selection

__all__ = ["STRATEGIES", "Candidate", "Pick", "RoundRobin", "Selection", "eligible", "exclusion_reason", "select"]


def select(
    strategy: Strategy, candidates: Sequence[Candidate], rng: Random, state: RoundRobin | None = None
) -> Selection | None:
    """One decision: eligibility, then `STRATEGIES[strategy]`. `state` is required for `round_robin`."""
    pick = STRATEGIES.get(strategy)
    if pick is None:
        raise ValueError(f'unknown strategy "{strategy}" (known: {", ".join(STRATEGIES)})')
    kept, excluded = eligible(candidates)
    if not kept:
        return None
    selection = pick(kept, rng, state)
    if selection is None or not excluded:
        return selection
    return Selection(selection.workspace_id, selection.score, selection.reason, selection.scores, excluded)

"""The four strategies of `relay.config.Strategy`, each a pure `pick(eligible, rng, state) -> Selection | None`.

`STRATEGIES` is keyed exactly by the configuration's literal names. Every `pick` takes members that already
passed eligibility; only `round_robin` uses `state` (the pool's `RoundRobin`), the others ignore it.

Each strategy also splits its work in two: `prepare(eligible)` does the O(n) part that depends only on the
candidates (scores, cumulative sums), and the `Prepared` value's `pick(rng, state, in_flight, excluded)` draws
one decision from it; `pick(eligible, rng, state)` is `prepare(eligible).pick(rng, state)`. A caller that
decides many times on the same snapshot (`relay.pools.LoadBalancer`) prepares once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from random import Random
from typing import Protocol

from relay.config import Strategy

from ..types import Candidate, Selection
from . import capacity_weighted, least_used, random_weighted, round_robin
from .round_robin import RoundRobin

__all__ = ["PREPARE", "STRATEGIES", "Pick", "Prepare", "Prepared", "RoundRobin"]

Pick = Callable[[Sequence[Candidate], Random, RoundRobin | None], Selection | None]


class Prepared(Protocol):
    def pick(
        self,
        rng: Random,
        state: RoundRobin | None = None,
        in_flight: Mapping[str, int] | None = None,
        excluded: dict[str, str] | None = None,
    ) -> Selection | None: ...


Prepare = Callable[[Sequence[Candidate]], Prepared]

STRATEGIES: dict[Strategy, Pick] = {
    "capacity_weighted": capacity_weighted.pick,
    "round_robin": round_robin.pick,
    "least_used": least_used.pick,
    "random_weighted": random_weighted.pick,
}

PREPARE: dict[Strategy, Prepare] = {
    "capacity_weighted": capacity_weighted.prepare,
    "round_robin": round_robin.prepare,
    "least_used": least_used.prepare,
    "random_weighted": random_weighted.prepare,
}

"""The four strategies of `relay.config.Strategy`, each a pure `pick(eligible, rng, state) -> Selection | None`.

`STRATEGIES` is keyed exactly by the configuration's literal names. Every `pick` takes members that already
passed eligibility; only `round_robin` uses `state` (the pool's `RoundRobin`), the others ignore it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from random import Random

from relay.config import Strategy

from ..types import Candidate, Selection
from . import capacity_weighted, least_used, random_weighted, round_robin
from .round_robin import RoundRobin

__all__ = ["STRATEGIES", "Pick", "RoundRobin"]

Pick = Callable[[Sequence[Candidate], Random, RoundRobin | None], Selection | None]

STRATEGIES: dict[Strategy, Pick] = {
    "capacity_weighted": capacity_weighted.pick,
    "round_robin": round_robin.pick,
    "least_used": least_used.pick,
    "random_weighted": random_weighted.pick,
}

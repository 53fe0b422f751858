"""A `Plan`: eligibility and a strategy's preparation done once for one set of candidates, then any number of
picks. Pure: the round-robin state, the rng and the live in-flight counts come in with each pick."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from random import Random

from relay.config import Strategy

from .eligibility import eligible
from .strategies import PREPARE, Prepared, RoundRobin
from .types import Candidate, Selection

__all__ = ["Plan"]


class Plan:
    """`Plan(strategy, candidates).pick(rng, state)` is `select(strategy, candidates, rng, state)`; a plan kept
    while its candidates still describe the pool makes each further decision O(1) (O(n) in C for `round_robin`).

    `kept` are the eligible candidates in order and `excluded` the others' reasons (workspace id → reason).
    The `Selection`s a plan returns share its `excluded` dict, and for `capacity_weighted` and `random_weighted`
    its scores dict: treat them as read-only.
    """

    __slots__ = ("_prepared", "candidates", "excluded", "kept", "strategy")

    def __init__(self, strategy: Strategy, candidates: Sequence[Candidate]) -> None:
        prepare = PREPARE.get(strategy)
        if prepare is None:
            raise ValueError(f'unknown strategy "{strategy}" (known: {", ".join(PREPARE)})')
        self.strategy = strategy
        self.candidates = candidates
        self.kept, self.excluded = eligible(candidates)
        self._prepared: Prepared | None = prepare(self.kept) if self.kept else None

    def pick(
        self, rng: Random, state: RoundRobin | None = None, in_flight: Mapping[str, int] | None = None
    ) -> Selection | None:
        """One decision, or None when no member is eligible. `state` is required for `round_robin`; `in_flight`
        (sends under way per workspace now) replaces the candidates' own counts for `least_used`."""
        if self._prepared is None:
            return None
        return self._prepared.pick(rng, state, in_flight, self.excluded)

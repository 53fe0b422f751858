"""Helpers for the balancer tests: candidates with sensible defaults, and picks counted over many draws."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from random import Random
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from relay.balancer import Candidate, RoundRobin, select
from relay.config import Strategy

SEED = 20261204
PICKS = 100_000


def member(workspace_id: str, weight: float = 1.0, **overrides: Any) -> Candidate:
    """An eligible member with full capacity unless `overrides` say otherwise."""
    fields: dict[str, Any] = {
        "remaining_fraction": 1.0,
        "next_capacity_in": 0.0,
        "utilisation": 0.0,
        "in_flight": 0,
        "healthy": True,
    }
    fields.update(overrides)
    return Candidate(workspace_id=workspace_id, weight=weight, **fields)


def pool(*weights: float) -> list[Candidate]:
    """Members a, b, c, ... with the given weights."""
    return [member(chr(ord("a") + i), w) for i, w in enumerate(weights)]


def picks(
    strategy: Strategy,
    candidates: Sequence[Candidate],
    n: int = PICKS,
    seed: int = SEED,
    state: RoundRobin | None = None,
) -> list[str]:
    """`n` decisions by `select` with one seeded rng; every decision must find a member."""
    rng = Random(seed)
    out: list[str] = []
    for _ in range(n):
        selection = select(strategy, candidates, rng, state)
        assert selection is not None
        out.append(selection.workspace_id)
    return out


def shares(sequence: Sequence[str]) -> dict[str, float]:
    counts = Counter(sequence)
    return {ws: count / len(sequence) for ws, count in counts.items()}


class ScriptedRandom(Random):
    """A `Random` whose `random()` returns the scripted values in order (Envoy-style exact-pick tests)."""

    def __init__(self, values: Sequence[float]) -> None:
        super().__init__(0)
        self._values = list(values)

    def random(self) -> float:
        return self._values.pop(0)


PROPERTY = settings(derandomize=True, deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def candidate_lists(draw: st.DrawFn) -> list[Candidate]:
    """Pools of 0-12 members with unique ids, mixing eligible and ineligible members and edge values."""
    size = draw(st.integers(min_value=0, max_value=12))
    fraction = st.one_of(st.sampled_from([0.0, 0.1, 1.0]), st.floats(min_value=0.0, max_value=1.0))
    return [
        Candidate(
            workspace_id=f"ws{i}",
            weight=draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(min_value=0.0, max_value=1000.0))),
            remaining_fraction=draw(fraction),
            next_capacity_in=draw(st.floats(min_value=0.0, max_value=86_400.0)),
            utilisation=draw(fraction),
            in_flight=draw(st.integers(min_value=0, max_value=50)),
            healthy=draw(st.booleans()),
            min_capacity_threshold=draw(fraction),
            full_reset_in=draw(st.floats(min_value=0.0, max_value=200_000.0)),
            limit=draw(st.integers(min_value=0, max_value=5000)),
            enabled=draw(st.booleans()),
            sender_allowed=draw(st.booleans()),
        )
        for i in range(size)
    ]

"""`least_used`: power-of-two-choices (Envoy's least-request) on utilisation, in-flight sends counted.

    load = utilisation + in_flight / limit        (limit > 0; otherwise load = utilisation)

Two distinct eligible members are sampled uniformly; the lower load wins, then the fewer in-flight sends, then a
coin flip. The unique most-loaded member can therefore never win when two or more are eligible, and processes
reading the same slightly stale snapshot spread their picks instead of all taking the argmin. Cost: O(n) to
compute the loads (reported as scores; lower is better), O(1) for the choice, two or three rng draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from random import Random

from ..types import Candidate, Selection

__all__ = ["NAME", "load", "pick"]

NAME = "least_used"


def load(c: Candidate) -> float:
    """Utilisation of the effective limit including sends under way that the snapshot does not show yet."""
    return c.utilisation + c.in_flight / c.limit if c.limit > 0 else c.utilisation


def pick(candidates: Sequence[Candidate], rng: Random, state: object = None) -> Selection | None:
    """The less loaded of two distinct random eligible members (the only one when there is one)."""
    n = len(candidates)
    if n == 0:
        return None
    loads = {c.workspace_id: load(c) for c in candidates}
    if n == 1:
        winner = candidates[0]
    else:
        i = rng.randrange(n)
        j = rng.randrange(n - 1)
        j += j >= i  # a distinct second index, uniform over the other n - 1
        a, b = candidates[i], candidates[j]
        key_a, key_b = (loads[a.workspace_id], a.in_flight), (loads[b.workspace_id], b.in_flight)
        a_wins = key_a < key_b or (key_a == key_b and rng.random() < 0.5)  # a tie is a coin flip
        winner = a if a_wins else b
    return Selection(workspace_id=winner.workspace_id, score=loads[winner.workspace_id], reason=NAME, scores=loads)

"""`least_used`: power-of-two-choices (Envoy's least-request) on utilisation, in-flight sends counted.

    load = utilisation + in_flight / limit        (limit > 0; otherwise load = utilisation)

Two distinct eligible members are sampled uniformly; the lower load wins, then the fewer in-flight sends, then a
coin flip. The unique most-loaded member can therefore never win when two or more are eligible, and processes
reading the same slightly stale snapshot spread their picks instead of all taking the argmin. Cost: O(n) to
compute the loads (reported as scores; lower is better) — once per preparation when the candidates' own
`in_flight` is used, or per pick for the members a live `in_flight` count names — and O(1) for the choice, two
or three rng draws.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from random import Random

from ..types import Candidate, Selection

__all__ = ["NAME", "Loads", "Prepared", "load", "load_with", "pick", "prepare"]

NAME = "least_used"


def load(c: Candidate) -> float:
    """Utilisation of the effective limit including sends under way that the snapshot does not show yet."""
    return load_with(c, c.in_flight)


def load_with(c: Candidate, in_flight: int) -> float:
    """`load` with `in_flight` sends under way instead of the candidate's own count."""
    return c.utilisation + in_flight / c.limit if c.limit > 0 else c.utilisation


class Prepared:
    """The eligible members and their loads, for any number of picks."""

    __slots__ = ("_candidates", "_loads", "_position")

    def __init__(self, candidates: Sequence[Candidate]) -> None:
        self._candidates = list(candidates)
        self._loads = {c.workspace_id: load(c) for c in candidates}
        self._position: dict[str, int] | None = None  # built for the first pick with live counts

    def pick(
        self,
        rng: Random,
        state: object = None,
        in_flight: Mapping[str, int] | None = None,
        excluded: dict[str, str] | None = None,
    ) -> Selection | None:
        """The less loaded of two distinct random members. `in_flight`, when given, is the sends under way per
        workspace now, in place of the counts the candidates were built with."""
        candidates = self._candidates
        n = len(candidates)
        if n == 0:
            return None
        loads: Mapping[str, float]
        if in_flight is None:
            loads = self._loads
        else:
            if self._position is None:
                self._position = {c.workspace_id: i for i, c in enumerate(candidates)}
            loads = Loads(candidates, self._position, dict(in_flight))  # the counts as they are now
        if n == 1:
            winner = candidates[0].workspace_id
        else:
            i = rng.randrange(n)
            j = rng.randrange(n - 1)
            j += j >= i  # a distinct second index, uniform over the other n - 1
            a, b = candidates[i].workspace_id, candidates[j].workspace_id
            if in_flight is None:
                key_a, key_b = (loads[a], candidates[i].in_flight), (loads[b], candidates[j].in_flight)
            else:
                key_a, key_b = (loads[a], in_flight.get(a, 0)), (loads[b], in_flight.get(b, 0))
            a_wins = key_a < key_b or (key_a == key_b and rng.random() < 0.5)  # a tie is a coin flip
            winner = a if a_wins else b
        return Selection(winner, loads[winner], NAME, loads, {} if excluded is None else excluded)


class Loads(Mapping[str, float]):
    """Every member's load with live in-flight counts, computed when read: a pick reads two, the attempt's
    evidence reads them all once (see `relay.balancer.Scores`)."""

    __slots__ = ("_candidates", "_in_flight", "_position")

    def __init__(self, candidates: Sequence[Candidate], position: Mapping[str, int], in_flight: Mapping[str, int]):
        self._candidates = candidates
        self._position = position
        self._in_flight = in_flight

    def __getitem__(self, workspace_id: str) -> float:
        return load_with(self._candidates[self._position[workspace_id]], self._in_flight.get(workspace_id, 0))

    def __iter__(self) -> Iterator[str]:
        return iter(self._position)

    def __len__(self) -> int:
        return len(self._position)

    def __repr__(self) -> str:
        return repr(dict(self))


def prepare(candidates: Sequence[Candidate]) -> Prepared:
    return Prepared(candidates)


def pick(candidates: Sequence[Candidate], rng: Random, state: object = None) -> Selection | None:
    """The less loaded of two distinct random eligible members (the only one when there is one)."""
    return Prepared(candidates).pick(rng)

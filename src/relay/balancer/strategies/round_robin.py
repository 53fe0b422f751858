"""`round_robin`: nginx's smooth weighted round robin over the eligible members, one `RoundRobin` per pool.

Each member has `current` (starts at 0) and `effective` (starts at its weight). On each pick, for every eligible
member: `current += effective`, `total += effective`, and `effective` climbs by 1 towards the weight if a failure
lowered it. The largest `current` wins (first in candidate order on a tie) and has `total` subtracted. With
integer weights w_i a full cycle is Σw picks with exactly w_i for each, interleaved (5, 1, 1 → a a b a c a a),
and from the zero state every prefix stays within one pick of its share. The `current` values always sum to 0.

Each process starts at a random offset: on the first pick the scheduler silently advances a number of picks
drawn from the injected rng over [0, min(Σw, MAX_OFFSET)), so processes do not all send to the same member first
(Envoy #32233). Cost: O(n) per pick. While the eligible members stay the same and no failure lowered an effective
weight (the steady state), a pick is a vector add, a max and an index in C over lists kept in member order;
otherwise one Python pass. The offset costs up to MAX_OFFSET silent picks once per pool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from operator import add
from random import Random

from ..types import Candidate, Scores, Selection

__all__ = ["MAX_OFFSET", "NAME", "Prepared", "RoundRobin", "pick", "prepare"]

NAME = "round_robin"
MAX_OFFSET = 1024


class RoundRobin:
    """Smooth weighted round-robin state of one pool in one process. Not thread-safe; no I/O.

    The values live in dictionaries keyed by workspace; the members of the latest picks are also held as lists
    in their order (`_ids`, `_cur`, `_eff`), which are the authoritative values for those members until another
    set of members is picked from (`_activate` writes them back first).
    """

    __slots__ = (
        "_cur",
        "_current",
        "_eff",
        "_effective",
        "_ids",
        "_index",
        "_offset",
        "_steady",
        "_total",
        "_weight",
        "_weights",
    )

    def __init__(self, offset: int | None = None) -> None:
        """`offset`: picks to skip before the first real one; None draws it from the rng on the first pick."""
        self._current: dict[str, float] = {}
        self._effective: dict[str, float] = {}
        self._weight: dict[str, float] = {}
        self._offset = offset
        self._ids: tuple[str, ...] = ()
        self._weights: tuple[float, ...] = ()
        self._cur: list[float] = []
        self._eff: list[float] = []
        self._index: dict[str, int] = {}
        self._total = 0.0
        self._steady = True  # every active effective weight equals its weight: a pick is a vector add

    @property
    def current(self) -> dict[str, float]:
        """A copy of every member's `current` value (their sum is 0)."""
        self._write_back()
        return dict(self._current)

    def failed(self, workspace_id: str, max_fails: int = 1) -> None:
        """nginx's passive penalty: lower the member's effective weight by weight / max_fails (not below 0)."""
        self._write_back()
        self._ids, self._weights, self._cur, self._eff = (), (), [], []  # reloaded from the dictionaries next pick
        if workspace_id in self._weight:
            lowered = self._effective[workspace_id] - self._weight[workspace_id] / max(max_fails, 1)
            self._effective[workspace_id] = max(lowered, 0.0)

    def pick(self, candidates: Sequence[Candidate], rng: Random) -> Selection | None:
        """The next member among the eligible `candidates`, or None when there is none with weight > 0."""
        return Prepared(candidates).pick(rng, self)

    def next(
        self, ids: tuple[str, ...], weights: tuple[float, ...], rng: Random, excluded: dict[str, str]
    ) -> Selection | None:
        """The next member of `ids` (with their `weights`, all > 0), after the start offset on the first pick."""
        if self._offset is None:
            self._offset = rng.randrange(max(1, min(round(sum(weights)), MAX_OFFSET)))
        self._activate(ids, weights)
        if self._offset:
            skip, self._offset = self._offset, 0
            for _ in range(skip):
                self._step(excluded)
        return self._step(excluded)

    def _activate(self, ids: tuple[str, ...], weights: tuple[float, ...]) -> None:
        if ids == self._ids and weights == self._weights:
            return
        self._write_back()
        current, effective, known = self._current, self._effective, self._weight
        for ws, weight in zip(ids, weights, strict=True):
            if known.get(ws) != weight:  # new member or changed weight: full effective weight again
                known[ws] = weight
                effective[ws] = weight
                current.setdefault(ws, 0.0)
        self._ids, self._weights = ids, weights
        self._index = {ws: i for i, ws in enumerate(ids)}
        self._cur = [current[ws] for ws in ids]
        self._eff = [effective[ws] for ws in ids]
        self._settle()

    def _write_back(self) -> None:
        current, effective = self._current, self._effective
        for ws, value, eff in zip(self._ids, self._cur, self._eff, strict=True):
            current[ws] = value
            effective[ws] = eff

    def _settle(self) -> None:
        """Whether the active effective weights are all back at their weights, and then their (constant) total,
        summed in member order as the pass below would."""
        self._steady = all(e == w for e, w in zip(self._eff, self._weights, strict=True))
        total = 0.0
        for e in self._eff:
            total += e
        self._total = total

    def _step(self, excluded: dict[str, str]) -> Selection | None:
        ids, cur = self._ids, self._cur
        if not ids:
            return None
        if self._steady:
            cur = list(map(add, cur, self._eff))
            total = self._total
        else:
            eff, weights = self._eff, self._weights
            total = 0.0
            for k, e in enumerate(eff):
                cur[k] += e
                total += e
                if e < weights[k]:
                    eff[k] = min(weights[k], e + 1.0)
            self._settle()
        best_value = max(cur)
        best = cur.index(best_value)  # the first of equals, in member order
        scores = Scores(ids, cur, self._index)  # the values before the winner's turn is taken off
        cur = self._cur = cur.copy()
        cur[best] = best_value - total
        return Selection(ids[best], best_value, NAME, scores, excluded)


class Prepared:
    """The members with weight > 0, in order, for any number of picks from the pool's `RoundRobin`."""

    __slots__ = ("_any", "_ids", "_weights")

    def __init__(self, candidates: Sequence[Candidate]) -> None:
        self._any = bool(candidates)
        members = [(c.workspace_id, c.weight) for c in candidates if c.weight > 0]
        self._ids = tuple(ws for ws, _ in members)
        self._weights = tuple(w for _, w in members)

    def pick(
        self,
        rng: Random,
        state: RoundRobin | None = None,
        in_flight: Mapping[str, int] | None = None,
        excluded: dict[str, str] | None = None,
    ) -> Selection | None:
        if state is None:
            raise ValueError("round_robin needs the pool's RoundRobin state (one per pool, kept between picks)")
        if not self._any:
            return None
        return state.next(self._ids, self._weights, rng, {} if excluded is None else excluded)


def prepare(candidates: Sequence[Candidate]) -> Prepared:
    return Prepared(candidates)


def pick(candidates: Sequence[Candidate], rng: Random, state: RoundRobin | None = None) -> Selection | None:
    """Module-level form for `STRATEGIES`: `state` is the pool's `RoundRobin`, which the caller keeps."""
    return prepare(candidates).pick(rng, state)

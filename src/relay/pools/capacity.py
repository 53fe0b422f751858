"""Remaining capacity of (workspace, sender) pairs for the balancer, read from the limits backend and cached briefly.

A snapshot may be up to `ttl` seconds old — `ROOMY_FACTOR` times that for a pair with at least `ROOMY` of its
limit left, whose exact count does not change a choice (it only weighs it) and which no sends in flight can empty
that fast. That is safe: the reservation made after the choice is atomic and authoritative, and a refused
reservation drops the pair from the cache (`forget`) before the next choice.

A read goes to the backend in slices of `SLICE` pairs, one `usage` call each, letting other tasks run in between:
reading a 50-member pool at once held the event loop for about 3 ms on Redis (packing 500 arguments, parsing 400
integers, in Python) and 1 ms on the memory backend, and every send in flight waited that long; a slice of 10
costs a fifth of it, for four more round trips per refresh.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from random import Random

from ..clock import Clock
from ..limits import Capacity, Limit, LimitBackend
from ..limits.policy import capacity_of

__all__ = ["ROOMY", "ROOMY_FACTOR", "SLICE", "CapacityView", "LimitPolicy"]

SLICE = 10  # (workspace, sender) pairs per backend call
ROOMY = 0.25  # a pair with at least this share of its limit left ...
ROOMY_FACTOR = 4  # ... is read again this many times less often

# (workspace id, sender, number of recipients) -> (the limits to check, the cost of this send)
LimitPolicy = Callable[[str, str, int], tuple[Sequence[Limit], int]]


class CapacityView:
    def __init__(
        self, backend: LimitBackend, policy: LimitPolicy, clock: Clock, *, ttl: float = 0.5, rng: Random | None = None
    ) -> None:
        self._backend = backend
        self._rng = rng or Random()
        self._policy = policy
        self._clock = clock
        self._ttl = ttl
        self._cache: dict[tuple[str, str], tuple[float, Capacity]] = {}  # pair -> (stale from, monotonic; capacity)

    @property
    def ttl(self) -> float:
        return self._ttl

    async def read(self, pairs: Sequence[tuple[str, str]], *, fresh: bool = False) -> dict[tuple[str, str], Capacity]:
        """Capacity of each (workspace id, sender) pair; the stale or missing ones (all with `fresh`) read from the
        backend, `SLICE` pairs per call."""
        return (await self.read_until(pairs, fresh=fresh))[0]

    async def read_until(
        self, pairs: Sequence[tuple[str, str]], *, fresh: bool = False, within: float = 0.0
    ) -> tuple[dict[tuple[str, str], Capacity], float]:
        """`read`, and the monotonic time at which the first of these entries goes stale. `within`: read again the
        entries that go stale within that many seconds too (a refresh ahead of time)."""
        now = self._clock.monotonic()
        found: dict[tuple[str, str], Capacity] = {}
        missing: list[tuple[tuple[str, str], Sequence[Limit]]] = []
        soonest = float("inf")
        for pair in pairs:
            cached = self._cache.get(pair)
            if not fresh and cached is not None and cached[0] - now > within:
                found[pair] = cached[1]
                if cached[0] < soonest:
                    soonest = cached[0]
            else:
                missing.append((pair, self._policy(pair[0], pair[1], 1)[0]))
        for first in range(0, len(missing), SLICE):
            if first:
                await asyncio.sleep(0)  # the memory backend never yields by itself
            part = missing[first : first + SLICE]
            usages = await self._backend.usage([limit for _, limits in part for limit in limits])
            start = 0
            for pair, limits in part:
                capacity = capacity_of(limits, usages[start : start + len(limits)])
                start += len(limits)
                found[pair] = capacity
                stale = now + self._lifetime(capacity)
                self._cache[pair] = (stale, capacity)
                if stale < soonest:
                    soonest = stale
        if missing and len(self._cache) > 100_000:  # many distinct senders: drop the stale ones
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        return found, now if soonest == float("inf") else soonest

    def _lifetime(self, capacity: Capacity) -> float:
        """How long an entry stands. A roomy pair's is spread over the last quarter of its span, so that a pool's
        members, all read at once when it was first decided on, are read again a few at a time afterwards."""
        roomy = capacity.remaining_fraction >= ROOMY and capacity.next_capacity_in <= 0
        if not roomy:
            return self._ttl
        return self._ttl * ROOMY_FACTOR * (0.75 + 0.25 * self._rng.random())

    def forget(self, workspace_id: str, sender: str) -> None:
        self._cache.pop((workspace_id, sender), None)

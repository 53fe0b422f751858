"""Remaining capacity of (workspace, sender) pairs for the balancer, read in one backend call and cached briefly.

A snapshot may be up to `ttl` seconds old. That is safe: the reservation made after the choice is atomic and
authoritative, and a refused reservation drops the pair from the cache (`forget`) before the next choice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..clock import Clock
from ..limits import Capacity, Limit, LimitBackend
from ..limits.policy import capacity_of

__all__ = ["CapacityView", "LimitPolicy"]

# (workspace id, sender, number of recipients) -> (the limits to check, the cost of this send)
LimitPolicy = Callable[[str, str, int], tuple[Sequence[Limit], int]]


class CapacityView:
    def __init__(self, backend: LimitBackend, policy: LimitPolicy, clock: Clock, *, ttl: float = 0.5) -> None:
        self._backend = backend
        self._policy = policy
        self._clock = clock
        self._ttl = ttl
        self._cache: dict[tuple[str, str], tuple[float, Capacity]] = {}

    async def read(self, pairs: Sequence[tuple[str, str]], *, fresh: bool = False) -> dict[tuple[str, str], Capacity]:
        """Capacity of each (workspace id, sender) pair; the stale or missing ones (all with `fresh`) in one
        `usage` call."""
        now = self._clock.monotonic()
        found: dict[tuple[str, str], Capacity] = {}
        missing: list[tuple[tuple[str, str], Sequence[Limit]]] = []
        for pair in pairs:
            cached = self._cache.get(pair)
            if not fresh and cached is not None and now - cached[0] < self._ttl:
                found[pair] = cached[1]
            else:
                missing.append((pair, self._policy(pair[0], pair[1], 1)[0]))
        if missing:
            usages = await self._backend.usage([limit for _, limits in missing for limit in limits])
            start = 0
            for pair, limits in missing:
                capacity = capacity_of(limits, usages[start : start + len(limits)])
                start += len(limits)
                found[pair] = capacity
                self._cache[pair] = (now, capacity)
            if len(self._cache) > 100_000:  # many distinct senders: drop the stale ones
                self._cache = {k: v for k, v in self._cache.items() if now - v[0] < self._ttl}
        return found

    def forget(self, workspace_id: str, sender: str) -> None:
        self._cache.pop((workspace_id, sender), None)

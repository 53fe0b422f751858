"""A per-process memory of recently seen request tokens: the replay guard of the inbound endpoints."""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["RecentTokens"]


class RecentTokens:
    """Tokens seen in the last `window` seconds, at most `capacity` of them (the oldest are forgotten first).

    In memory and per process, on purpose (no Redis round trip on the way in): a replay sent to another Relay
    process behind the same load balancer is not caught, nor one that arrives after a restart or once
    `capacity` newer tokens pushed it out. No I/O.
    """

    def __init__(self, window: float, capacity: int = 100_000) -> None:
        self._window = window
        self._capacity = capacity
        self._seen: OrderedDict[str, float] = OrderedDict()

    def claim(self, token: str, now: float) -> bool:
        """Remember `token`; False if it was seen already (a replay)."""
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if at > now - self._window and len(self._seen) < self._capacity:
                break
            del self._seen[oldest]
        if token in self._seen:
            return False
        self._seen[token] = now
        return True

    def release(self, token: str) -> None:
        """Forget `token` (its request failed before anything was recorded: the provider's retry must pass)."""
        self._seen.pop(token, None)

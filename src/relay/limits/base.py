"""The limits seam: one interface, a memory backend and a Redis backend, one test suite for both."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .types import Limit, Reservation, Usage

__all__ = ["LimitBackend"]


class LimitBackend(Protocol):
    """Atomic, all-or-nothing reservations against several limits at once.

    `reserve` counts immediately: a reserved send is already in the counters, so a crash after a send can
    never free capacity. `release` gives a reservation back, only when the provider certainly did not
    accept the message (refused connection, a 4xx before acceptance) — never after a timeout.
    """

    async def reserve(self, limits: Sequence[Limit], cost: int = 1) -> Reservation: ...

    async def release(self, token: str) -> None: ...

    async def usage(self, limits: Sequence[Limit]) -> list[Usage]: ...

    async def aclose(self) -> None: ...

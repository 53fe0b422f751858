"""The provider seam: one small interface that every provider kind implements."""

from __future__ import annotations

from typing import Protocol

from .types import Health, OutboundMessage, Outcome

__all__ = ["Provider"]


class Provider(Protocol):
    """Moves one message to one workspace. Never raises for a provider's answer: it returns an Outcome."""

    kind: str
    concurrency: int  # sends this provider can have in flight at once; the worker queues the rest

    async def send(self, message: OutboundMessage) -> Outcome: ...

    async def check(self) -> Health: ...

    async def aclose(self) -> None: ...

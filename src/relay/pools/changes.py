"""Configuration change notices between Relay processes over Redis pub/sub.

Polling the database every second already carries every change to every process; a notice only makes the
others look at once. So a lost notice (Redis away, a subscriber reconnecting) costs at most that second, and
without Redis this is a no-op.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from redis.asyncio import Redis

from ..redis_client import redis_client

__all__ = ["CHANNEL", "ChangeNotices"]

CHANNEL = "relay:config-changed"

log = structlog.get_logger(__name__)


class ChangeNotices:
    def __init__(self, redis_url: str | None, *, sender: str) -> None:
        self._sender = sender
        self._redis: Redis | None = None
        if redis_url is not None:
            self._redis, _ = redis_client(redis_url, timeout=2.0, max_connections=4)

    async def publish(self, what: str) -> None:
        """Tell the other processes that `what` (e.g. "pool:p1") changed; never raises."""
        if self._redis is None:
            return
        try:
            await self._redis.publish(CHANNEL, f"{self._sender} {what}")
        except Exception as exc:  # the poll carries the change within a second anyway
            log.debug("config.notice_not_sent", error=type(exc).__name__)

    async def listen(self, on_notice: Callable[[], None], *, retry_seconds: float = 1.0) -> None:
        """Call `on_notice()` for each notice from another process, until cancelled; reconnects after errors."""
        if self._redis is None:
            return
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    async for message in pubsub.listen():
                        data = message.get("data")
                        text = data.decode() if isinstance(data, bytes) else str(data)
                        if not text.startswith(f"{self._sender} "):
                            on_notice()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("config.notices_reconnecting", error=type(exc).__name__)
                await asyncio.sleep(retry_seconds)

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

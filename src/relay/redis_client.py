"""One way to open Redis for every part that shares state through it (rate limits, workspace health)."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis

__all__ = ["redis_client"]


def redis_client(redis: str | Redis, *, timeout: float, max_connections: int) -> tuple[Redis, bool]:
    """A client for `redis` (a URL, or a client the caller keeps) and whether the caller now owns it.

    From a URL: a blocking pool, so a burst waits (up to `timeout`) for a connection instead of failing with "too
    many connections"; `timeout` also bounds connecting and every reply.
    """
    if not isinstance(redis, str):
        return redis, False
    pool = BlockingConnectionPool.from_url(
        redis,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )
    return Redis.from_pool(pool), True

"""Fixtures for the limits suite: each backend by name, and a Redis key prefix of its own per test.

Redis comes from RELAY_TEST_REDIS_URL (default redis://127.0.0.1:6379/0). When it is unreachable the Redis
half of the suite skips, or fails when RELAY_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from redis.asyncio import Redis

from relay.clock import Clock
from relay.limits import LimitBackend, MemoryLimits, RedisLimits
from tests.support.services import REDIS_URL, redis_keys, require_redis

Factory = Callable[..., LimitBackend]


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix no other test uses (with its own hash tag); every key under it is deleted afterwards."""
    prefix = f"relay-test:{{{uuid.uuid4().hex}}}:"
    with redis_keys(f"{prefix}*"):
        yield prefix


@pytest.fixture
async def redis_client() -> AsyncIterator[Redis]:
    client = Redis.from_url(require_redis())
    yield client
    await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def make_backend(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """Builds backends of one kind: `make_backend(clock=None)`. Memory takes every time from `clock`;
    Redis takes rolling and GCRA time from the server and only the calendar day from `clock`."""
    created: list[LimitBackend] = []
    prefix = request.getfixturevalue("redis_prefix") if request.param == "redis" else ""

    def make(clock: Clock | None = None) -> LimitBackend:
        backend: LimitBackend
        if request.param == "memory":
            backend = MemoryLimits(clock)
        else:
            backend = RedisLimits(REDIS_URL, key_prefix=prefix, clock=clock)
        created.append(backend)
        return backend

    yield make
    for backend in created:
        await backend.aclose()

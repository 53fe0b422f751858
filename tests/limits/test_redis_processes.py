"""Exactness under real concurrency: two OS processes x 200 asyncio tasks, 5,000 attempts, one Redis.

Each process runs the child script below with its own RedisLimits (its own connection pool), opens its
connections, and starts at the same agreed instant; the test checks that their runs overlapped. Exactly
`limit` reservations may succeed in total, and the counters must read exactly what succeeded — including
the workspace counter when the per-user limit is the one refusing, which proves a refusal increments nothing
even under contention.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from relay.limits import Limit, RedisLimits
from relay.limits.windows import calendar_day, epoch_micros
from tests.limits.conftest import REDIS_URL

PROCESSES = 2
TASKS = 200
ATTEMPTS = 5_000

CHILD = """
import asyncio, json, sys, time
from relay.limits import Limit, RedisLimits

async def main(url, prefix, limits, attempts, tasks, start_at):
    backend = RedisLimits(url, key_prefix=prefix, timeout=30.0)
    limits = [Limit(**fields) for fields in limits]
    await asyncio.gather(*(backend.usage(limits) for _ in range(tasks)))  # open the pool's connections first
    numbers = iter(range(attempts))  # shared by every task of this process
    results = {"ok": 0, "refused": 0}

    async def task():
        for _ in numbers:
            answer = await backend.reserve(limits)
            results["ok" if answer.ok else "refused"] += 1

    await asyncio.sleep(max(0.0, start_at - time.time()))
    results["began"] = time.time()
    await asyncio.gather(*(task() for _ in range(tasks)))
    results["ended"] = time.time()
    await backend.aclose()
    print(json.dumps(results))

args = json.loads(sys.argv[1])
asyncio.run(main(**args))
"""

WORKSPACE = Limit("ws:gmail-1", "rolling", 1_000)
USER = Limit("user:gmail-1:brian@invite.com", "rolling", 100)
WORKSPACE_DAY = Limit("ws:gmail-1", "calendar", 1_000, timezone="America/New_York")
USER_DAY = Limit("user:gmail-1:brian@invite.com", "calendar", 100, timezone="America/New_York")


async def hammer(prefix: str, limits: list[Limit]) -> list[dict[str, float]]:
    arguments = {
        "url": REDIS_URL,
        "prefix": prefix,
        "limits": [asdict(limit) for limit in limits],
        "attempts": ATTEMPTS // PROCESSES,
        "tasks": TASKS,
        "start_at": time.time() + 2.0,  # both processes are up and connected by then
    }
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, json.dumps(arguments), stdout=asyncio.subprocess.PIPE
        )
        for _ in range(PROCESSES)
    ]
    outputs = await asyncio.wait_for(asyncio.gather(*(child.communicate() for child in children)), timeout=120)
    assert [child.returncode for child in children] == [0] * PROCESSES
    return [json.loads(stdout) for stdout, _ in outputs]


async def raw_count(client: Redis, backend: RedisLimits, limit: Limit) -> int:
    """The counter as stored, read without the backend's arithmetic."""
    if limit.kind == "rolling":
        return sum(int(v) for v in (await client.hgetall(backend.counter_key(limit))).values())
    day = calendar_day(epoch_micros(datetime.now(UTC)), limit.timezone).day
    return int(await client.get(backend.counter_key(limit, day)) or 0)


@pytest.mark.parametrize(
    ("limits", "admitted"),
    [
        pytest.param([WORKSPACE], 1_000, id="workspace-1000"),
        pytest.param([WORKSPACE, USER], 100, id="per-user-100"),
        pytest.param([WORKSPACE_DAY, USER_DAY], 100, id="calendar-per-user-100"),
    ],
)
async def test_two_processes_admit_exactly_the_limit(
    redis_prefix: str, redis_client: Redis, limits: list[Limit], admitted: int
) -> None:
    if any(limit.kind == "calendar" for limit in limits):
        now = epoch_micros(datetime.now(UTC))
        if calendar_day(now, "America/New_York").reset_us - now < 60_000_000:
            await asyncio.sleep(61)  # never straddle the local midnight this test counts within

    results = await hammer(redis_prefix, limits)

    assert sum(r["ok"] + r["refused"] for r in results) == ATTEMPTS
    assert sum(r["ok"] for r in results) == admitted
    assert max(r["began"] for r in results) < min(r["ended"] for r in results), "the processes did not overlap"
    backend = RedisLimits(redis_client, key_prefix=redis_prefix)
    for limit, usage in zip(limits, await backend.usage(limits), strict=True):
        assert (usage.used, usage.remaining) == (admitted, limit.limit - admitted)
        assert await raw_count(redis_client, backend, limit) == admitted

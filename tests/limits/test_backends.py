"""One suite, both backends: every scenario runs against MemoryLimits and RedisLimits (`make_backend`).

The Redis half uses a key prefix of its own per test and deletes its keys afterwards; it skips when Redis is
unreachable, or fails when RELAY_REQUIRE_SERVICES=1. Window arithmetic over long spans of time is proven in
test_windows.py with a manual clock; here the Redis server's own clock runs, so timings are checked with
tolerances and deadlines.
"""

from __future__ import annotations

import asyncio
import math
import socket
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from relay.clock import ManualClock, SystemClock
from relay.errors import RelayError
from relay.limits import (
    BACKENDS,
    Limit,
    LimitBackend,
    LimitsUnavailableError,
    MemoryLimits,
    RedisLimits,
    Reservation,
    Usage,
)
from relay.limits.tokens import Hold, decode, encode
from tests.limits.conftest import REDIS_URL, Factory

DAY = 86_400.0
WS = Limit("ws:gmail-1", "rolling", 5)
USER = Limit("user:gmail-1:brian@invite.com", "rolling", 2)


async def used(backend: LimitBackend, *limits: Limit) -> list[int]:
    return [u.used for u in await backend.usage(limits)]


async def test_a_refusal_by_any_limit_counts_against_none(make_backend: Factory) -> None:
    backend = make_backend()
    first = await backend.reserve([WS, USER])
    assert (first.ok, first.remaining) == (True, {WS.key: 4, USER.key: 1})
    assert (await backend.reserve([WS, USER])).remaining == {WS.key: 3, USER.key: 0}
    refused = await backend.reserve([WS, USER])  # the workspace has room, the sender does not
    assert (refused.ok, refused.token, refused.denied_by, refused.remaining) == (False, None, USER.key, {})
    assert DAY < refused.retry_after <= DAY + WS.bucket_seconds
    assert await used(backend, WS, USER) == [2, 2]  # the workspace was checked, not counted
    other = Limit("user:gmail-1:ana@invite.com", "rolling", 2)
    assert (await backend.reserve([WS, other], cost=2)).remaining == {WS.key: 1, other.key: 0}
    assert (await backend.reserve([USER, WS])).denied_by == USER.key
    assert (await backend.reserve([other, USER, WS])).denied_by == other.key  # the first that refuses
    assert await used(backend, WS, USER, other) == [4, 2, 2]


async def test_a_cost_that_only_one_limit_can_take_takes_nothing(make_backend: Factory) -> None:
    backend = make_backend()
    rate = Limit("rate:gmail-1:s", "gcra", 10, period_seconds=1.0, burst=4)
    day = Limit("day:gmail-1", "calendar", 3, timezone="Europe/Berlin")
    refused = await backend.reserve([WS, rate, day], cost=4)
    assert (refused.ok, refused.denied_by, refused.retry_after) == (False, day.key, math.inf)
    assert await used(backend, WS, rate, day) == [0, 0, 0]
    assert (await backend.reserve([WS, rate, day], cost=3)).remaining == {WS.key: 2, rate.key: 1, day.key: 0}


async def test_release_gives_back_exactly_what_was_counted_once(make_backend: Factory) -> None:
    backend = make_backend()
    rate = Limit("rate:gmail-1:m", "gcra", 60, period_seconds=60.0, burst=10)
    day = Limit("day:gmail-1", "calendar", 10, timezone="America/New_York")
    limits = [WS, rate, day]
    kept = await backend.reserve(limits, cost=2)
    given_back = await backend.reserve(limits, cost=3)
    assert kept.ok and given_back.ok and given_back.token is not None
    assert await used(backend, *limits) == [5, 5, 5]
    await backend.release(given_back.token)
    assert await used(backend, *limits) == [2, 2, 2]
    await backend.release(given_back.token)  # idempotent: the second release changes nothing
    assert await used(backend, *limits) == [2, 2, 2]
    again = await backend.reserve(limits, cost=3)
    assert again.remaining == {WS.key: 0, rate.key: 5, day.key: 5}


async def test_release_never_takes_a_counter_below_zero(make_backend: Factory) -> None:
    backend = make_backend()
    day = Limit("day:gmail-1", "calendar", 10)
    answer = await backend.reserve([WS, day])
    assert answer.token is not None
    ticket = decode(answer.token, answer.token[0])
    inflated = encode(answer.token[0], [Hold(h.kind, h.key, 100, h.where, h.until_us) for h in ticket.holds])
    await backend.release(inflated)
    assert await used(backend, WS, day) == [0, 0]
    assert (await backend.reserve([WS, day])).remaining == {WS.key: 4, day.key: 9}


async def test_tokens_are_checked(make_backend: Factory) -> None:
    backend = make_backend()
    for token in ["", "garbage", "m1.!!!", "r1.e30", "x1." + "A" * 10]:
        with pytest.raises(ValueError, match="token"):
            await backend.release(token)
    foreign = await MemoryLimits().reserve([WS]) if isinstance(backend, RedisLimits) else None
    if foreign is not None and foreign.token is not None:
        with pytest.raises(ValueError, match="not a r reservation token"):
            await backend.release(foreign.token)


async def test_invalid_requests_count_nothing(make_backend: Factory) -> None:
    backend = make_backend()
    with pytest.raises(ValueError, match="twice"):
        await backend.reserve([WS, WS])
    with pytest.raises(ValueError, match="cost"):
        await backend.reserve([WS], cost=0)
    with pytest.raises(ValueError, match="time zone"):
        await backend.reserve([WS, Limit("d", "calendar", 1, timezone="Mars/Olympus")])
    with pytest.raises(ValueError, match="buckets"):
        await backend.reserve([WS, Limit("r", "rolling", 1, bucket_seconds=1)])
    with pytest.raises(ValueError, match="gcra"):
        await backend.reserve([WS, Limit("g", "gcra", 0)])
    assert await used(backend, WS) == [0]


async def test_a_zero_limit_or_oversized_cost_never_fits(make_backend: Factory) -> None:
    backend = make_backend()
    for limit, cost in [
        (Limit("off", "rolling", 0), 1),
        (Limit("off", "calendar", 0), 1),
        (Limit("small", "rolling", 2), 3),
        (Limit("rate", "gcra", 100, burst=2), 3),
    ]:
        refused = await backend.reserve([limit], cost)
        assert (refused.ok, refused.denied_by, refused.retry_after) == (False, limit.key, math.inf)
    assert (await backend.usage([Limit("off", "rolling", 0)]))[0].next_capacity_in == math.inf


async def test_usage_describes_each_counter(make_backend: Factory) -> None:
    backend = make_backend()
    rate = Limit("rate", "gcra", 10, period_seconds=1.0, burst=4)
    day = Limit("day", "calendar", 3, timezone="UTC")
    fresh = await backend.usage([WS, rate, day])
    assert fresh == [
        Usage(WS.key, 5, 0, 5, 0.0, 0.0),
        Usage(rate.key, 4, 0, 4, 0.0, 0.0),
        Usage(day.key, 3, 0, 3, 0.0, 0.0),
    ]
    await backend.reserve([WS, rate, day], cost=3)
    ws, pace, today = await backend.usage([WS, rate, day])
    assert (ws.used, ws.remaining, ws.next_capacity_in) == (3, 2, 0.0)
    assert DAY < ws.full_reset_in <= DAY + WS.bucket_seconds
    assert (pace.limit, pace.used, pace.remaining, pace.next_capacity_in) == (4, 3, 1, 0.0)
    assert 0.2 < pace.full_reset_in <= 0.3  # three emission intervals of 100 ms drain
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp() + DAY
    assert (today.used, today.remaining) == (3, 0)
    assert today.next_capacity_in == today.full_reset_in == pytest.approx(midnight - time.time(), abs=2)


async def test_gcra_paces_to_the_emission_interval(make_backend: Factory) -> None:
    backend = make_backend()
    rate = Limit("rate", "gcra", 20, period_seconds=1.0, burst=3)  # T = 50 ms
    answers = [await backend.reserve([rate]) for _ in range(4)]
    assert [a.ok for a in answers] == [True, True, True, False]
    assert 0 < answers[3].retry_after <= 0.05
    await asyncio.sleep(answers[3].retry_after)
    assert (await backend.reserve([rate])).ok


async def test_calendar_limit_resets_at_local_midnight(make_backend: Factory) -> None:
    # 23:59:59.5 on 2026-03-08 in New York, the day the clocks went forward (a 23-hour day)
    clock = ManualClock(datetime(2026, 3, 9, 3, 59, 59, 500_000, tzinfo=UTC))
    backend = make_backend(clock)
    day = Limit("day", "calendar", 2, timezone="America/New_York")
    assert (await backend.reserve([day], cost=2)).ok
    refused = await backend.reserve([day])
    assert (refused.ok, refused.retry_after) == (False, 0.5)
    assert (await backend.usage([day]))[0] == Usage(day.key, 2, 2, 0, 0.5, 0.5)
    clock.advance(0.5)
    assert (await backend.reserve([day], cost=2)).remaining == {day.key: 0}


async def test_rolling_window_returns_capacity_as_buckets_leave(make_backend: Factory) -> None:
    backend = make_backend(SystemClock())
    short = Limit("short", "rolling", 3, period_seconds=2.0, bucket_seconds=1.0)
    assert [(await backend.reserve([short])).ok for _ in range(4)] == [True, True, True, False]
    refused = await backend.reserve([short])
    assert 2.0 < refused.retry_after <= 3.0
    started, deadline = time.monotonic(), time.monotonic() + 5.0
    while not (answer := await backend.reserve([short])).ok:
        assert time.monotonic() < deadline, "capacity did not return"
        await asyncio.sleep(min(answer.retry_after, 0.05))
    assert time.monotonic() - started >= refused.retry_after - 0.05
    assert answer.remaining == {short.key: 2}
    if isinstance(backend, RedisLimits):  # the script pruned the old bucket and keeps the key no longer than needed
        client = Redis.from_url(REDIS_URL)
        key = backend.counter_key(short)
        assert await client.hlen(key) == 1
        assert 0 < await client.pttl(key) <= 3000
        await client.aclose()


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_backends_are_named_as_in_configuration(name: str) -> None:
    assert BACKENDS[name].__name__.lower().startswith(name)


# --- memory and Redis agree ----------------------------------------------------------------------------------------


async def test_memory_and_redis_give_the_same_answers(redis_prefix: str, redis_client: Redis) -> None:
    server_time = await redis_client.time()
    if server_time[0] % 300 > 295:  # keep both runs inside one 5-minute bucket
        await asyncio.sleep(6)
    memory, redis = MemoryLimits(), RedisLimits(REDIS_URL, key_prefix=redis_prefix)
    limits = [
        Limit("ws", "rolling", 6),
        Limit("user", "calendar", 5, timezone="Europe/Berlin"),
        Limit("rate", "gcra", 100, period_seconds=3600.0, burst=4),  # T = 36 s: nothing drains during the test
    ]
    tokens: list[tuple[str, str]] = []
    for cost in [1, 2, 1, 3, 1, 1, 2, 1]:
        a, b = await memory.reserve(limits, cost), await redis.reserve(limits, cost)
        assert_same(a, b)
        if a.ok and b.ok and cost == 2:
            assert a.token is not None and b.token is not None
            tokens.append((a.token, b.token))
        for x, y in zip(await memory.usage(limits), await redis.usage(limits), strict=True):
            assert (x.key, x.limit, x.used, x.remaining) == (y.key, y.limit, y.used, y.remaining)
            assert x.next_capacity_in == pytest.approx(y.next_capacity_in, abs=1.0)
            assert x.full_reset_in == pytest.approx(y.full_reset_in, abs=1.0)
        if len(tokens) == 1 and cost == 3:
            await memory.release(tokens[0][0])
            await redis.release(tokens[0][1])
    await redis.aclose()


def assert_same(a: Reservation, b: Reservation) -> None:
    assert (a.ok, a.denied_by, a.remaining) == (b.ok, b.denied_by, b.remaining)
    assert a.retry_after == pytest.approx(b.retry_after, abs=1.0)


# --- Redis only ------------------------------------------------------------------------------------------------------


async def test_one_reservation_is_one_script_call(redis_prefix: str) -> None:
    class Counting(Redis):
        commands: list[str]

        async def execute_command(self, *args: Any, **options: Any) -> Any:
            self.commands.append(str(args[0]))
            return await super().execute_command(*args, **options)

    client = Counting.from_url(REDIS_URL)
    client.commands = []
    backend = RedisLimits(client, key_prefix=redis_prefix)
    limits = [WS, USER, Limit("rate", "gcra", 10, burst=5), Limit("day", "calendar", 9, timezone="Asia/Kolkata")]
    await backend.reserve(limits)  # the first call may load the script
    client.commands.clear()
    answer = await backend.reserve(limits)
    assert client.commands == ["EVALSHA"]
    assert answer.token is not None
    await backend.release(answer.token)
    await backend.usage(limits)
    assert client.commands == ["EVALSHA"] * 3
    await backend.aclose()  # a client passed in stays open for its owner
    assert await client.ping()
    await client.aclose()


async def test_every_key_shares_the_prefix_hash_slot(redis_prefix: str, redis_client: Redis) -> None:
    backend = RedisLimits(REDIS_URL, key_prefix=redis_prefix)
    limits = [WS, USER, Limit("rate", "gcra", 10, burst=5), Limit("day", "calendar", 9, timezone="Asia/Tokyo")]
    answer = await backend.reserve(limits)
    assert answer.token is not None
    await backend.release(answer.token)
    await backend.reserve(limits)
    keys = [key async for key in redis_client.scan_iter(match=f"{redis_prefix}*")]
    assert len(keys) == 5  # 4 counters and the release marker
    assert {key_slot(key) for key in keys} == {key_slot(redis_prefix.encode())}
    await backend.aclose()


async def test_redis_time_not_the_callers_clock_drives_rolling_and_gcra(redis_prefix: str) -> None:
    skewed = ManualClock(datetime(2001, 1, 1, tzinfo=UTC))  # a caller 25 years behind
    backend = RedisLimits(REDIS_URL, key_prefix=redis_prefix, clock=skewed)
    rate = Limit("rate", "gcra", 10, period_seconds=1.0, burst=1)
    await backend.reserve([WS, rate])
    ws, pace = await backend.usage([WS, rate])
    assert DAY < ws.full_reset_in <= DAY + WS.bucket_seconds
    assert 0 < pace.full_reset_in <= 0.1
    await backend.aclose()


def test_key_prefix_must_carry_a_hash_tag() -> None:
    for prefix in ["relay:limits:", "relay:{}:", "relay:}{"]:
        with pytest.raises(ValueError, match="hash tag"):
            RedisLimits(REDIS_URL, key_prefix=prefix)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_redis_raises_an_error_to_fail_closed_on() -> None:
    backend = RedisLimits(f"redis://127.0.0.1:{closed_port()}/0", key_prefix="t:{x}:", timeout=0.5)
    with pytest.raises(LimitsUnavailableError) as caught:
        await backend.reserve([WS])
    assert isinstance(caught.value, RelayError)
    assert "ConnectionError" in caught.value.reason
    with pytest.raises(LimitsUnavailableError):
        await backend.usage([WS])
    token = (await MemoryLimits().reserve([WS])).token
    assert token is not None
    with pytest.raises(LimitsUnavailableError):
        await backend.release("r" + token[1:])
    await backend.aclose()


async def test_a_redis_that_does_not_answer_times_out_into_the_same_error() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    backend = RedisLimits(f"redis://127.0.0.1:{port}/0", key_prefix="t:{x}:", timeout=0.3)
    started = time.monotonic()
    with pytest.raises(LimitsUnavailableError, match="TimeoutError"):
        await backend.reserve([WS])
    assert time.monotonic() - started < 3
    await backend.aclose()
    server.close()

"""One suite, both stores: `make_store()` gives stores that share one state — the same MemoryBreakerStore, or a
new RedisBreakerStore (its own client and pool, as another process would have) on one key prefix per test.

Redis comes from RELAY_TEST_REDIS_URL (default redis://127.0.0.1:6379/0). When it is unreachable the Redis half
skips, or fails when RELAY_REQUIRE_SERVICES=1. Time is a ManualClock: cache expiry is tested by advancing it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import replace
from typing import TypeVar

import pytest
import redis
from redis.asyncio import Redis

from relay.clock import ManualClock
from relay.health import (
    BACKENDS,
    DEFAULT_KEY_PREFIX,
    Breakers,
    BreakerSettings,
    BreakerState,
    BreakerStore,
    BreakerStoreUnavailableError,
    MemoryBreakerStore,
    OnChange,
    RedisBreakerStore,
)
from tests.support.net import free_port
from tests.support.services import REDIS_URL, redis_keys, require_redis

S = BreakerSettings()
FRESH = BreakerState()
WS = "gmail-1"
T = TypeVar("T")
MakeStore = Callable[[], BreakerStore]
Change = tuple[str, str, str]


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = f"relay-test:health:{uuid.uuid4().hex}:"
    with redis_keys(f"{prefix}*"):
        yield prefix


@pytest.fixture(params=["memory", "redis"])
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[MakeStore]:
    created: list[BreakerStore] = []
    shared = MemoryBreakerStore()
    prefix = request.getfixturevalue("redis_prefix") if request.param == "redis" else ""

    def make() -> BreakerStore:
        store: BreakerStore = shared if request.param == "memory" else RedisBreakerStore(REDIS_URL, prefix=prefix)
        created.append(store)
        return store

    yield make
    for store in created:
        await store.aclose()


class CountingStore:
    """Wraps a store and counts the calls that reach it."""

    def __init__(self, inner: BreakerStore) -> None:
        self.inner = inner
        self.calls: list[str] = []

    async def update(self, workspace_id: str, fn: Callable[[BreakerState], tuple[T, BreakerState]]) -> T:
        self.calls.append("update")
        return await self.inner.update(workspace_id, fn)

    async def get_many(self, workspace_ids: Iterable[str]) -> dict[str, BreakerState]:
        self.calls.append("get_many")
        return await self.inner.get_many(workspace_ids)

    async def aclose(self) -> None:
        await self.inner.aclose()


def recorder(seen: list[Change]) -> OnChange:
    def on_change(workspace_id: str, old: BreakerState, new: BreakerState) -> None:
        seen.append((workspace_id, old.state, new.state))

    return on_change


def pair(make_store: MakeStore, clock: ManualClock) -> tuple[Breakers, Breakers, list[Change], list[Change]]:
    """Two processes' `Breakers` on one shared state, each recording the changes it makes."""
    a_changes: list[Change] = []
    b_changes: list[Change] = []
    a = Breakers(make_store(), S, clock, "a", on_change=recorder(a_changes))
    b = Breakers(make_store(), S, clock, "b", on_change=recorder(b_changes))
    return a, b, a_changes, b_changes


async def open_breaker(breakers: Breakers) -> None:
    for _ in range(S.consecutive_failures):
        await breakers.failure(WS, "connection refused")


# --- the stores ------------------------------------------------------------------------------------------------


def test_backends_are_keyed_by_name() -> None:
    assert {"memory": MemoryBreakerStore, "redis": RedisBreakerStore} == BACKENDS
    assert DEFAULT_KEY_PREFIX == "relay:health:"


async def test_unknown_workspaces_read_as_fresh(make_store: MakeStore) -> None:
    store = make_store()
    assert await store.get_many(["a", "b", "a"]) == {"a": FRESH, "b": FRESH}
    assert await store.get_many([]) == {}


async def test_update_returns_the_result_and_shares_the_state(make_store: MakeStore) -> None:
    one, other = make_store(), make_store()
    state = BreakerState(state="open", ejections=2, opened_at=10.5, open_until=70.5, last_error="503", last_change=10.5)
    assert await one.update(WS, lambda old: (old, state)) == FRESH
    assert await other.get_many([WS, "b"]) == {WS: state, "b": FRESH}
    assert await other.update(WS, lambda old: (old.ejections, old)) == 2


async def test_concurrent_updates_from_many_tasks_are_not_lost(make_store: MakeStore) -> None:
    stores = [make_store(), make_store()]
    calls = 0

    def bump(old: BreakerState) -> tuple[None, BreakerState]:
        nonlocal calls
        calls += 1
        return None, replace(old, consecutive=old.consecutive + 1)

    await asyncio.gather(*(stores[i % 2].update(WS, bump) for i in range(60)))
    assert (await stores[0].get_many([WS]))[WS].consecutive == 60
    assert calls >= 60  # on Redis, usually more: each lost WATCH race runs `bump` again


async def test_a_write_between_read_and_commit_makes_the_update_retry(redis_prefix: str) -> None:
    store = RedisBreakerStore(REDIS_URL, prefix=redis_prefix)
    seen: list[int] = []

    def racing(old: BreakerState) -> tuple[int, BreakerState]:
        seen.append(old.consecutive)
        if len(seen) == 1:  # another process writes after our WATCH and GET
            with redis.Redis.from_url(REDIS_URL) as other:
                other.set(store.key(WS), replace(old, consecutive=7).to_json())
        return old.consecutive, replace(old, consecutive=old.consecutive + 1)

    try:
        assert await store.update(WS, racing) == 7
        assert seen == [0, 7]
        assert (await store.get_many([WS]))[WS].consecutive == 8
    finally:
        await store.aclose()


async def test_a_key_contended_past_the_bound_raises(redis_prefix: str) -> None:
    store = RedisBreakerStore(REDIS_URL, prefix=redis_prefix, max_attempts=3)
    calls = 0

    def always_raced(old: BreakerState) -> tuple[None, BreakerState]:
        nonlocal calls
        calls += 1
        with redis.Redis.from_url(REDIS_URL) as other:
            other.set(store.key(WS), replace(old, consecutive=old.consecutive + 100).to_json())
        return None, replace(old, consecutive=old.consecutive + 1)

    try:
        with pytest.raises(BreakerStoreUnavailableError, match="contended 3 times"):
            await store.update(WS, always_raced)
        assert calls == 3
        assert (await store.get_many([WS]))[WS].consecutive == 300  # none of ours landed
    finally:
        await store.aclose()


async def test_redis_keys_prefix_unchanged_states_and_corrupt_values(redis_prefix: str) -> None:
    client = Redis.from_url(require_redis())
    store = RedisBreakerStore(client, prefix=redis_prefix)
    try:
        assert store.key(WS) == f"{redis_prefix}{WS}"
        assert await store.update(WS, lambda old: ("same", old)) == "same"
        assert await client.exists(store.key(WS)) == 0  # an unchanged state is not written
        await client.set(store.key(WS), b"\xff not json")
        assert (await store.get_many([WS]))[WS] == FRESH  # corrupt reads as fresh ...
        await store.update(WS, lambda old: (None, replace(old, consecutive=1)))
        assert await client.get(store.key(WS)) == b'{"v":1,"s":"c","c":1}'  # ... and the next write replaces it
        await store.aclose()
        assert await client.ping()  # a passed-in client stays open
    finally:
        await client.aclose()


async def test_unreachable_redis_raises_an_error_the_caller_can_catch() -> None:
    store = RedisBreakerStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)  # nothing listens there
    try:
        with pytest.raises(BreakerStoreUnavailableError, match="unavailable: ConnectionError"):
            await store.update(WS, lambda old: (None, old))
        with pytest.raises(BreakerStoreUnavailableError):
            await store.get_many([WS])
    finally:
        await store.aclose()


# --- the facade ------------------------------------------------------------------------------------------------


async def test_the_half_open_probe_goes_to_exactly_one_of_two_processes(make_store: MakeStore) -> None:
    clock = ManualClock()
    a, b, a_changes, b_changes = pair(make_store, clock)
    assert await a.admit(WS) and await b.admit(WS)
    await open_breaker(a)
    assert (await a.states([WS]))[WS].state == "open"
    assert not await a.admit(WS)
    clock.advance(1.0)  # b's cached "closed" expires
    assert not await b.admit(WS)
    clock.advance(S.base_open_seconds - 1.0)
    assert [await a.admit(WS), await b.admit(WS), await b.admit(WS), await a.admit(WS)] == [True, False, False, False]
    await b.success(WS)  # a late send of b's: not the probe
    assert (await b.states([WS]))[WS].state == "half_open"
    await a.success(WS)  # the probe
    assert (await a.states([WS]))[WS].state == "closed"
    clock.advance(S.bucket_seconds)  # b's cache expires
    assert (await b.states([WS]))[WS].ejections == 1
    assert a_changes == [(WS, "closed", "open"), (WS, "open", "half_open"), (WS, "half_open", "closed")]
    assert b_changes == []  # each change is reported once, by the process that made it


async def test_twenty_concurrent_admits_get_one_probe(make_store: MakeStore) -> None:
    clock = ManualClock()
    a, b, _, _ = pair(make_store, clock)
    await open_breaker(b)
    clock.advance(S.base_open_seconds)
    answers = await asyncio.gather(*((a, b)[i % 2].admit(WS) for i in range(20)))
    assert sum(answers) == 1
    state = (await a.states([WS]))[WS]
    assert (state.state, state.probe_owner) == ("half_open", "ab"[answers.index(True) % 2])


async def test_a_probe_failure_reopens_longer_and_a_lost_probe_passes_on(make_store: MakeStore) -> None:
    clock = ManualClock()
    a, b, _, _ = pair(make_store, clock)
    await open_breaker(a)
    clock.advance(S.base_open_seconds)
    assert await a.admit(WS)
    await a.failure(WS, "probe: connection refused")
    state = (await b.states([WS]))[WS]
    assert (state.state, state.ejections, state.last_error) == ("open", 2, "probe: connection refused")
    assert state.open_until == clock.now().timestamp() + 60
    clock.advance(60)
    assert await a.admit(WS)  # a takes the probe and never reports
    clock.advance(S.probe_timeout_seconds - 0.5)
    assert not await b.admit(WS)
    clock.advance(0.5)
    assert await b.admit(WS)
    await b.success(WS)
    assert (await a.states([WS]))[WS].state == "closed"


async def test_a_change_is_visible_to_another_process_within_cache_seconds(make_store: MakeStore) -> None:
    clock = ManualClock()
    a, b, _, _ = pair(make_store, clock)
    assert (await b.states([WS]))[WS].state == "closed"
    await open_breaker(a)
    clock.advance(0.999)
    assert (await b.states([WS]))[WS].state == "closed"  # b's entry is 0.999 s old
    assert await b.admit(WS)  # the cache's staleness, bounded by cache_seconds
    clock.advance(0.001)
    assert (await b.states([WS]))[WS].state == "open"
    assert not await b.admit(WS)


async def test_admit_answers_from_the_cache_unless_a_probe_may_be_due(make_store: MakeStore) -> None:
    clock = ManualClock()
    store = CountingStore(make_store())
    breakers = Breakers(store, S, clock, "a")
    assert await breakers.admit(WS)
    assert await breakers.admit(WS)
    assert store.calls == ["get_many"]
    await open_breaker(breakers)
    store.calls.clear()
    clock.advance(S.base_open_seconds - 0.5)
    assert not await breakers.admit(WS)  # cache expired: one read, open before the deadline
    assert not await breakers.admit(WS)  # fresh cache: no call
    assert store.calls == ["get_many"]
    store.calls.clear()
    clock.advance(0.5)  # the cached entry is 0.5 s old and open past its deadline: the probe may be due
    assert await breakers.admit(WS)
    assert not await breakers.admit(WS)  # half-open with a fresh cache still goes to the store
    assert store.calls == ["update", "update"]


async def test_states_apply_decay_and_a_capped_pool_stays_closed(make_store: MakeStore) -> None:
    clock = ManualClock()
    a, b, _, _ = pair(make_store, clock)
    for _ in range(8):
        await a.failure(WS, "timeout", may_eject=False)
    assert ((await a.states([WS]))[WS].state, (await a.states([WS]))[WS].consecutive) == ("closed", 8)
    await a.failure(WS, "timeout")
    clock.advance(S.base_open_seconds)
    assert await b.admit(WS)
    await b.success(WS)
    clock.advance(S.decay_seconds - 1)
    assert (await a.states([WS]))[WS].ejections == 1
    clock.advance(1)
    assert (await a.states([WS, "other"])) == {WS: (await a.states([WS]))[WS], "other": FRESH}
    assert (await a.states([WS]))[WS].ejections == 0

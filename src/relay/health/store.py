"""Breaker state shared by every process: one `BreakerStore` interface, a memory and a Redis backend, and the
`Breakers` facade that delivery uses.

`update(workspace_id, fn)` applies a pure `fn: BreakerState -> (result, new state)` atomically. In memory that
is free (nothing awaits between the read and the write, so do not share an instance across threads). On Redis
it is an optimistic transaction on the workspace's one key: WATCH, GET, run `fn`, MULTI/SET/EXEC, and again
with a jittered backoff when another process wrote the key in between. `fn` may therefore run several times
and must have no side effects. When `fn` returns a state equal to the one it read, nothing is written.

A value that cannot be decoded (corrupt, or written by an unknown format version) reads as a fresh, closed
breaker, which the next write replaces: the breaker re-learns within a few failures rather than staying
stuck. Redis errors raise `BreakerStoreUnavailableError`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError, WatchError

from relay.clock import Clock
from relay.errors import RelayError
from relay.redis_client import redis_client

from .breaker import (
    BreakerSettings,
    BreakerState,
    current,
    eject_allowed,
    record_failure,
    record_recovery,
    record_success,
    release_probe,
    try_admit,
)

__all__ = [
    "DEFAULT_KEY_PREFIX",
    "BreakerStore",
    "BreakerStoreUnavailableError",
    "Breakers",
    "EjectionGroups",
    "MemoryBreakerStore",
    "OnChange",
    "RedisBreakerStore",
]

T = TypeVar("T")
DEFAULT_KEY_PREFIX = "relay:health:"
FRESH = BreakerState()

OnChange = Callable[[str, BreakerState, BreakerState], None]
# The pools a workspace is in, for the ejection cap: (the other members' ids, pool size, max_ejection_percent).
EjectionGroups = Sequence[tuple[Sequence[str], int, float]]
"""`on_change(workspace_id, old, new)`: called when `state` (closed/open/half_open) changes."""


class BreakerStoreUnavailableError(RelayError):
    """The shared breaker store did not answer, or a key stayed contended past the retry bound.

    `reason` is short, does no I/O, names no secrets, and may be shown on /readyz.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class BreakerStore(Protocol):
    """Breaker states by workspace id, updated atomically. A workspace never written reads as a fresh state."""

    async def update(self, workspace_id: str, fn: Callable[[BreakerState], tuple[T, BreakerState]]) -> T: ...

    async def update_with_peers(
        self,
        workspace_id: str,
        peers: Iterable[str],
        fn: Callable[[BreakerState, dict[str, BreakerState]], tuple[T, BreakerState]],
    ) -> T:
        """Like `update`, with the peers' states read in the same transaction: a change to any peer makes it run
        again, so a rule over several workspaces (the pool's ejection cap) holds across processes."""
        ...

    async def get_many(self, workspace_ids: Iterable[str]) -> dict[str, BreakerState]: ...

    async def lease(self, name: str, owner: str, seconds: float) -> bool:
        """Take `name` for `seconds` unless someone else holds it (one active checker per workspace)."""
        ...

    async def aclose(self) -> None: ...


class MemoryBreakerStore:
    """`BreakerStore` in process memory: exact for the processes sharing this one object (tests, one process)."""

    def __init__(self) -> None:
        self._states: dict[str, BreakerState] = {}

    async def update(self, workspace_id: str, fn: Callable[[BreakerState], tuple[T, BreakerState]]) -> T:
        old = self._states.get(workspace_id, FRESH)
        result, new = fn(old)
        if new != old:
            self._states[workspace_id] = new
        return result

    async def update_with_peers(
        self,
        workspace_id: str,
        peers: Iterable[str],
        fn: Callable[[BreakerState, dict[str, BreakerState]], tuple[T, BreakerState]],
    ) -> T:
        peer_states = {ws: self._states.get(ws, FRESH) for ws in peers}
        return await self.update(workspace_id, lambda old: fn(old, peer_states))

    async def get_many(self, workspace_ids: Iterable[str]) -> dict[str, BreakerState]:
        return {ws: self._states.get(ws, FRESH) for ws in workspace_ids}

    async def lease(self, name: str, owner: str, seconds: float) -> bool:
        return True  # one process: nobody to share the check with

    async def aclose(self) -> None:
        return None


class RedisBreakerStore:
    """`BreakerStore` on Redis: one JSON string per workspace at `prefix + workspace_id`.

    Pass a URL (the store owns its client and pool and closes them) or a `redis.asyncio.Redis` (the caller keeps
    it). `timeout` bounds connecting, each reply and the wait for a pooled connection. A contended update is
    tried `max_attempts` times, sleeping a random 0..min(50 ms, 1 ms * 2^attempt) in between (full jitter).
    """

    def __init__(
        self,
        redis: str | Redis,
        *,
        prefix: str = DEFAULT_KEY_PREFIX,
        timeout: float = 2.0,
        max_connections: int = 50,
        max_attempts: int = 50,
        rng: random.Random | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._client, self._owned = redis_client(redis, timeout=timeout, max_connections=max_connections)
        self._prefix = prefix
        self._max_attempts = max_attempts
        self._rng = rng or random.Random()

    @property
    def prefix(self) -> str:
        return self._prefix

    def key(self, workspace_id: str) -> str:
        return self._prefix + workspace_id

    async def update(self, workspace_id: str, fn: Callable[[BreakerState], tuple[T, BreakerState]]) -> T:
        return await self.update_with_peers(workspace_id, (), lambda old, _peers: fn(old))

    async def update_with_peers(
        self,
        workspace_id: str,
        peers: Iterable[str],
        fn: Callable[[BreakerState, dict[str, BreakerState]], tuple[T, BreakerState]],
    ) -> T:
        key = self.key(workspace_id)
        peer_ids = [ws for ws in dict.fromkeys(peers) if ws != workspace_id]
        peer_keys = [self.key(ws) for ws in peer_ids]
        for attempt in range(self._max_attempts):
            try:
                async with self._client.pipeline(transaction=True) as pipe:
                    await pipe.watch(key, *peer_keys)
                    old = _decode(await pipe.get(key))
                    values = await pipe.mget(peer_keys) if peer_keys else []
                    peer_states = {ws: _decode(v) for ws, v in zip(peer_ids, values, strict=True)}
                    result, new = fn(old, peer_states)
                    if new != old:
                        pipe.multi()  # type: ignore[no-untyped-call]  # untyped in redis-py
                        pipe.set(key, new.to_json())
                        await pipe.execute()
                    return result
            except WatchError:
                await asyncio.sleep(self._rng.uniform(0.0, min(0.05, 0.001 * 2**attempt)))
            except (RedisError, OSError) as exc:
                raise _unavailable(exc) from exc
        raise BreakerStoreUnavailableError(f"breaker state of {workspace_id!r} contended {self._max_attempts} times")

    async def get_many(self, workspace_ids: Iterable[str]) -> dict[str, BreakerState]:
        ids = list(dict.fromkeys(workspace_ids))
        if not ids:
            return {}
        try:
            values = await self._client.mget([self.key(ws) for ws in ids])
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        return {ws: _decode(value) for ws, value in zip(ids, values, strict=True)}

    async def lease(self, name: str, owner: str, seconds: float) -> bool:
        try:
            taken = await self._client.set(
                f"{self._prefix}lease:{name}", owner, nx=True, px=max(1, int(seconds * 1000))
            )
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        return bool(taken)

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()


def _decode(raw: str | bytes | None) -> BreakerState:
    if raw is None:
        return FRESH
    try:
        return BreakerState.from_json(raw)
    except ValueError:
        return FRESH


def _unavailable(exc: BaseException) -> BreakerStoreUnavailableError:
    return BreakerStoreUnavailableError(f"Redis breaker store unavailable: {type(exc).__name__}: {exc}")


class Breakers:
    """The breakers of every workspace, as one process sees them: shared state plus a short local cache.

    `admit` answers from a cache entry younger than `cache_seconds` when it is closed (True) or open before its
    deadline (False); an open breaker past its deadline or a half-open one always goes to the store, so the probe
    is unique across processes. Results always go to the store. `states` serves entries younger than
    `cache_seconds` and fetches the rest in one call. Time: `clock.now()` for breaker deadlines (shared between
    processes, so NTP-synchronised clocks), `clock.monotonic()` for cache age.

    `on_change(workspace_id, old, new)` runs in the process that made a transition (not in the ones that later
    read it), so each change is reported exactly once. Its exceptions propagate to the caller; the state is
    already stored by then.

    Results are attributed to the probe by `instance`: a result this process reports for a workspace whose probe it
    holds is taken as the probe's result, even when it came from a send admitted before the breaker opened.
    """

    def __init__(
        self,
        store: BreakerStore,
        settings: BreakerSettings | Callable[[str], BreakerSettings],
        clock: Clock,
        instance: str,
        cache_seconds: float = 1.0,
        on_change: OnChange | None = None,
    ) -> None:
        self._store = store
        # One settings object for every workspace, or a function of the workspace id (per-workspace thresholds).
        self._settings_for: Callable[[str], BreakerSettings] = (
            settings if callable(settings) else (lambda _workspace_id: settings)
        )
        self._clock = clock
        self._instance = instance
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[BreakerState, float]] = {}
        self._probes = 0
        self.on_change = on_change

    @property
    def instance(self) -> str:
        return self._instance

    def settings(self, workspace_id: str) -> BreakerSettings:
        return self._settings_for(workspace_id)

    async def aclose(self) -> None:
        await self._store.aclose()

    async def lease(self, name: str, seconds: float) -> bool:
        """Take the shared lease `name` for `seconds` as this instance (see `BreakerStore.lease`)."""
        return await self._store.lease(name, self._instance, seconds)

    async def recovered(self, workspace_id: str) -> None:
        """An active check passed: close the breaker now (see `record_recovery`)."""
        now = self._now()
        settings = self._settings_for(workspace_id)
        await self._apply(workspace_id, lambda s: (None, record_recovery(s, settings, now)))

    async def admit(self, workspace_id: str) -> bool:
        """May this process send through `workspace_id` now? True may mean "you hold the half-open probe"."""
        now = self._now()
        state = self._cached(workspace_id)
        if state is None:
            state = (await self._fetch([workspace_id]))[workspace_id]
        if state.state == "closed":
            return True
        if state.state == "open" and state.open_until is not None and now < state.open_until:
            return False
        settings = self._settings_for(workspace_id)
        return await self._apply(workspace_id, lambda s: try_admit(s, settings, now, self._instance))

    async def admit_send(self, workspace_id: str) -> tuple[bool, str | None]:
        """`admit` for one send: (admitted, probe token). The token is set when this send is the half-open probe;
        only a result reported with it (`success`/`failure(probe=token)`) closes or reopens the breaker, so a late
        answer of a send admitted before the opening can never pass for the probe's."""
        now = self._now()
        state = self._cached(workspace_id)
        if state is None:
            state = (await self._fetch([workspace_id]))[workspace_id]
        if state.state == "closed":
            return True, None
        if state.state == "open" and state.open_until is not None and now < state.open_until:
            return False, None
        self._probes += 1
        token = f"{self._instance}#{self._probes}"
        settings = self._settings_for(workspace_id)
        admitted = await self._apply(workspace_id, lambda s: try_admit(s, settings, now, token))
        held = self.cached(workspace_id)
        return admitted, token if admitted and held is not None and held.probe_owner == token else None

    async def release_probe(self, workspace_id: str, token: str) -> None:
        """Give the probe back unused (see `release_probe`)."""
        await self._apply(workspace_id, lambda s: (None, release_probe(s, token)))

    def quiet_success(self, workspace_id: str) -> bool:
        """Whether a success need not be written: the breaker was closed with no failure anywhere in its window
        when last read (at most `cache_seconds` ago). Skipping those writes keeps Redis out of the healthy
        steady state; the failure-rate rule then counts only the successes since the first failure in a window,
        which can only make it open sooner, never later."""
        state = self._cached(workspace_id)
        return (
            state is not None
            and state.state == "closed"
            and state.consecutive == 0
            and all(failures == 0 for _, _, failures in state.window)
        )

    async def success(self, workspace_id: str, *, probe: str | None = None) -> None:
        """A send succeeded. `probe`: the token from `admit_send` ("" for a send that was not the probe); without
        it, results are attributed to this instance."""
        now = self._now()
        settings = self._settings_for(workspace_id)
        who = self._instance if probe is None else probe
        await self._apply(workspace_id, lambda s: (None, record_success(s, settings, now, instance=who)))

    async def failure(
        self, workspace_id: str, error: str, may_eject: bool | EjectionGroups = True, *, probe: str | None = None
    ) -> None:
        """A failure that is the workspace's. `may_eject`: a verdict, or the pools the workspace is in as
        (other members, pool size, max_ejection_percent) — then the cap is evaluated on the other members' states
        read in the same transaction, so two processes cannot eject past it together."""
        now = self._now()
        settings = self._settings_for(workspace_id)
        who = self._instance if probe is None else probe
        if isinstance(may_eject, bool):
            verdict = may_eject
            await self._apply(
                workspace_id,
                lambda s: (None, record_failure(s, settings, now, error, verdict, instance=who)),
            )
            return
        groups = list(may_eject)
        peers = [ws for others, _, _ in groups for ws in others]

        def step(s: BreakerState, peer_states: dict[str, BreakerState]) -> tuple[None, BreakerState]:
            allowed = all(
                eject_allowed(size, sum(1 for ws in others if peer_states[ws].state != "closed"), percent)
                for others, size, percent in groups
            )
            return None, record_failure(s, settings, now, error, allowed, instance=who)

        await self._apply(workspace_id, step, peers)

    async def states(self, workspace_ids: Iterable[str], *, fresh: bool = False) -> dict[str, BreakerState]:
        """Each workspace's state as of now (decay applied), at most `cache_seconds` old (read now with `fresh`)."""
        ids = list(dict.fromkeys(workspace_ids))
        found: dict[str, BreakerState] = {}
        for ws in ids if not fresh else ():
            cached = self._cached(ws)
            if cached is not None:
                found[ws] = cached
        missing = [ws for ws in ids if ws not in found]
        if missing:
            found.update(await self._fetch(missing))
        now = self._now()
        return {ws: current(found[ws], self._settings_for(ws), now) for ws in ids}

    def cached(self, workspace_id: str) -> BreakerState | None:
        """The last state this process saw, however old (for synchronous readers such as a decision snapshot)."""
        entry = self._cache.get(workspace_id)
        return entry[0] if entry is not None else None

    def _now(self) -> float:
        return self._clock.now().timestamp()

    def _cached(self, workspace_id: str) -> BreakerState | None:
        entry = self._cache.get(workspace_id)
        if entry is not None and self._clock.monotonic() - entry[1] < self._cache_seconds:
            return entry[0]
        return None

    async def _fetch(self, workspace_ids: list[str]) -> dict[str, BreakerState]:
        fetched = await self._store.get_many(workspace_ids)
        at = self._clock.monotonic()
        for ws, state in fetched.items():
            self._cache[ws] = (state, at)
        return fetched

    async def _apply(
        self, workspace_id: str, fn: Callable[..., tuple[T, BreakerState]], peers: list[str] | None = None
    ) -> T:
        if peers is None:

            def step(old: BreakerState) -> tuple[tuple[T, BreakerState, BreakerState], BreakerState]:
                result, new = fn(old)
                return (result, old, new), new

            result, old, new = await self._store.update(workspace_id, step)
        else:

            def peer_step(
                old: BreakerState, peer_states: dict[str, BreakerState]
            ) -> tuple[tuple[T, BreakerState, BreakerState], BreakerState]:
                result, new = fn(old, peer_states)
                return (result, old, new), new

            result, old, new = await self._store.update_with_peers(workspace_id, peers, peer_step)
        self._cache[workspace_id] = (new, self._clock.monotonic())
        if self.on_change is not None and old.state != new.state:
            self.on_change(workspace_id, old, new)
        return result

"""The Redis limits backend: exact across processes and hosts, one script call per operation.

`reserve`, `release` and `usage` are each one EVALSHA of `lua/limits.lua` (loaded with `register_script`), so
the check of every limit and the increment of every counter happen atomically on the server. Every key
starts with `key_prefix`, which must carry a hash tag (`relay:{limits}:`) so all keys of a reservation hash
to one slot and the script works on Redis Cluster.

Clocks. Rolling windows and GCRA read the clock with Redis `TIME` inside the script, so the callers' clocks
do not matter. A calendar limit's day needs the IANA time zone rules, which live in Python (zoneinfo), and
Redis `TIME` cannot reach Python within the same single call. So, as a deliberate compromise, the caller's
`clock` picks the local date (the counter key, `...day:<key>:<YYYY-MM-DD>`) and computes the DST-correct
reset, passing the time left until it (and how long to keep the counter) into the script; a calendar
refusal's `retry_after` is therefore measured on the caller's clock. Caller clocks that disagree by a few
seconds can at worst count a send on either side of midnight against a neighbouring day: NTP-synchronised
hosts keep calendar limits exact except within that skew of local midnight.

Failures. Any Redis error (refused, timed out, script error) raises `LimitsUnavailableError`: the caller
must fail closed — send nothing and retry later.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import files
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from relay.clock import Clock, SystemClock
from relay.redis_client import redis_client

from .errors import LimitsUnavailableError
from .tokens import Hold, decode, encode
from .types import Limit, Reservation, Usage
from .windows import (
    CALENDAR_GRACE_US,
    calendar_day,
    epoch_micros,
    gcra_interval,
    micros,
    rolling_leaves_at,
    seconds,
    validate,
)

__all__ = ["DEFAULT_KEY_PREFIX", "RedisLimits"]

DEFAULT_KEY_PREFIX = "relay:{limits}:"
_BACKEND = "r"
_SCRIPT = files("relay.limits").joinpath("lua/limits.lua").read_text(encoding="utf-8")


def _check_prefix(prefix: str) -> None:
    opening = prefix.find("{")
    closing = prefix.find("}", opening + 1) if opening >= 0 else -1
    if closing <= opening + 1:
        raise ValueError(f"key_prefix {prefix!r} needs a non-empty hash tag such as 'relay:{{limits}}:'")


class RedisLimits:
    """`LimitBackend` on Redis. Pass a URL (the backend owns its client and connection pool and closes them)
    or a `redis.asyncio.Redis` (the caller keeps it; `aclose` leaves it open). `timeout` bounds connecting,
    each reply and the wait for a free pooled connection; past it the call raises `LimitsUnavailableError`."""

    def __init__(
        self,
        redis: str | Redis,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        clock: Clock | None = None,
        timeout: float = 2.0,
        max_connections: int = 50,
    ) -> None:
        _check_prefix(key_prefix)
        # A blocking pool: a burst of concurrent reservations waits for a connection instead of failing with "too
        # many connections" and closing the gate for no reason.
        self._client, self._owned = redis_client(redis, timeout=timeout, max_connections=max_connections)
        self._prefix = key_prefix
        self._clock: Clock = clock or SystemClock()
        self._script = self._client.register_script(_SCRIPT)

    @property
    def key_prefix(self) -> str:
        return self._prefix

    def counter_key(self, limit: Limit, day: str = "") -> str:
        """The Redis key of a limit's counter (calendar limits: of one local date)."""
        if limit.kind == "calendar":
            return f"{self._prefix}day:{limit.key}:{day}"
        return self._prefix + ("roll:" if limit.kind == "rolling" else "gcra:") + limit.key

    async def reserve(self, limits: Sequence[Limit], cost: int = 1) -> Reservation:
        validate(limits, cost)
        keys, args, days = self._specs(limits)
        answer = await self._call(keys, ["reserve", cost, *args])
        if answer[0] == 0:
            denied = limits[int(answer[1]) - 1]
            return Reservation(ok=False, denied_by=denied.key, retry_after=seconds(int(answer[2])))
        holds: list[Hold] = []
        remaining: dict[str, int] = {}
        for i, limit in enumerate(limits):
            left, aux = int(answer[2 + 2 * i]), int(answer[3 + 2 * i])
            remaining[limit.key] = left
            if limit.kind == "rolling":
                period, bucket = micros(limit.period_seconds), micros(limit.bucket_seconds)
                holds.append(Hold("rolling", limit.key, cost, str(aux), rolling_leaves_at(aux, period, bucket)))
            elif limit.kind == "calendar":
                day, reset_us = days[i]
                holds.append(Hold("calendar", limit.key, cost, day, reset_us))
            else:
                interval = gcra_interval(limit.limit, micros(limit.period_seconds))
                holds.append(Hold("gcra", limit.key, cost * interval, "", aux))
        return Reservation(ok=True, token=encode(_BACKEND, holds), remaining=remaining)

    async def release(self, token: str) -> None:
        """Give a reservation back. Idempotent: a marker key remembers released tokens until they expire."""
        ticket = decode(token, _BACKEND)
        keys = [f"{self._prefix}released:{ticket.id}"]
        args: list[str | int] = ["release"]
        for hold in ticket.holds:
            probe = Limit(key=hold.key, kind=hold.kind, limit=0)
            keys.append(self.counter_key(probe, hold.where))
            args += [hold.kind, hold.amount, hold.where, hold.until_us]
        await self._call(keys, args)

    async def usage(self, limits: Sequence[Limit]) -> list[Usage]:
        validate(limits)
        keys, args, _ = self._specs(limits)
        answer = await self._call(keys, ["usage", 1, *args])
        out: list[Usage] = []
        for i, limit in enumerate(limits):
            used, left, next_us, full_us = (int(v) for v in answer[1 + 4 * i : 5 + 4 * i])
            out.append(
                Usage(
                    key=limit.key,
                    limit=limit.burst if limit.kind == "gcra" else limit.limit,
                    used=used,
                    remaining=left,
                    next_capacity_in=seconds(next_us),
                    full_reset_in=seconds(full_us),
                )
            )
        return out

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()

    def _specs(self, limits: Sequence[Limit]) -> tuple[list[str], list[str | int], list[tuple[str, int]]]:
        """Keys and the 4 script fields per limit; for calendar limits also (date, reset µs) by our clock."""
        now = epoch_micros(self._clock.now())
        keys: list[str] = []
        args: list[str | int] = []
        days: list[tuple[str, int]] = []
        for limit in limits:
            day = ("", 0)
            if limit.kind == "rolling":
                args += ["rolling", limit.limit, micros(limit.period_seconds), micros(limit.bucket_seconds)]
            elif limit.kind == "calendar":
                today = calendar_day(now, limit.timezone)
                day = (today.day, today.reset_us)
                keep_ms = -(-(today.reset_us - now + CALENDAR_GRACE_US) // 1000)
                args += ["calendar", limit.limit, today.reset_us - now, keep_ms]
            else:
                args += ["gcra", limit.burst, gcra_interval(limit.limit, micros(limit.period_seconds)), 0]
            keys.append(self.counter_key(limit, day[0]))
            days.append(day)
        return keys, args, days

    async def _call(self, keys: list[str], args: list[str | int]) -> list[Any]:
        try:
            answer = await self._script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise LimitsUnavailableError(f"Redis limits store unavailable: {type(exc).__name__}: {exc}") from exc
        if not isinstance(answer, list):
            return [answer]
        return answer

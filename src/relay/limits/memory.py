"""The in-process limits backend: exact for one process, with an injectable clock for tests.

A reservation checks and counts without awaiting in between, so it is atomic on one event loop (do not share
an instance across threads). The arithmetic is `windows.py`; `lua/limits.lua` is the same arithmetic for
Redis, and one test suite runs against both.

State is pruned as it is touched: rolling buckets that no longer count, GCRA arrival times in the past and
calendar counters a day past their reset (as Redis expires them) are dropped, so memory stays proportional
to the keys in use.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from relay.clock import Clock, SystemClock

from .tokens import Hold, decode, encode
from .types import Limit, Reservation, Usage
from .windows import (
    CALENDAR_GRACE_US,
    NEVER,
    bucket_index,
    calendar_day,
    epoch_micros,
    first_counted_bucket,
    gcra_interval,
    gcra_remaining,
    gcra_wait,
    micros,
    rolling_full_reset,
    rolling_leaves_at,
    rolling_used,
    rolling_wait,
    seconds,
    validate,
)

__all__ = ["MemoryLimits"]

_BACKEND = "m"
_RELEASED_MARGIN_US = 86_400 * 1_000_000  # keep a released token's id this long after its holds stop mattering


class MemoryLimits:
    """`LimitBackend` in process memory."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock: Clock = clock or SystemClock()
        self._rolling: dict[str, dict[int, int]] = {}
        self._calendar: dict[str, dict[str, tuple[int, int]]] = {}  # key -> ISO local date -> (count, forget at)
        self._tat: dict[str, int] = {}  # key -> theoretical arrival time, µs
        self._released: dict[str, int] = {}  # token id -> forget after, µs

    def _now(self) -> int:
        return epoch_micros(self._clock.now())

    async def reserve(self, limits: Sequence[Limit], cost: int = 1) -> Reservation:
        validate(limits, cost)
        now = self._now()
        for limit in limits:  # check everything before changing anything
            used = self._used(limit, now)
            if limit.kind == "gcra":
                wait = gcra_wait(used, now, gcra_interval(limit.limit, micros(limit.period_seconds)), limit.burst, cost)
            else:
                wait = self._wait(limit, now, used + cost - limit.limit)
            if wait != 0:
                return Reservation(ok=False, denied_by=limit.key, retry_after=seconds(wait))
        holds: list[Hold] = []
        remaining: dict[str, int] = {}
        for limit in limits:
            hold, left = self._add(limit, now, cost)
            holds.append(hold)
            remaining[limit.key] = left
        return Reservation(ok=True, token=encode(_BACKEND, holds), remaining=remaining)

    async def release(self, token: str) -> None:
        ticket = decode(token, _BACKEND)
        now = self._now()
        self._released = {i: until for i, until in self._released.items() if until > now}
        if ticket.id in self._released:
            return
        self._released[ticket.id] = max((h.until_us for h in ticket.holds), default=now) + _RELEASED_MARGIN_US
        for hold in ticket.holds:
            self._give_back(hold, now)

    async def record(self, limits: Sequence[Limit], cost: int, at: datetime) -> None:
        """Count a send that already happened at `at`, without checking any limit.

        For rebuilding the counters at start from the delivery attempts, so a restart never resets a limit.
        A send that no longer counts (its bucket has left the window, its day is over) changes nothing. GCRA
        state is replayed exactly only when sends are recorded in time order.
        """
        validate(limits, cost)
        now, when = self._now(), epoch_micros(at)
        for limit in limits:
            if limit.kind == "rolling":
                period, bucket = micros(limit.period_seconds), micros(limit.bucket_seconds)
                index = bucket_index(when, bucket)
                if rolling_leaves_at(index, period, bucket) <= now:
                    continue
                first = first_counted_bucket(now, period, bucket)
                buckets = {i: n for i, n in self._rolling.get(limit.key, {}).items() if i >= first}
                buckets[index] = buckets.get(index, 0) + cost
                self._rolling[limit.key] = buckets
            elif limit.kind == "calendar":
                day = calendar_day(when, limit.timezone)
                forget_at = day.reset_us + CALENDAR_GRACE_US
                if forget_at <= now:
                    continue
                days = self._calendar.setdefault(limit.key, {})
                days[day.day] = (days.get(day.day, (0, 0))[0] + cost, forget_at)
            else:
                interval = gcra_interval(limit.limit, micros(limit.period_seconds))
                self._tat[limit.key] = max(self._tat.get(limit.key, when), when) + cost * interval

    async def usage(self, limits: Sequence[Limit]) -> list[Usage]:
        validate(limits)
        now = self._now()
        return [self._usage(limit, now) for limit in limits]

    async def aclose(self) -> None:
        return None

    # --- per kind ----------------------------------------------------------------------------------------------

    def _used(self, limit: Limit, now: int) -> int:
        """Units counted now (rolling, calendar), or the TAT (gcra)."""
        if limit.kind == "rolling":
            first = first_counted_bucket(now, micros(limit.period_seconds), micros(limit.bucket_seconds))
            return rolling_used(self._rolling.get(limit.key, {}), first)
        if limit.kind == "calendar":
            days = self._calendar.get(limit.key, {})
            return days.get(calendar_day(now, limit.timezone).day, (0, 0))[0]
        return self._tat.get(limit.key, now)

    def _wait(self, limit: Limit, now: int, need: int) -> int:
        """Rolling and calendar: µs until `need` counted units are gone (0 if need <= 0)."""
        if need <= 0:
            return 0
        if limit.kind == "rolling":
            buckets = self._rolling.get(limit.key, {})
            return rolling_wait(buckets, now, micros(limit.period_seconds), micros(limit.bucket_seconds), need)
        if need > self._used(limit, now):
            return NEVER
        return calendar_day(now, limit.timezone).reset_us - now

    def _add(self, limit: Limit, now: int, cost: int) -> tuple[Hold, int]:
        if limit.kind == "rolling":
            period, bucket = micros(limit.period_seconds), micros(limit.bucket_seconds)
            first = first_counted_bucket(now, period, bucket)
            buckets = {i: n for i, n in self._rolling.get(limit.key, {}).items() if i >= first}
            index = bucket_index(now, bucket)
            buckets[index] = buckets.get(index, 0) + cost
            self._rolling[limit.key] = buckets
            hold = Hold("rolling", limit.key, cost, str(index), rolling_leaves_at(index, period, bucket))
            return hold, limit.limit - rolling_used(buckets, first)
        if limit.kind == "calendar":
            today = calendar_day(now, limit.timezone)
            days = {d: entry for d, entry in self._calendar.get(limit.key, {}).items() if entry[1] > now}
            count = days.get(today.day, (0, 0))[0] + cost
            days[today.day] = (count, today.reset_us + CALENDAR_GRACE_US)
            self._calendar[limit.key] = days
            return Hold("calendar", limit.key, cost, today.day, today.reset_us), limit.limit - count
        interval = gcra_interval(limit.limit, micros(limit.period_seconds))
        tat = max(self._tat.get(limit.key, now), now) + cost * interval
        self._tat[limit.key] = tat
        return Hold("gcra", limit.key, cost * interval, "", tat), gcra_remaining(tat, now, interval, limit.burst)

    def _give_back(self, hold: Hold, now: int) -> None:
        if hold.kind == "rolling":
            buckets = self._rolling.get(hold.key)
            index = int(hold.where)
            if buckets is None or index not in buckets or now >= hold.until_us:
                return
            left = buckets[index] - hold.amount
            if left > 0:
                buckets[index] = left
            else:
                del buckets[index]
                if not buckets:
                    del self._rolling[hold.key]
        elif hold.kind == "calendar":
            days = self._calendar.get(hold.key, {})
            if hold.where in days and days[hold.where][1] > now:
                count, forget_at = days[hold.where]
                days[hold.where] = (max(0, count - hold.amount), forget_at)
        else:
            tat = self._tat.get(hold.key)
            if tat is None or now >= hold.until_us:
                return
            if tat - hold.amount > now:
                self._tat[hold.key] = tat - hold.amount
            else:
                del self._tat[hold.key]

    def _usage(self, limit: Limit, now: int) -> Usage:
        if limit.kind == "gcra":
            interval = gcra_interval(limit.limit, micros(limit.period_seconds))
            tat = self._used(limit, now)
            if tat <= now:
                self._tat.pop(limit.key, None)
            left = gcra_remaining(tat, now, interval, limit.burst)
            return Usage(
                key=limit.key,
                limit=limit.burst,
                used=limit.burst - left,
                remaining=left,
                next_capacity_in=seconds(gcra_wait(tat, now, interval, limit.burst, 1)),
                full_reset_in=seconds(max(0, tat - now)),
            )
        used = self._used(limit, now)
        if limit.kind == "rolling":
            buckets = self._rolling.get(limit.key, {})
            full = rolling_full_reset(buckets, now, micros(limit.period_seconds), micros(limit.bucket_seconds))
        else:
            full = calendar_day(now, limit.timezone).reset_us - now if used > 0 else 0
        return Usage(
            key=limit.key,
            limit=limit.limit,
            used=used,
            remaining=max(0, limit.limit - used),
            next_capacity_in=seconds(self._wait(limit, now, used + 1 - limit.limit)),
            full_reset_in=seconds(full),
        )

"""Window arithmetic for the three limit kinds: pure functions, no I/O, no clock.

All times are integer microseconds since the Unix epoch, and all durations integer microseconds. Redis `TIME`
answers in (seconds, microseconds), a `datetime` has microsecond resolution, and integers below 2**53 are
exact in a Lua number (an IEEE double), so the memory backend and `lua/limits.lua` compute bit-identical
answers. `lua/limits.lua` mirrors every function here; change both together (tests/limits/test_backends.py
checks that they agree).

rolling   A hash of buckets `index -> count`, bucket `index` covering `[index*bucket, (index+1)*bucket)`.
          The window counts every bucket whose index is `>= (now - period) // bucket`: the bucket holding
          `now - period` counts whole, so the count is never below the true count in `[now - period, now]`
          (never over-admits) and never above the true count in `[now - period - bucket, now]` (under-admits
          by at most one bucket). Bucket `index` stops counting at `(index + 1) * bucket + period`.
calendar  One counter per local date in an IANA zone. The day ends at the first instant whose local date is
          later — usually local midnight, found DST-correctly even where midnight does not exist.
gcra      One theoretical arrival time (TAT). The emission interval is rounded up to whole microseconds,
          `T = ceil(period / limit)`, so the limiter is never faster than `limit / period`; tolerance
          `burst * T`. A request of `cost` fits when `max(tat, now) + cost*T - now <= burst*T`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .types import Limit

__all__ = [
    "CALENDAR_GRACE_US",
    "MAX_BUCKETS",
    "MICROS",
    "NEVER",
    "CalendarDay",
    "bucket_index",
    "calendar_day",
    "epoch_micros",
    "first_counted_bucket",
    "gcra_interval",
    "gcra_remaining",
    "gcra_wait",
    "micros",
    "rolling_full_reset",
    "rolling_leaves_at",
    "rolling_used",
    "rolling_wait",
    "seconds",
    "validate",
    "zone",
]

MICROS = 1_000_000
CALENDAR_GRACE_US = 86_400 * MICROS  # a day's counter is kept this long after its reset (clock skew, late releases)
MAX_BUCKETS = 10_000  # per rolling window; the default is 288 (5 minutes over 24 hours)
NEVER = -1  # a wait that no amount of time ends: the cost is larger than the limit can ever hold
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICRO = timedelta(microseconds=1)


def micros(duration_seconds: float) -> int:
    """A duration in whole microseconds."""
    return round(duration_seconds * MICROS)


def epoch_micros(moment: datetime) -> int:
    """An aware datetime as integer microseconds since the epoch, exactly."""
    return (moment - _EPOCH) // _ONE_MICRO


def seconds(wait_us: int) -> float:
    """A wait in microseconds as float seconds; `NEVER` becomes `math.inf`."""
    return math.inf if wait_us == NEVER else wait_us / MICROS


def validate(limits: Sequence[Limit], cost: int = 1) -> None:
    """Reject what neither backend can honour, before anything is counted. Raises ValueError."""
    if isinstance(cost, bool) or not isinstance(cost, int) or cost < 1:
        raise ValueError(f"cost must be a positive integer, not {cost!r}")
    seen: set[str] = set()
    for limit in limits:
        if limit.key in seen:
            raise ValueError(f"limit key {limit.key!r} appears twice")
        seen.add(limit.key)
        if limit.limit < 0:
            raise ValueError(f"{limit.key}: limit must be >= 0")
        if micros(limit.period_seconds) < 1:
            raise ValueError(f"{limit.key}: period_seconds must be positive")
        if limit.kind == "rolling":
            bucket = micros(limit.bucket_seconds)
            if bucket < 1 or bucket > micros(limit.period_seconds):
                raise ValueError(f"{limit.key}: bucket_seconds must be positive and at most period_seconds")
            if micros(limit.period_seconds) // bucket > MAX_BUCKETS:
                raise ValueError(f"{limit.key}: at most {MAX_BUCKETS} buckets per window")
        elif limit.kind == "calendar":
            zone(limit.timezone)
        elif limit.kind == "gcra":
            if limit.limit < 1 or limit.burst < 1:
                raise ValueError(f"{limit.key}: a gcra limit needs limit >= 1 and burst >= 1")
        else:
            raise ValueError(f"{limit.key}: unknown limit kind {limit.kind!r}")


# --- rolling -------------------------------------------------------------------------------------------------


def bucket_index(now_us: int, bucket_us: int) -> int:
    return now_us // bucket_us


def first_counted_bucket(now_us: int, period_us: int, bucket_us: int) -> int:
    """The oldest bucket index that still counts at `now_us`."""
    return (now_us - period_us) // bucket_us


def rolling_leaves_at(index: int, period_us: int, bucket_us: int) -> int:
    """The instant bucket `index` stops counting."""
    return (index + 1) * bucket_us + period_us


def rolling_used(buckets: Mapping[int, int], first: int) -> int:
    return sum(count for index, count in buckets.items() if index >= first)


def rolling_wait(buckets: Mapping[int, int], now_us: int, period_us: int, bucket_us: int, need: int) -> int:
    """Microseconds until `need` counted units have left the window, oldest bucket first.

    `need` is `used + cost - limit`: 0 or less fits now; a cost above the limit (`need > used`) never fits.
    """
    if need <= 0:
        return 0
    first = first_counted_bucket(now_us, period_us, bucket_us)
    freed = 0
    for index in sorted(i for i in buckets if i >= first):
        freed += buckets[index]
        if freed >= need:
            return max(0, rolling_leaves_at(index, period_us, bucket_us) - now_us)
    return NEVER


def rolling_full_reset(buckets: Mapping[int, int], now_us: int, period_us: int, bucket_us: int) -> int:
    """Microseconds until no counted bucket holds anything."""
    first = first_counted_bucket(now_us, period_us, bucket_us)
    live = [i for i, count in buckets.items() if i >= first and count > 0]
    return max(0, rolling_leaves_at(max(live), period_us, bucket_us) - now_us) if live else 0


# --- calendar ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CalendarDay:
    """The local day holding an instant: its ISO date (the counter's name) and when it ends."""

    day: str
    reset_us: int


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    """An IANA zone; ValueError for an unknown name."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


def _local_date(instant_us: int, tz: ZoneInfo) -> date:
    return (_EPOCH + timedelta(microseconds=instant_us)).astimezone(tz).date()


def calendar_day(now_us: int, timezone: str) -> CalendarDay:
    """The local date at `now_us` in `timezone` and the first later instant whose local date is later.

    The candidate is the next date's 00:00 with fold=0 (the earlier of two, the pre-transition offset inside a
    gap). When the instant just before it is already on a later date — midnight fell inside a DST gap that
    began before midnight, or a day was skipped — the boundary is found by bisection over microseconds.
    """
    tz = zone(timezone)
    today = _local_date(now_us, tz)
    candidate = datetime.combine(today + timedelta(days=1), time(0), tzinfo=tz)
    reset = epoch_micros(candidate)
    if reset <= now_us or _local_date(reset, tz) <= today or _local_date(reset - 1, tz) > today:
        low, high = now_us, max(reset, now_us + 1)  # local date at `low` is today; find the first later one
        while _local_date(high, tz) <= today:
            high += 86_400 * MICROS
        while high - low > 1:
            middle = (low + high) // 2
            if _local_date(middle, tz) > today:
                high = middle
            else:
                low = middle
        reset = high
    return CalendarDay(today.isoformat(), reset)


# --- gcra ----------------------------------------------------------------------------------------------------


def gcra_interval(limit: int, period_us: int) -> int:
    """The emission interval T in whole microseconds, rounded up (never faster than the configured rate)."""
    return -(-period_us // limit)


def gcra_remaining(tat_us: int, now_us: int, interval_us: int, burst: int) -> int:
    """How many units fit right now: `burst - ceil(backlog / T)`, never below zero."""
    backlog = max(0, tat_us - now_us)
    return max(0, burst - -(-backlog // interval_us))


def gcra_wait(tat_us: int, now_us: int, interval_us: int, burst: int, cost: int) -> int:
    """Microseconds until `cost` units fit; 0 if they fit now, `NEVER` if `cost > burst`."""
    if cost > burst:
        return NEVER
    backlog = max(0, tat_us - now_us)
    return max(0, backlog + (cost - burst) * interval_us)

"""Property tests of the window arithmetic, driven through MemoryLimits with a ManualClock.

Every test checks the backend's decisions against an oracle built from the admitted sends themselves (not
from the backend's counters), and every `retry_after` is checked to be exact: on a copy of the backend,
waiting one microsecond less is still refused and waiting exactly that long is admitted.

The memory backend never awaits, so `sync()` runs its coroutines without an event loop — and fails if one
ever yields, which would make a reservation non-atomic.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Coroutine
from copy import deepcopy
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.clock import ManualClock
from relay.limits import Limit, MemoryLimits, Reservation, Usage
from relay.limits.windows import MAX_BUCKETS, CalendarDay, calendar_day, epoch_micros, gcra_interval

T = TypeVar("T")
US = 1_000_000
HOUR = 3600 * US
PROPERTY = settings(derandomize=True, deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])

Step = tuple[int, int, bool]  # (microseconds to advance, cost, wait out a refusal's retry_after)


def sync(coro: Coroutine[Any, Any, T]) -> T:
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise AssertionError("the memory backend awaited: its reservations would not be atomic")


def now_us(clock: ManualClock) -> int:
    return epoch_micros(clock.now())


def advance_us(clock: ManualClock, micros: int) -> None:
    before = now_us(clock)
    clock.advance(micros / US)
    assert now_us(clock) == before + micros


def assert_retry_is_exact(
    backend: MemoryLimits, clock: ManualClock, limit: Limit, cost: int, answer: Reservation
) -> None:
    wait = round(answer.retry_after * US)
    if wait > 0:
        early, early_clock = deepcopy((backend, clock))
        advance_us(early_clock, wait - 1)
        assert not sync(early.reserve([limit], cost)).ok, "retry_after is later than necessary"
    late, late_clock = deepcopy((backend, clock))
    advance_us(late_clock, wait)
    assert sync(late.reserve([limit], cost)).ok, "capacity had not returned after retry_after"


def run_steps(
    backend: MemoryLimits, clock: ManualClock, limit: Limit, steps: list[Step], on_refusal: Any, on_admit: Any
) -> list[tuple[int, int]]:
    """Play `steps`; returns the admitted sends as (µs, cost)."""
    admitted: list[tuple[int, int]] = []
    for gap, cost, wait_out in steps:
        advance_us(clock, gap)
        answer = sync(backend.reserve([limit], cost))
        if not answer.ok:
            assert answer.denied_by == limit.key
            on_refusal(admitted, cost, answer)
            if math.isinf(answer.retry_after):
                assert cost > limit.limit or (limit.kind == "gcra" and cost > limit.burst)
                continue
            assert_retry_is_exact(backend, clock, limit, cost, answer)
            if not wait_out:
                continue
            advance_us(clock, round(answer.retry_after * US))
            answer = sync(backend.reserve([limit], cost))
            assert answer.ok
        admitted.append((now_us(clock), cost))
        on_admit(admitted, answer)
    return admitted


# --- rolling ---------------------------------------------------------------------------------------------------


@st.composite
def rolling_cases(draw: st.DrawFn) -> tuple[Limit, datetime, list[Step]]:
    period_s = draw(st.sampled_from([60, 3600, 86_400]))
    bucket_s = draw(st.sampled_from([b for b in (1, 7, 60, 300) if b <= period_s and period_s // b <= MAX_BUCKETS]))
    period, bucket = period_s * US, bucket_s * US
    limit = Limit("ws", "rolling", draw(st.integers(1, 12)), period_seconds=period_s, bucket_seconds=bucket_s)
    start = datetime(2026, 3, 1, tzinfo=UTC) + timedelta(microseconds=draw(st.integers(0, 10 * bucket)))
    gaps = st.one_of(
        st.just(0),
        st.integers(0, 2 * bucket),
        st.integers(0, period + bucket),
        st.sampled_from([1, bucket - 1, bucket, period - 1, period, period + 1]),
    )
    steps = draw(st.lists(st.tuples(gaps, st.integers(1, 3), st.booleans()), min_size=1, max_size=50))
    return limit, start, steps


@PROPERTY
@given(rolling_cases())
def test_rolling_no_period_long_interval_holds_more_than_the_limit(case: tuple[Limit, datetime, list[Step]]) -> None:
    limit, start, steps = case
    clock = ManualClock(start)
    period = round(limit.period_seconds * US)

    def on_admit(admitted: list[tuple[int, int]], answer: Reservation) -> None:
        end = admitted[-1][0]
        # The busiest closed interval [end - period, end] ends at some send; checking at each send covers all.
        assert sum(c for t, c in admitted if end - period <= t <= end) <= limit.limit

    run_steps(MemoryLimits(clock), clock, limit, steps, lambda *_: None, on_admit)


@PROPERTY
@given(rolling_cases())
def test_rolling_refuses_only_within_one_bucket_and_retry_after_is_exact(
    case: tuple[Limit, datetime, list[Step]],
) -> None:
    limit, start, steps = case
    clock = ManualClock(start)
    period, bucket = round(limit.period_seconds * US), round(limit.bucket_seconds * US)

    def counted(admitted: list[tuple[int, int]], at: int) -> int:
        first = (at - period) // bucket
        return sum(c for t, c in admitted if t // bucket >= first)

    def on_refusal(admitted: list[tuple[int, int]], cost: int, answer: Reservation) -> None:
        now = now_us(clock)
        if cost > limit.limit:
            assert math.isinf(answer.retry_after)
            return
        # under-admission is bounded: the refusal is justified by sends in (now - period - bucket, now]
        assert sum(c for t, c in admitted if now - period - bucket < t <= now) + cost > limit.limit
        # retry_after is the first moment a whole oldest bucket leaves and makes room (oracle from the sends)
        moments = sorted({now} | {(t // bucket + 1) * bucket + period for t, _ in admitted if t <= now})
        expected = next(m for m in moments if m >= now and counted(admitted, m) + cost <= limit.limit)
        assert round(answer.retry_after * US) == expected - now

    def on_admit(admitted: list[tuple[int, int]], answer: Reservation) -> None:
        assert answer.remaining == {limit.key: limit.limit - counted(admitted, now_us(clock))}

    run_steps(MemoryLimits(clock), clock, limit, steps, on_refusal, on_admit)


# --- calendar --------------------------------------------------------------------------------------------------

# (zone, local date, its first instant, the next day's first instant, hours long), from the tz database
DST_DAYS = [
    ("America/New_York", "2026-03-08", "2026-03-08T05:00", "2026-03-09T04:00", 23),
    ("America/New_York", "2026-11-01", "2026-11-01T04:00", "2026-11-02T05:00", 25),
    ("Europe/Berlin", "2026-03-29", "2026-03-28T23:00", "2026-03-29T22:00", 23),
    ("Europe/Berlin", "2026-10-25", "2026-10-24T22:00", "2026-10-25T23:00", 25),
    # Chile changes clocks at midnight: on 2026-09-06 local midnight does not exist, the day starts at 01:00
    ("America/Santiago", "2026-04-04", "2026-04-04T03:00", "2026-04-05T04:00", 25),
    ("America/Santiago", "2026-09-06", "2026-09-06T04:00", "2026-09-07T03:00", 23),
    # Lord Howe moves by half an hour
    ("Australia/Lord_Howe", "2026-04-05", "2026-04-04T13:00", "2026-04-05T13:30", 24.5),
    ("Australia/Lord_Howe", "2026-10-04", "2026-10-03T13:30", "2026-10-04T13:00", 23.5),
    # Samoa skipped 2011-12-30 entirely: the 29th is followed by the 31st
    ("Pacific/Apia", "2011-12-29", "2011-12-29T10:00", "2011-12-30T10:00", 24),
    # St John's went back from 00:01 to 23:01: 2010-11-06 ends at 00:00, then comes back for an hour
    ("America/St_Johns", "2010-11-06", "2010-11-06T02:30", "2010-11-07T02:30", 24),
]


def utc_us(text: str) -> int:
    return epoch_micros(datetime.fromisoformat(text).replace(tzinfo=UTC))


@pytest.mark.parametrize(("zone", "day", "first", "after", "hours"), DST_DAYS)
def test_calendar_day_spans_local_midnight_to_local_midnight_on_dst_days(
    zone: str, day: str, first: str, after: str, hours: float
) -> None:
    start, end = utc_us(first), utc_us(after)
    assert end - start == hours * HOUR
    for instant in (start, start + 1, (start + end) // 2, end - 1):
        assert calendar_day(instant, zone) == CalendarDay(day, end)
    assert calendar_day(start - 1, zone).reset_us == start
    assert calendar_day(end, zone).day > day


@pytest.mark.parametrize(("zone", "day", "first", "after", "hours"), DST_DAYS)
def test_calendar_limit_resets_at_local_midnight_on_dst_days(
    zone: str, day: str, first: str, after: str, hours: float
) -> None:
    clock = ManualClock(datetime.fromisoformat(first).replace(tzinfo=UTC))
    backend = MemoryLimits(clock)
    limit = Limit("user", "calendar", 2, timezone=zone)
    assert sync(backend.reserve([limit], 2)).ok
    advance_us(clock, utc_us(after) - utc_us(first) - US)  # one second before the next local midnight
    refused = sync(backend.reserve([limit]))
    assert (refused.ok, refused.denied_by, refused.retry_after) == (False, "user", 1.0)
    usage = sync(backend.usage([limit]))[0]
    assert (usage.used, usage.remaining, usage.next_capacity_in, usage.full_reset_in) == (2, 0, 1.0, 1.0)
    advance_us(clock, US - 1)
    assert not sync(backend.reserve([limit])).ok
    advance_us(clock, 1)
    assert sync(backend.reserve([limit], 2)).ok


def test_a_local_date_that_comes_back_after_midnight_keeps_its_count() -> None:
    zone = "America/St_Johns"  # 2010-11-07 00:01 NDT became 2010-11-06 23:01 NST
    # a day ends when a *later* date begins: the minute of the 7th ends when the 8th begins
    assert calendar_day(utc_us("2010-11-07T02:30:30"), zone) == CalendarDay("2010-11-07", utc_us("2010-11-08T03:30"))
    assert calendar_day(utc_us("2010-11-07T02:31"), zone) == CalendarDay("2010-11-06", utc_us("2010-11-07T03:30"))
    clock = ManualClock(datetime(2010, 11, 7, 2, 0, tzinfo=UTC))  # 23:30 NDT on the 6th
    backend = MemoryLimits(clock)
    limit = Limit("user", "calendar", 3, timezone=zone)
    assert sync(backend.reserve([limit], 2)).remaining == {"user": 1}
    clock.advance(30 * 60 + 30)  # 00:00:30 NDT on the 7th: a new day
    assert sync(backend.reserve([limit], 3)).remaining == {"user": 0}
    clock.advance(30)  # 23:01 NST on the 6th again: the 6th's count is back
    assert sync(backend.reserve([limit], 1)).remaining == {"user": 0}
    refused = sync(backend.reserve([limit], 1))
    assert (refused.ok, refused.retry_after) == (False, 59 * 60.0)
    clock.advance(59 * 60)  # 00:00 NST on the 7th: the 7th's count is back too
    assert not sync(backend.reserve([limit], 1)).ok
    assert sync(backend.usage([limit]))[0].used == 3


def next_local_day(instant: int, zone: ZoneInfo) -> int:
    """Oracle: the first microsecond whose local date is later than at `instant`, from datetimes alone.

    Walks minute by minute (every transition since 1970 falls on a whole minute, and a later date lasts at
    least a minute — St John's once went back from 00:01 to 23:01), then bisects inside the last minute.
    """

    def local(us: int) -> date:
        return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)).astimezone(zone).date()

    today, low = local(instant), instant
    while local(low + 60 * US) <= today:
        low += 60 * US
    high = low + 60 * US
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if local(middle) > today else (middle, high)
    return high


@st.composite
def calendar_cases(draw: st.DrawFn) -> tuple[Limit, datetime, list[Step]]:
    zone, _day, first, _after, _hours = draw(st.sampled_from(DST_DAYS))
    limit = Limit("user", "calendar", draw(st.integers(1, 5)), timezone=zone)
    start = datetime.fromisoformat(first).replace(tzinfo=UTC) - timedelta(microseconds=draw(st.integers(0, 30 * HOUR)))
    gaps = st.one_of(
        st.integers(0, 6 * HOUR), st.sampled_from([0, 1, HOUR, 23 * HOUR, 24 * HOUR, 25 * HOUR, HOUR // 2])
    )
    steps = draw(st.lists(st.tuples(gaps, st.integers(1, 3), st.booleans()), min_size=1, max_size=40))
    return limit, start, steps


@PROPERTY
@given(calendar_cases())
def test_calendar_counts_each_local_date_separately_including_dst_days(
    case: tuple[Limit, datetime, list[Step]],
) -> None:
    limit, start, steps = case
    clock = ManualClock(start)
    zone = ZoneInfo(limit.timezone)
    per_day: dict[date, int] = defaultdict(int)

    def on_refusal(admitted: list[tuple[int, int]], cost: int, answer: Reservation) -> None:
        today = clock.now().astimezone(zone).date()
        assert per_day[today] + cost > limit.limit
        if cost <= limit.limit:
            assert round(answer.retry_after * US) == next_local_day(now_us(clock), zone) - now_us(clock)

    def on_admit(admitted: list[tuple[int, int]], answer: Reservation) -> None:
        today = clock.now().astimezone(zone).date()
        per_day[today] += admitted[-1][1]
        assert per_day[today] <= limit.limit
        assert answer.remaining == {limit.key: limit.limit - per_day[today]}

    run_steps(MemoryLimits(clock), clock, limit, steps, on_refusal, on_admit)


@PROPERTY
@given(
    st.sampled_from(sorted({zone for zone, *_ in DST_DAYS} | {"America/Goose_Bay", "Asia/Kolkata", "UTC"})),
    st.integers(utc_us("2011-01-01T00:00"), utc_us("2030-01-01T00:00")),
)
def test_calendar_day_matches_a_brute_force_oracle(zone: str, instant: int) -> None:
    tz = ZoneInfo(zone)
    expected = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=instant)).astimezone(tz).date()
    assert calendar_day(instant, zone) == CalendarDay(expected.isoformat(), next_local_day(instant, tz))


# --- gcra ------------------------------------------------------------------------------------------------------


@st.composite
def gcra_cases(draw: st.DrawFn) -> tuple[Limit, datetime, list[Step]]:
    period_s = draw(st.sampled_from([1, 60, 3600]))
    limit = Limit("rate", "gcra", draw(st.integers(1, 20)), period_seconds=period_s, burst=draw(st.integers(1, 5)))
    interval = gcra_interval(limit.limit, period_s * US)
    start = datetime(2026, 5, 1, tzinfo=UTC) + timedelta(microseconds=draw(st.integers(0, 10 * interval)))
    gaps = st.one_of(
        st.just(0), st.integers(0, 3 * interval), st.sampled_from([1, interval - 1, interval, interval + 1])
    )
    steps = draw(st.lists(st.tuples(gaps, st.integers(1, 3), st.booleans()), min_size=1, max_size=60))
    return limit, start, steps


@PROPERTY
@given(gcra_cases())
def test_gcra_admits_at_most_burst_plus_delta_over_t_in_any_interval(case: tuple[Limit, datetime, list[Step]]) -> None:
    limit, start, steps = case
    clock = ManualClock(start)
    emission = Fraction(round(limit.period_seconds * US), limit.limit)  # T = period / limit, exactly

    def on_refusal(admitted: list[tuple[int, int]], cost: int, answer: Reservation) -> None:
        assert math.isinf(answer.retry_after) == (cost > limit.burst)

    def on_admit(admitted: list[tuple[int, int]], answer: Reservation) -> None:
        end = admitted[-1][0]
        for begin, _ in admitted:  # every closed interval [begin, end] that starts and ends at a send
            sent = sum(c for t, c in admitted if begin <= t <= end)
            assert sent <= limit.burst + (end - begin) / emission
        assert 0 <= answer.remaining[limit.key] <= limit.burst - admitted[-1][1]

    run_steps(MemoryLimits(clock), clock, limit, steps, on_refusal, on_admit)


def test_gcra_paces_at_the_emission_interval_after_the_burst() -> None:
    clock = ManualClock()
    backend = MemoryLimits(clock)
    limit = Limit("rate", "gcra", 10, period_seconds=1.0, burst=3)  # T = 100 ms
    assert [sync(backend.reserve([limit])).remaining["rate"] for _ in range(3)] == [2, 1, 0]
    refused = sync(backend.reserve([limit]))
    assert (refused.ok, refused.retry_after) == (False, 0.1)
    clock.advance(0.1)
    assert sync(backend.reserve([limit])).ok
    assert not sync(backend.reserve([limit])).ok
    usage = sync(backend.usage([limit]))[0]
    assert usage == Usage("rate", limit=3, used=3, remaining=0, next_capacity_in=0.1, full_reset_in=0.3)
    clock.advance(0.3)
    assert sync(backend.usage([limit]))[0].used == 0


# --- restoring counters after a restart -----------------------------------------------------------------------


@PROPERTY
@given(
    st.lists(st.tuples(st.integers(0, 4 * HOUR), st.integers(1, 3)), min_size=1, max_size=40),
    st.integers(0, 30 * HOUR),
    st.sampled_from(["America/New_York", "Europe/Berlin", "UTC"]),
)
def test_recording_the_admitted_sends_rebuilds_the_same_counters(
    steps: list[tuple[int, int]], later: int, zone: str
) -> None:
    clock = ManualClock(datetime(2026, 10, 31, 12, tzinfo=UTC))
    limits = [
        Limit("ws", "rolling", 20),
        Limit("user", "calendar", 12, timezone=zone),
        Limit("rate", "gcra", 30, period_seconds=3600.0, burst=6),
    ]
    original = MemoryLimits(clock)
    sent: list[tuple[datetime, int]] = []
    for gap, cost in steps:
        advance_us(clock, gap)
        if sync(original.reserve(limits, cost)).ok:
            sent.append((clock.now(), cost))
    advance_us(clock, later)
    restarted = MemoryLimits(clock)
    for at, cost in sent:
        sync(restarted.record(limits, cost, at))
    assert sync(restarted.usage(limits)) == sync(original.usage(limits))
    for cost in (1, 3):
        assert without_token(sync(restarted.reserve(limits, cost))) == without_token(
            sync(original.reserve(limits, cost))
        )


def without_token(answer: Reservation) -> Reservation:
    return Reservation(answer.ok, None, answer.denied_by, answer.retry_after, answer.remaining)

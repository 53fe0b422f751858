"""The pure breaker: every transition rule with pinned numbers (default settings unless a test says otherwise)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from relay.health import (
    BreakerSettings,
    BreakerState,
    current,
    eject_allowed,
    open_duration,
    record_failure,
    record_success,
    try_admit,
)

S = BreakerSettings()
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, a multiple of the 10 s bucket
FRESH = BreakerState()


def fail(
    state: BreakerState, now: float, times: int = 1, *, may_eject: bool = True, s: BreakerSettings = S
) -> BreakerState:
    for _ in range(times):
        state = record_failure(state, s, now, "503 upstream", may_eject)
    return state


def ok(state: BreakerState, now: float, times: int = 1, s: BreakerSettings = S) -> BreakerState:
    for _ in range(times):
        state = record_success(state, s, now)
    return state


def opened(k_before: int = 0, now: float = T0) -> BreakerState:
    """A breaker that just opened at `now` after `k_before` earlier ejections."""
    return fail(replace(FRESH, ejections=k_before), now, 5)


def probe_fails(state: BreakerState, owner: str = "a") -> BreakerState:
    assert state.open_until is not None
    admitted, half = try_admit(state, S, state.open_until, owner)
    assert admitted and half.state == "half_open"
    return record_failure(half, S, state.open_until, "probe: 503", instance=owner)


def test_defaults_and_invalid_settings() -> None:
    assert (S.consecutive_failures, S.failure_rate, S.window_seconds, S.min_requests) == (5, 0.5, 60.0, 20)
    assert (S.base_open_seconds, S.max_open_seconds, S.decay_seconds, S.probe_timeout_seconds) == (30, 600, 300, 60)
    assert S.bucket_seconds == 10.0
    with pytest.raises(ValueError, match="consecutive_failures") as info:
        BreakerSettings(consecutive_failures=0, failure_rate=1.5, max_open_seconds=10.0)
    assert "failure_rate" in str(info.value) and "max_open_seconds" in str(info.value)
    with pytest.raises(ValueError, match="probe_timeout_seconds must be positive"):
        BreakerSettings(probe_timeout_seconds=0)


def test_opens_exactly_at_the_fifth_consecutive_failure() -> None:
    four = fail(FRESH, T0, 4)
    assert (four.state, four.consecutive, four.last_error) == ("closed", 4, "503 upstream")
    assert fail(ok(four, T0), T0, 4).state == "closed"  # a success resets the run
    state = fail(four, T0 + 1)
    assert (state.state, state.ejections, state.opened_at, state.open_until) == ("open", 1, T0 + 1, T0 + 31)
    assert (state.consecutive, state.window, state.last_change, state.healthy_since) == (0, (), T0 + 1, None)


def test_closed_admits_everything_without_changing_the_state() -> None:
    state = fail(FRESH, T0, 4)
    assert try_admit(state, S, T0, "a") == (True, state)


def test_open_time_doubles_per_ejection_and_is_capped() -> None:
    assert [open_duration(S, k) for k in range(7)] == [30, 60, 120, 240, 480, 600, 600]
    assert open_duration(S, 10_000) == 600  # no overflow
    state, seen = opened(), []
    for _ in range(7):
        assert state.open_until is not None and state.opened_at is not None
        seen.append((state.ejections, state.open_until - state.opened_at))
        state = probe_fails(state)
    assert seen == [(1, 30), (2, 60), (3, 120), (4, 240), (5, 480), (6, 600), (7, 600)]


def test_nothing_is_admitted_before_open_until_then_exactly_one_probe() -> None:
    state = opened()  # open until T0 + 30
    for instance in ("a", "b"):
        assert try_admit(state, S, T0 + 29.999, instance) == (False, state)
    admitted, half = try_admit(state, S, T0 + 30, "a")
    assert admitted
    assert (half.state, half.probe_owner, half.probe_until, half.last_change) == ("half_open", "a", T0 + 90, T0 + 30)
    for instance in ("b", "a"):  # the owner too: the probe is one send
        assert try_admit(half, S, T0 + 89.999, instance) == (False, half)


def test_a_probe_that_times_out_goes_to_the_next_caller() -> None:
    _, half = try_admit(opened(), S, T0 + 30, "a")
    admitted, again = try_admit(half, S, T0 + 90, "b")
    assert admitted and (again.state, again.probe_owner, again.probe_until) == ("half_open", "b", T0 + 150)
    late = record_success(again, S, T0 + 91, instance="a")  # the first probe's owner lost it
    assert late == again
    assert record_success(again, S, T0 + 91, instance="b").state == "closed"


def test_probe_success_closes_and_resets_the_counters() -> None:
    _, half = try_admit(opened(k_before=2), S, T0 + 120, "a")
    closed = record_success(half, S, T0 + 121, instance="a")
    assert (closed.state, closed.ejections, closed.consecutive, closed.window) == ("closed", 3, 0, ())
    assert (closed.probe_owner, closed.probe_until, closed.healthy_since, closed.last_change) == (
        None,
        None,
        T0 + 121,
        T0 + 121,
    )
    assert closed.last_error == "503 upstream"  # kept for display


def test_probe_failure_reopens_longer() -> None:
    state = probe_fails(opened())
    assert (state.state, state.ejections, state.opened_at, state.open_until) == ("open", 2, T0 + 30, T0 + 90)
    assert (state.last_error, state.probe_owner) == ("probe: 503", None)


def test_late_results_of_non_probe_sends_never_close_or_reopen() -> None:
    state = opened()
    assert record_success(state, S, T0 + 1) == state  # while open: ignored
    assert record_failure(state, S, T0 + 1, "late", instance="a") == replace(state, last_error="late")
    _, half = try_admit(state, S, T0 + 30, "a")
    for instance in (None, "b"):  # not the probe's owner
        assert record_success(half, S, T0 + 31, instance=instance) == half
        assert record_failure(half, S, T0 + 31, "late", instance=instance) == replace(half, last_error="late")
    assert record_success(half, S, T0 + 31, instance="a").state == "closed"


def test_a_reejection_never_shortens_a_deadline() -> None:
    half = BreakerState(state="half_open", ejections=1, opened_at=T0, open_until=T0 + 500, probe_owner="a")
    state = record_failure(half, S, T0 + 10, "probe: 503", instance="a")
    assert (state.state, state.ejections, state.open_until) == ("open", 2, T0 + 500)  # not T0 + 10 + 60


def test_a_capped_pool_keeps_the_member_closed_and_counting() -> None:
    state = fail(FRESH, T0, 7, may_eject=False)
    assert (state.state, state.consecutive, state.ejections) == ("closed", 7, 0)
    state = fail(state, T0 + 1)
    assert (state.state, state.ejections) == ("open", 1)


def test_the_rate_rule_needs_min_requests_and_a_rate_above_the_threshold() -> None:
    state = FRESH
    for _ in range(6):  # F F S: never 5 in a row, two thirds failing
        state = ok(fail(state, T0, 2), T0)
    state = fail(state, T0)
    assert (state.state, state.consecutive) == ("closed", 1)  # 13 of 19 failed, but 19 < min_requests
    assert fail(state, T0).state == "open"  # 14 of 20
    half = FRESH
    for _ in range(10):
        half = ok(fail(half, T0), T0)
    assert half.state == "closed"  # 10 of 20 is not above 50 %
    assert fail(half, T0).state == "open"  # 11 of 21


def test_the_window_slides_by_bucket() -> None:
    state = FRESH
    for _ in range(10):
        state = ok(fail(state, T0 + 9.9), T0 + 9.9)
    assert (state.window, state.state) == (((176_722_560, 10, 10),), "closed")  # 10 of 20, one bucket
    assert fail(state, T0 + 59.9).state == "open"  # the bucket still counts: 11 of 21
    after = fail(state, T0 + 60)  # it has left the window
    assert (after.state, after.window) == ("closed", ((176_722_566, 0, 1),))
    assert current(state, S, T0 + 60).window == ()


def test_ejections_decay_one_per_decay_seconds_spent_closed() -> None:
    _, half = try_admit(opened(k_before=2), S, T0 + 120, "a")
    closed = record_success(half, S, T0 + 200, instance="a")  # k = 3, closed at T0 + 200
    assert current(closed, S, T0 + 499).ejections == 3
    assert (current(closed, S, T0 + 500).ejections, current(closed, S, T0 + 500).healthy_since) == (2, T0 + 500)
    assert (current(closed, S, T0 + 1100).ejections, current(closed, S, T0 + 1100).healthy_since) == (0, None)
    again = fail(ok(closed, T0 + 850), T0 + 850, 5)  # two decays: k = 1, so 60 s
    assert (again.ejections, again.open_until) == (2, T0 + 910)
    assert current(opened(k_before=3), S, T0 + 10_000).ejections == 4  # no decay while open


def test_errors_are_clipped_for_the_shared_state() -> None:
    assert fail(FRESH, T0).last_error == "503 upstream"
    assert len(record_failure(FRESH, S, T0, "x" * 5000).last_error or "") == 300


def test_json_is_compact_and_round_trips() -> None:
    assert FRESH.to_json() == '{"v":1,"s":"c"}'
    assert BreakerState.from_json(FRESH.to_json()) == FRESH
    full = BreakerState(
        state="half_open",
        ejections=3,
        opened_at=T0 + 0.1,
        open_until=T0 + 120.25,
        consecutive=0,
        window=((1, 2, 3), (4, 5, 6)),
        probe_owner="host-1:412",
        probe_until=T0 + 180.125,
        last_error="550 \u00fcber",
        last_change=T0 + 120.25,
        healthy_since=None,
    )
    assert BreakerState.from_json(full.to_json().encode()) == full
    zero = BreakerState(state="open", opened_at=0.0, open_until=0.0)  # 0.0 is not "absent"
    assert BreakerState.from_json(zero.to_json()) == zero
    for raw in ["", "[]", '{"v":2,"s":"c"}', '{"v":1,"s":"x"}', '{"v":1,"s":"c","w":[[1]]}', '{"v":1,"s":"c","k":"a"}']:
        with pytest.raises(ValueError, match="not a breaker state"):
            BreakerState.from_json(raw)


@pytest.mark.parametrize(
    ("pool", "ejected", "percent", "allowed"),
    [
        (1, 0, 50, False),  # a pool of one never ejects its only member below 100 %
        (1, 0, 99.9, False),
        (1, 0, 100, True),
        (2, 0, 50, True),
        (2, 1, 50, False),
        (2, 1, 100, True),
        (2, 2, 100, False),
        (10, 4, 50, True),  # 5 of 10 after the ejection
        (10, 5, 50, False),
        (10, 9, 100, True),
        (10, 0, 10, True),
        (10, 1, 10, False),
        (3, 0, 100 / 3, True),  # a float cap exactly on the share
        (10, 0, 0, False),
        (0, 0, 100, False),
    ],
)
def test_eject_allowed(pool: int, ejected: int, percent: float, allowed: bool) -> None:
    assert eject_allowed(pool, ejected, percent) is allowed

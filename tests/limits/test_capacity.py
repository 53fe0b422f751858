from __future__ import annotations

from relay.limits.capacity import capacity_from
from relay.limits.types import Usage


def usage(key: str, limit: int, used: int, next_in: float = 0.0, reset_in: float = 0.0) -> Usage:
    return Usage(key, limit, used, limit - used, next_in, reset_in)


def test_the_more_restrictive_limit_decides() -> None:
    capacity = capacity_from(usage("ws", 2000, 500, reset_in=3600), usage("user", 100, 90, reset_in=7200))
    assert (capacity.effective_remaining, capacity.effective_limit) == (10, 100)
    assert capacity.remaining_fraction == 0.1
    assert round(capacity.utilisation, 6) == 0.9
    assert capacity.next_capacity_in == 0.0  # a send fits now
    assert capacity.full_reset_in == 7200


def test_exhausted_reports_when_capacity_returns() -> None:
    capacity = capacity_from(usage("ws", 2000, 2000, next_in=300, reset_in=86_400), usage("user", 100, 10))
    assert (capacity.effective_remaining, capacity.remaining_fraction) == (0, 0.0)
    assert capacity.next_capacity_in == 300


def test_no_workspace_limit_and_pacing() -> None:
    pacing = usage("rate", 5, 5, next_in=0.2)
    capacity = capacity_from(None, usage("user", 100, 0), [pacing])
    assert (capacity.workspace_limit, capacity.effective_limit, capacity.remaining_fraction) == (None, 100, 1.0)
    assert capacity.next_capacity_in == 0.2  # the pacing limit is full for the next 0.2 s

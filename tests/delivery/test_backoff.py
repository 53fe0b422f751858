from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.delivery import RetryPolicy


def test_schedule_doubles_then_caps() -> None:
    policy = RetryPolicy(base_seconds=30, factor=2, max_seconds=600)
    upper = [policy.delay(n, _Fixed(1.0)) for n in range(1, 8)]
    assert upper == [30, 60, 120, 240, 480, 600, 600]
    lower = [policy.delay(n, _Fixed(0.0)) for n in range(1, 8)]
    assert lower == [15, 30, 60, 120, 240, 300, 300]


@settings(derandomize=True)
@given(attempts=st.integers(1, 40), seed=st.integers(0, 2**32))
def test_jitter_stays_within_half_and_full_schedule(attempts: int, seed: int) -> None:
    policy = RetryPolicy(base_seconds=10, factor=2, max_seconds=3600)
    scheduled = min(3600, 10 * 2 ** (attempts - 1))
    assert scheduled / 2 <= policy.delay(attempts, random.Random(seed)) <= scheduled


def test_seeded_jitter_is_repeatable_and_spreads() -> None:
    policy = RetryPolicy()
    first = [policy.delay(3, random.Random(7)) for _ in range(3)]
    assert len(set(first)) == 1
    spread = {round(policy.delay(3, random.Random(seed)), 3) for seed in range(50)}
    assert len(spread) > 40


def test_provider_retry_after_wins_when_longer() -> None:
    policy = RetryPolicy(base_seconds=30)
    assert policy.delay(1, _Fixed(1.0), retry_after=900) == 900
    assert policy.delay(1, _Fixed(1.0), retry_after=5) == 30


def test_exhaustion_by_attempts_and_by_age() -> None:
    policy = RetryPolicy(max_attempts=3, max_age_seconds=3600)
    assert policy.exhausted(2, 10) is None
    assert policy.exhausted(3, 10) == "gave up after 3 attempts"
    assert policy.exhausted(1, 3600) == "gave up after 1.0 hours in the queue"


class _Fixed(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value

"""When to try a message again. Pure: the random source comes in as an argument."""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..config import RetryPolicySettings

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_seconds: float = 30.0
    factor: float = 2.0
    max_seconds: float = 1800.0
    max_attempts: int = 15
    max_age_seconds: float = 172_800.0
    quota_retry_seconds: float = 300.0
    auth_recheck_seconds: float = 300.0

    @classmethod
    def from_settings(cls, settings: RetryPolicySettings) -> RetryPolicy:
        return cls(**settings.model_dump())

    def delay(self, attempts: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Seconds to wait after the `attempts`-th failed try: exponential, capped, with jitter.

        The jitter draws from [d/2, d] ("equal jitter"): retries spread out so a recovering upstream is not
        hit by every deferred message at once, yet the wait never shrinks below half the schedule.
        A provider's own `retry_after` is honoured when it asks for longer.
        """
        exponent = max(0, attempts - 1)
        scheduled = min(self.max_seconds, self.base_seconds * self.factor**exponent)
        jittered = scheduled / 2 + rng.random() * scheduled / 2
        return max(jittered, retry_after or 0.0)

    def exhausted(self, attempts: int, age_seconds: float) -> str | None:
        """Why a message that just failed temporarily must now fail for good, or None."""
        if attempts >= self.max_attempts:
            return f"gave up after {attempts} attempts"
        if age_seconds >= self.max_age_seconds:
            return f"gave up after {age_seconds / 3600:.1f} hours in the queue"
        return None

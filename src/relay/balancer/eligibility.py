"""Eligibility, applied before any strategy (issue 5, scope 4): which members may be picked at all, and why not.

A member is eligible when it is enabled, has weight > 0, is healthy, may send for this sender, and has
remaining capacity: `remaining_fraction > 0` and `remaining_fraction >= min_capacity_threshold` ("under the
threshold" is skipped; exactly at it is kept). One pass, O(n), order preserved.
"""

from __future__ import annotations

from collections.abc import Sequence

from .types import Candidate

__all__ = [
    "BELOW_THRESHOLD",
    "DISABLED",
    "NO_CAPACITY",
    "SENDER_NOT_ALLOWED",
    "UNHEALTHY",
    "ZERO_WEIGHT",
    "eligible",
    "exclusion_reason",
]

DISABLED = "disabled"
ZERO_WEIGHT = "zero_weight"
UNHEALTHY = "unhealthy"
SENDER_NOT_ALLOWED = "sender_not_allowed"
NO_CAPACITY = "no_capacity"
BELOW_THRESHOLD = "below_threshold"


def exclusion_reason(c: Candidate) -> str | None:
    """The first rule `c` breaks, in the order above, or None when it is eligible."""
    if not c.enabled:
        return DISABLED
    if not c.weight > 0:  # also catches NaN
        return ZERO_WEIGHT
    if not c.healthy:
        return UNHEALTHY
    if not c.sender_allowed:
        return SENDER_NOT_ALLOWED
    if not c.remaining_fraction > 0:
        return NO_CAPACITY
    if not c.remaining_fraction >= c.min_capacity_threshold:
        return BELOW_THRESHOLD
    return None


def eligible(candidates: Sequence[Candidate]) -> tuple[list[Candidate], dict[str, str]]:
    """Split `candidates` into the eligible ones (in order) and workspace id → reason for the rest."""
    kept: list[Candidate] = []
    excluded: dict[str, str] = {}
    for c in candidates:
        fraction = c.remaining_fraction
        if (
            c.enabled
            and c.weight > 0
            and c.healthy
            and c.sender_allowed
            and fraction > 0
            and fraction >= c.min_capacity_threshold
        ):
            kept.append(c)
        else:
            reason = exclusion_reason(c)
            assert reason is not None, "the fast check and exclusion_reason must agree"
            excluded[c.workspace_id] = reason
    return kept, excluded

"""Which limits apply to one send: a workspace's `rate_limits` and the sender, as `Limit` values. No I/O.

Every process builds the same keys from the same config, so they share counters in Redis.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..config import RateLimits
from .capacity import Capacity, capacity_from
from .types import Limit, Usage

__all__ = ["capacity_of", "cost_of", "limits_for", "user_limit"]

_DAY = 86_400.0


def user_limit(rate_limits: RateLimits, sender: str, default_per_user_daily: int) -> int:
    """`custom_user_limits[email]` > `per_user_daily` > the global default (the previous relay's precedence)."""
    custom = rate_limits.custom_user_limits.get(sender.strip().lower())
    if custom is not None:
        return custom
    if rate_limits.per_user_daily is not None:
        return rate_limits.per_user_daily
    return default_per_user_daily


def limits_for(
    workspace_id: str, rate_limits: RateLimits, sender: str, default_per_user_daily: int, cost: int = 1
) -> list[Limit]:
    """The workspace limit (if any), the sender's limit, then pacing limits, in the order they are checked.

    Pacing limits admit a burst of at least `cost`, so a message counted per recipient is paced, never refused
    for good because it has more recipients than the per-second rate.
    """

    def daily(key: str, limit: int) -> Limit:
        if rate_limits.window == "calendar_day":
            return Limit(key, "calendar", limit, timezone=rate_limits.reset_timezone)
        return Limit(key, "rolling", limit, period_seconds=_DAY)

    limits = []
    if rate_limits.workspace_daily:  # 0 or absent: no workspace limit, as in the previous relay
        limits.append(daily(f"ws:{workspace_id}", rate_limits.workspace_daily))
    per_user = user_limit(rate_limits, sender, default_per_user_daily)
    limits.append(daily(f"user:{workspace_id}:{sender.strip().lower()}", per_user))
    for suffix, rate, period in (("s", rate_limits.per_second, 1.0), ("m", rate_limits.per_minute, 60.0)):
        if rate:
            limits.append(
                Limit(f"rate:{workspace_id}:{suffix}", "gcra", rate, period_seconds=period, burst=max(rate, cost))
            )
    return limits


def cost_of(rate_limits: RateLimits, recipients: int) -> int:
    """What one send counts: 1 per message, or 1 per recipient with `count_by: recipient`."""
    return max(1, recipients) if rate_limits.count_by == "recipient" else 1


def capacity_of(limits: Sequence[Limit], usages: Sequence[Usage]) -> Capacity:
    """The `Capacity` of one (workspace, sender) from `limits_for`'s limits and their usage, in the same order."""
    workspace: Usage | None = None
    user: Usage | None = None
    pacing: list[Usage] = []
    for limit, usage in zip(limits, usages, strict=True):
        if limit.kind == "gcra":
            pacing.append(usage)
        elif limit.key.startswith("ws:"):
            workspace = usage
        else:
            user = usage
    assert user is not None, "limits_for always includes the sender's limit"
    return capacity_from(workspace, user, pacing)

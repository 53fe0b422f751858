"""Capacity of one (workspace, sender): what the load balancer reads. Pure: it combines `Usage` values."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .types import Usage

__all__ = ["Capacity", "capacity_from"]


@dataclass(frozen=True, slots=True)
class Capacity:
    """The more restrictive of the workspace and sender limits decides (PRD "use the more restrictive limit").

    `remaining_fraction` is effective remaining / effective limit (1.0 when no daily limit applies);
    `next_capacity_in` is when at least one more send fits; `full_reset_in` when every counter is back to zero.
    """

    workspace_remaining: int | None
    workspace_limit: int | None
    user_remaining: int
    user_limit: int
    effective_remaining: int
    effective_limit: int
    remaining_fraction: float
    utilisation: float
    next_capacity_in: float
    full_reset_in: float


def capacity_from(workspace: Usage | None, user: Usage, pacing: Sequence[Usage] = ()) -> Capacity:
    """Combine the workspace's daily usage (None when it has no limit), the sender's, and any pacing limits."""
    pairs = [(u.remaining, u.limit) for u in (workspace, user) if u is not None]
    effective_remaining, effective_limit = min(pairs)  # the tighter one: least remaining, then smaller limit
    fraction = effective_remaining / effective_limit if effective_limit > 0 else 0.0
    waits = [u.next_capacity_in for u in (workspace, user, *pacing) if u is not None and u.remaining <= 0]
    return Capacity(
        workspace_remaining=workspace.remaining if workspace else None,
        workspace_limit=workspace.limit if workspace else None,
        user_remaining=user.remaining,
        user_limit=user.limit,
        effective_remaining=effective_remaining,
        effective_limit=effective_limit,
        remaining_fraction=fraction,
        utilisation=1.0 - fraction if effective_limit > 0 else 1.0,
        next_capacity_in=max(waits, default=0.0),
        full_reset_in=max(u.full_reset_in for u in (workspace, user) if u is not None),
    )

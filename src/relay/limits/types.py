"""Values of the limits package: what a limit is, what a reservation answers, how much is left."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Limit", "LimitKind", "Reservation", "Usage"]

# rolling: at most `limit` in any `period_seconds` (Gmail's rolling 24 h), counted in buckets of
#          `bucket_seconds`; conservative: it never admits more than the limit, and may under-admit by
#          at most one bucket's worth at the window's old edge.
# calendar: at most `limit` per local calendar day in `timezone` (IANA), reset at local midnight, DST-correct.
# gcra: pacing (per second / per minute): emission interval `period_seconds / limit`, burst `burst`.
LimitKind = Literal["rolling", "calendar", "gcra"]


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit on one counter. `key` names the counter; every process must build the same key."""

    key: str  # e.g. "ws:gmail-1" or "user:gmail-1:brian@invite.com" or "rate:gmail-1:s"
    kind: LimitKind
    limit: int
    period_seconds: float = 86_400.0
    bucket_seconds: float = 300.0  # rolling only
    timezone: str = "UTC"  # calendar only
    burst: int = 1  # gcra only


@dataclass(frozen=True, slots=True)
class Reservation:
    """The answer to reserve(): all limits took `cost`, or none did.

    When `ok`, `token` identifies the reservation for `release()`. When not, `denied_by` names the first
    limit that refused and `retry_after` says when that limit will next have room for `cost`.
    """

    ok: bool
    token: str | None = None
    denied_by: str | None = None
    retry_after: float = 0.0
    remaining: dict[str, int] = field(default_factory=dict)  # after this reservation, per limit key


@dataclass(frozen=True, slots=True)
class Usage:
    """One counter right now, for capacity snapshots and `relay limits show`."""

    key: str
    limit: int
    used: int
    remaining: int
    next_capacity_in: float  # seconds until at least one more send fits (0 if one fits now)
    full_reset_in: float  # seconds until the counter is back to zero

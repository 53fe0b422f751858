"""The capacity gate: reserve against every rate limit before a send, give it back only when the send
certainly did not happen.

Mechanism only: which limits apply comes from `limits.policy` (through the `policy` callable), how they
are counted from the `LimitBackend`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from ..limits.base import LimitBackend
from ..limits.types import Limit
from ..providers import Outcome

__all__ = ["Admission", "CapacityGate", "LimitPolicy", "certainly_refused"]

log = structlog.get_logger(__name__)

# (workspace id, sender, number of recipients) -> (the limits to check, the cost of this send)
LimitPolicy = Callable[[str, str, int], tuple[Sequence[Limit], int]]


@dataclass(frozen=True, slots=True)
class Admission:
    ok: bool
    token: str | None = None
    wait: float = 0.0  # when refused: seconds until the message should be tried again
    reason: str = ""
    never: bool = False  # refused for good: this send can never fit the limit (cost above it, or a limit of 0)
    probe: str | None = None  # this send is the workspace's half-open probe (its breaker token)


class CapacityGate:
    def __init__(self, backend: LimitBackend, policy: LimitPolicy, *, unavailable_wait: float = 5.0) -> None:
        self._backend = backend
        self._policy = policy
        self._unavailable_wait = unavailable_wait

    async def admit(self, workspace_id: str, sender: str, recipients: int) -> Admission:
        """Reserve capacity for one send. Fails closed: if the counters cannot be reached, nothing is sent."""
        limits, cost = self._policy(workspace_id, sender, recipients)
        if not limits:
            return Admission(True)
        try:
            reservation = await self._backend.reserve(limits, cost)
        except Exception as exc:
            log.error("limits.unavailable", workspace_id=workspace_id, error=f"{type(exc).__name__}: {exc}")
            return Admission(
                False,
                wait=self._unavailable_wait,
                reason=f"rate limits unavailable ({type(exc).__name__}); nothing is sent until they return",
            )
        if reservation.ok:
            return Admission(True, token=reservation.token)
        if math.isinf(reservation.retry_after):
            return Admission(False, never=True, reason=f"limit {reservation.denied_by} can never admit this send")
        return Admission(
            False,
            wait=max(reservation.retry_after, 0.001),
            reason=f"limit {reservation.denied_by} reached; capacity returns in {reservation.retry_after:.0f} s",
        )

    async def release(self, admission: Admission) -> None:
        """Give back a reservation whose send will not happen (the breaker refused it after the reservation)."""
        if admission.token is None:
            return
        try:
            await self._backend.release(admission.token)
        except Exception as exc:  # the count stays: conservative
            log.warning("limits.release_failed", error=f"{type(exc).__name__}: {exc}")

    async def settle(self, admission: Admission, outcome: Outcome, provider_kind: str) -> None:
        """Keep the reservation unless the provider certainly did not take the message."""
        if admission.token is None or not certainly_refused(outcome, provider_kind):
            return
        try:
            await self._backend.release(admission.token)
        except Exception as exc:  # the count stays: conservative
            log.warning("limits.release_failed", error=f"{type(exc).__name__}: {exc}")


_SMTP_LIKE = frozenset({"smtp", "sandbox"})


def certainly_refused(outcome: Outcome, provider_kind: str) -> bool:
    """Whether the provider said no in a way that proves it did not take the message.

    SMTP: any 4xx/5xx reply (the server answered; a message it refused is not queued there). HTTP APIs: a 4xx
    other than 408 (a timeout by another name), or a named API error that refuses (Mandrill's Invalid_Key,
    ValidationError). A 5xx, a timeout or a dropped connection may hide an accepted message: it stays counted,
    so a limit may be under-used after such an answer, never exceeded.
    """
    if outcome.kind == "sent" or outcome.status is None:
        return False
    if not outcome.status.isdigit():
        return outcome.kind in ("auth", "permanent")
    code = int(outcome.status)
    if provider_kind in _SMTP_LIKE:
        return 400 <= code < 600
    return 400 <= code < 500 and code != 408

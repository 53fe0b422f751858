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

__all__ = ["Admission", "CapacityGate", "LimitPolicy"]

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

    async def settle(self, admission: Admission, outcome: Outcome) -> None:
        """Keep the reservation unless the provider certainly did not take the message.

        Certain means the provider answered with a refusal (an SMTP reply or an HTTP status): then the count
        is given back. A send with no answer (timeout, dropped connection) may have gone out, so it stays
        counted: the limit may be under-used after a timeout, never exceeded.
        """
        if admission.token is None or outcome.kind == "sent" or outcome.status is None:
            return
        try:
            await self._backend.release(admission.token)
        except Exception as exc:  # the count stays: conservative
            log.warning("limits.release_failed", error=f"{type(exc).__name__}: {exc}")

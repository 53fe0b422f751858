"""Errors of the limits package. Each one names what the caller must do."""

from __future__ import annotations

from relay.errors import RelayError

__all__ = ["LimitsUnavailableError"]


class LimitsUnavailableError(RelayError):
    """The shared limits store did not answer (refused, timed out, or failed the script): fail closed.

    Nothing may be sent on the strength of a reservation that raised this. A timeout can leave the reservation
    counted on the server even though the caller never learns its token; that only ever under-uses a limit,
    it never exceeds one. `reason` is short, does no I/O, names no secrets, and may be shown on /readyz.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)

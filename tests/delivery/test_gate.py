"""The capacity gate gives a reservation back only when the provider certainly did not take the message."""

from __future__ import annotations

import pytest

from relay.clock import ManualClock
from relay.config import RateLimits
from relay.delivery import CapacityGate, certainly_refused
from relay.limits import Limit, MemoryLimits
from relay.limits.policy import limits_for
from relay.providers import Outcome

LIMIT = Limit("user:ws:a@b.org", "rolling", 1)


@pytest.mark.parametrize(
    ("outcome", "kind", "released"),
    [
        (Outcome("retry", "451", "4.3.0 try later"), "smtp", True),
        (Outcome("permanent", "550", "5.1.1 no such user"), "smtp", True),
        (Outcome("retry", None, "connection lost"), "smtp", False),  # may have been accepted
        (Outcome("retry", "503", "sandbox failure"), "sandbox", True),
        (Outcome("permanent", "400", "invalid address"), "mailgun", True),
        (Outcome("quota", "429", "rate limited"), "mailgun", True),
        (Outcome("retry", "408", "request timeout"), "gmail", False),  # a timeout by another name
        (Outcome("retry", "502", "bad gateway"), "gmail", False),
        (Outcome("retry", "504", "gateway timeout"), "mailgun", False),
        (Outcome("auth", "Invalid_Key", "Invalid API key"), "mandrill", True),
        (Outcome("retry", "GeneralError", "try later"), "mandrill", False),
        (Outcome("retry", "200", "unexpected answer"), "mandrill", False),
        (Outcome("sent", "250", "ok"), "smtp", False),
    ],
)
async def test_release_only_on_a_certain_refusal(outcome: Outcome, kind: str, released: bool) -> None:
    assert certainly_refused(outcome, kind) == released
    backend = MemoryLimits(ManualClock())
    gate = CapacityGate(backend, lambda ws, sender, n: ([LIMIT], 1))
    admission = await gate.admit("ws", "a@b.org", 1)
    assert admission.ok
    await gate.settle(admission, outcome, kind)
    [usage] = await backend.usage([LIMIT])
    assert usage.used == (0 if released else 1)


async def test_fails_closed_when_the_counters_are_unreachable() -> None:
    class Down(MemoryLimits):
        async def reserve(self, limits: object, cost: int = 1) -> object:  # type: ignore[override]
            raise ConnectionError("redis is gone")

    admission = await CapacityGate(Down(), lambda ws, s, n: ([LIMIT], 1), unavailable_wait=5).admit("ws", "a@b.org", 1)
    assert (admission.ok, admission.wait) == (False, 5)
    assert admission.reason.startswith("rate limits unavailable (ConnectionError)")


async def test_pacing_admits_a_message_with_more_recipients_than_the_rate() -> None:
    rate = RateLimits(per_second=5, count_by="recipient", per_user_daily=1000)
    backend = MemoryLimits(ManualClock())
    gate = CapacityGate(backend, lambda ws, sender, n: (limits_for(ws, rate, sender, 2000, n), n))
    assert (await gate.admit("ws", "a@b.org", 6)).ok  # paced, not refused for good
    second = await gate.admit("ws", "a@b.org", 6)
    assert not second.ok
    assert not second.never

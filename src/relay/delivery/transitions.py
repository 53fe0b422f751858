"""What a provider's answer means for the message: sent, deferred until when, or failed. Pure."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from ..providers import Outcome
from ..store import Deferred, Failed, QueuedMessage, Sent, Transition
from .backoff import RetryPolicy

__all__ = ["refusals", "summary", "transition_for"]


def transition_for(
    message: QueuedMessage,
    outcome: Outcome,
    now: datetime,
    policy: RetryPolicy,
    rng: random.Random,
    *,
    counted: bool = True,
    earlier_failures: int = 0,
) -> Transition:
    """The message's next state after `outcome`. `earlier_failures`: temporary failures of this same delivery
    pass before this outcome (failover), which count towards `max_attempts` like any other."""
    failures = message.temp_failures + earlier_failures + (1 if counted and outcome.kind == "retry" else 0)
    age = (now - message.created_at).total_seconds()
    text = summary(outcome)
    match outcome.kind:
        case "sent":
            if not outcome.retry_recipients:
                return Sent(refusals(outcome))
            delay = policy.delay(failures + 1, rng, outcome.retry_after)
            return Deferred(
                now + timedelta(seconds=delay), "some recipients deferred: " + text, outcome.retry_recipients
            )
        case "permanent":
            return Failed(text)
        case "quota" | "auth":
            if age >= policy.max_age_seconds:
                return Failed(f"gave up after {age / 3600:.1f} hours in the queue: {text}")
            wait = policy.quota_retry_seconds if outcome.kind == "quota" else policy.auth_recheck_seconds
            return Deferred(now + timedelta(seconds=max(wait, outcome.retry_after or 0)), text)
        case _:
            exhausted = policy.exhausted(failures, age)
            if exhausted:
                return Failed(f"{exhausted}: {text}")
            delay = policy.delay(max(failures, 1), rng, outcome.retry_after)
            return Deferred(now + timedelta(seconds=delay), text, outcome.retry_recipients or None)


def summary(outcome: Outcome) -> str:
    """`451 4.3.0 try later`: the provider's status and text, as stored in `last_error`."""
    return f"{outcome.status} {outcome.response}".strip() if outcome.status else outcome.response


def refusals(outcome: Outcome) -> str | None:
    """`refused for good: a@x.org: 550 5.1.1 …` for recipients a partly successful send could not reach."""
    if not outcome.rejected_recipients:
        return None
    return "refused for good: " + "; ".join(f"{rcpt}: {why}" for rcpt, why in outcome.rejected_recipients.items())

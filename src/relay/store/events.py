"""The events Relay emits (issue 8), as rows of the transactional outbox `events`.

Each event is built here from the change it describes and inserted in that change's transaction: a message
accepted (`message.queued`, with the message), a delivery pass recorded (`message.sent|deferred|failed`, per
recipient `message.bounced`, `load_balancing.workspace_selected` and `load_balancing.pool_exhausted`, with the
attempts), a configuration change (`config.changed`, with its audit entry), a health change
(`workspace.health_changed`). The body of every event is `{"event", "timestamp", "data"}`; the two PRD events
carry exactly the PRD's fields.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from ..clock import Clock
from ..mime import header_values
from .database import Database
from .tables import events
from .timestamps import to_db
from .types import AttemptRecord, Deferred, Failed, NewMessage, QueuedMessage, Sent, Transition

__all__ = [
    "EVENT_TYPES",
    "EventLog",
    "completion_events",
    "event_row",
    "insert_events",
    "pool_exhausted_event",
    "queued_event",
    "timestamp",
]

EVENT_TYPES = (
    "message.queued",
    "message.sent",
    "message.deferred",
    "message.failed",
    "message.bounced",
    "message.delivered",
    "message.complained",
    "message.unsubscribed",
    "load_balancing.workspace_selected",
    "load_balancing.pool_exhausted",
    "workspace.health_changed",
    "config.changed",
)


def timestamp(at: datetime) -> str:
    """The PRD's form: `2025-08-22T10:30:00Z` (UTC, whole seconds)."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_row(event: str, at: datetime, data: dict[str, Any], message_id: str | None = None) -> dict[str, Any]:
    return {
        "type": event,
        "message_id": message_id,
        "occurred_at": to_db(at),
        "payload": {"event": event, "timestamp": timestamp(at), "data": data},
    }


async def insert_events(connection: Any, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await connection.execute(events.insert(), list(rows))


def subject_of(raw: bytes) -> str:
    """The message's Subject (decoded as far as the header is plain), for consumers that show it."""
    values = header_values(raw, "Subject")
    return values[0].strip() if values else ""


class EventLog:
    """Events about changes that live outside the database (the circuit breakers in Redis or memory): written in a
    transaction of their own, as soon as the change is known."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def emit(self, event: str, data: dict[str, Any], message_id: str | None = None) -> None:
        async with self._db.begin() as connection:
            await insert_events(connection, [event_row(event, self._clock.now(), data, message_id)])


def queued_event(message: NewMessage) -> dict[str, Any]:
    return event_row(
        "message.queued",
        message.received_at,
        {
            "message_id": message.id,
            "sender_email": message.mail_from,
            "subject": subject_of(message.raw),
            "recipients": list(message.rcpt_to),
            "source": message.source,
            "size": len(message.raw),
            "metadata": message.metadata,
        },
        message.id,
    )


def completion_events(
    message: QueuedMessage, attempts: Sequence[AttemptRecord], transition: Transition, at: datetime
) -> list[dict[str, Any]]:
    """The events of one recorded delivery pass, in the order they happened: per attempt the pool's choice (or its
    exhaustion) and per-recipient bounces, then the message's new state."""
    rows: list[dict[str, Any]] = []
    for attempt in attempts:
        rows += _attempt_events(message, attempt)
    last = attempts[-1] if attempts else None
    base: dict[str, Any] = {
        "message_id": message.id,
        "sender_email": message.mail_from,
        "subject": subject_of(message.raw),
        "workspace_id": last.workspace_id if last else None,
        "pool_id": last.pool_id if last else None,
        "attempt": message.attempts + len(attempts),
        "outcome": last.outcome if last else None,
        "provider_status": last.provider_status if last else None,
        "metadata": message.metadata,
    }
    match transition:
        case Sent(note=note):
            data = {
                **base,
                "recipients": list(message.pending_rcpts or message.rcpt_to),
                "provider_message_id": last.provider_message_id if last else None,
                "sent_as": last.sent_as if last else None,
                "note": note,
            }
            rows.append(event_row("message.sent", at, data, message.id))
        case Deferred(until=until, reason=reason, pending_rcpts=pending):
            recipients = list(pending if pending is not None else (message.pending_rcpts or message.rcpt_to))
            data = {**base, "recipients": recipients, "reason": reason, "next_attempt_at": timestamp(until)}
            rows.append(event_row("message.deferred", at, data, message.id))
        case Failed(reason=reason):
            data = {**base, "recipients": list(message.pending_rcpts or message.rcpt_to), "reason": reason}
            rows.append(event_row("message.failed", at, data, message.id))
    return rows


def _attempt_events(message: QueuedMessage, attempt: AttemptRecord) -> Iterable[dict[str, Any]]:
    selection = attempt.selection or {}
    if "fallback_action" in selection:
        yield event_row(
            "load_balancing.pool_exhausted",
            attempt.started_at,
            {
                "pool_id": selection.get("pool"),
                "sender_email": message.mail_from,
                "available_workspaces": 0,
                "fallback_action": selection["fallback_action"],
            },
            message.id,
        )
    elif attempt.pool_id is not None and attempt.workspace_id is not None:
        yield event_row(
            "load_balancing.workspace_selected",
            attempt.started_at,
            {
                "pool_id": attempt.pool_id,
                "workspace_id": attempt.workspace_id,
                "sender_email": message.mail_from,
                "selection_score": selection.get("score"),
                "capacity_percentage": selection.get("capacity"),
                "selection_reason": selection.get("strategy"),
            },
            message.id,
        )
    for recipient, reason in attempt.rejected_recipients.items():
        yield event_row(
            "message.bounced",
            attempt.finished_at,
            {
                "message_id": message.id,
                "sender_email": message.mail_from,
                "subject": subject_of(message.raw),
                "recipient": recipient,
                "workspace_id": attempt.workspace_id,
                "type": "hard",
                "reason": reason,
                "metadata": message.metadata,
            },
            message.id,
        )


def pool_exhausted_event(message: QueuedMessage, pool_id: str, fallback_action: str, at: datetime) -> dict[str, Any]:
    """A pool that had no member for `message` when no attempt follows (it waits)."""
    return event_row(
        "load_balancing.pool_exhausted",
        at,
        {
            "pool_id": pool_id,
            "sender_email": message.mail_from,
            "available_workspaces": 0,
            "fallback_action": fallback_action,
        },
        message.id,
    )

"""Events providers report about mail Relay gave them (issue 8), recorded as Relay events and suppressions.

A provider event names the message by the provider's own id, which Relay recorded on the attempt that handed it
over (`delivery_attempts.provider_message_id`, indexed). `record()` finds the Relay message of every event in
one query and writes, in one transaction, an outbox event keyed by Relay's message id for each event it could
match and a suppression for each recipient the event says to stop sending to. An event that matches no message
(mail the provider sent for someone else on the same account, or a provider's test event) writes no Relay event,
but its recipient is still listed: a hard bounce or a complaint is about the address, whoever sent to it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import structlog

from ..clock import Clock
from .database import Database
from .events import event_row, insert_events
from .suppressions import Suppression, insert_suppressions, suppression_key
from .tables import delivery_attempts, messages

__all__ = ["InboundEvents", "InboundResult", "ProviderEvent"]

log = structlog.get_logger(__name__)

_MAX_DETAIL = 1000


@dataclass(frozen=True, slots=True)
class ProviderEvent:
    """One verified provider event about one recipient, in Relay's terms."""

    provider: str  # the provider kind: "mailgun", "mandrill"
    workspace_id: str | None  # the workspace whose key verified the request
    event: str  # the Relay event: message.delivered | message.bounced | message.complained | message.unsubscribed
    recipient: str
    provider_message_ids: tuple[str, ...]  # every form in which Relay may have recorded the provider's id
    occurred_at: datetime
    suppress: str | None = None  # the suppression reason the event amounts to: hard_bounce, complaint, unsubscribe
    # Put into the event's data: `type` and `reason` of a bounce, the provider's `subject` and `provider_event_id`.
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InboundResult:
    recorded: int  # Relay events written to the outbox
    unmatched: int  # events whose message Relay does not know
    suppressed: list[Suppression]  # recipients newly listed


@dataclass(frozen=True, slots=True)
class _Match:
    message_id: str
    workspace_id: str | None
    mail_from: str
    metadata: dict[str, Any]
    provider_message_id: str


class InboundEvents:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def record(self, events: Sequence[ProviderEvent], suppress_on: Collection[str]) -> InboundResult:
        """Write the events of one provider request; `suppress_on` is the configured reasons that list a
        recipient (`suppression.on`)."""
        now = self._clock.now()
        rows: list[dict[str, Any]] = []
        entries: list[Suppression] = []
        unmatched = 0
        async with self._db.begin() as connection:
            matches = await _matches(connection, events)
            for event in events:
                match = next((matches[i] for i in event.provider_message_ids if i in matches), None)
                listed = event.suppress is not None and event.suppress in suppress_on
                if listed and event.suppress is not None:
                    entries.append(_entry(event, event.suppress, match, now))
                if match is None:
                    unmatched += 1
                    log.info(
                        "inbound.unmatched",
                        provider=event.provider,
                        relay_event=event.event,
                        provider_message_id=event.provider_message_ids[0] if event.provider_message_ids else None,
                    )
                    continue
                rows.append(event_row(event.event, event.occurred_at, _data(event, match, listed), match.message_id))
            added = await insert_suppressions(connection, entries)
            await insert_events(connection, rows)
        return InboundResult(len(rows), unmatched, added)


async def _matches(connection: Any, events: Sequence[ProviderEvent]) -> dict[str, _Match]:
    """Provider message id → the Relay message it was given for, for every id the events name."""
    ids = sorted({i for event in events for i in event.provider_message_ids if i})
    kinds = sorted({event.provider for event in events})
    found: dict[str, _Match] = {}
    for start in range(0, len(ids), 500):
        query = (
            sa.select(
                delivery_attempts.c.provider_message_id,
                delivery_attempts.c.message_id,
                delivery_attempts.c.workspace_id,
                messages.c.mail_from,
                messages.c["metadata"],
            )
            .join(messages, messages.c.id == delivery_attempts.c.message_id)
            .where(
                delivery_attempts.c.provider_message_id.in_(ids[start : start + 500]),
                delivery_attempts.c.provider_kind.in_(kinds),
            )
            .order_by(delivery_attempts.c.id)
        )
        for row in await connection.execute(query):
            found.setdefault(
                row.provider_message_id,
                _Match(row.message_id, row.workspace_id, row.mail_from, row._mapping["metadata"] or {},
                       row.provider_message_id),
            )  # fmt: skip
    return found


def _entry(event: ProviderEvent, reason: str, match: _Match | None, now: datetime) -> Suppression:
    workspace = (match.workspace_id if match else None) or event.workspace_id
    said = event.details.get("reason")
    detail = f"{event.provider} {event.event.removeprefix('message.')}" + (f": {said}" if said else "")
    return Suppression(
        email=suppression_key(event.recipient),  # an over-long address is skipped by insert_suppressions
        reason=reason,
        detail=detail[:_MAX_DETAIL],
        source=f"{event.provider}:{workspace}" if workspace else event.provider,
        message_id=match.message_id if match else None,
        created_at=now,
    )


def _data(event: ProviderEvent, match: _Match, listed: bool) -> dict[str, Any]:
    """The event's data: the fields of Relay's own `message.bounced`, plus what the provider said."""
    details = dict(event.details)
    return {
        "message_id": match.message_id,
        "sender_email": match.mail_from,
        "subject": details.pop("subject", None) or "",
        "recipient": event.recipient,
        "workspace_id": match.workspace_id or event.workspace_id,
        **details,
        "provider": event.provider,
        "provider_message_id": match.provider_message_id,
        "suppressed": listed,
        "metadata": match.metadata,
    }

"""Shared by the inbound-event and suppression tests: what the outbox and the suppression table hold, and an SMTP
RCPT probe."""

from __future__ import annotations

import asyncio
import smtplib
from typing import Any

import sqlalchemy as sa

from relay.runtime import Relay
from relay.store.tables import events, suppressions

INBOUND_EVENTS = ("message.delivered", "message.bounced", "message.complained", "message.unsubscribed")


async def outbox(relay: Relay, types: tuple[str, ...] = INBOUND_EVENTS) -> list[dict[str, Any]]:
    """The outbox rows of `types`, oldest first: type, message_id and the payload."""
    query = sa.select(events.c.type, events.c.message_id, events.c.payload).where(events.c.type.in_(types))
    async with relay.db.read() as connection:
        rows = (await connection.execute(query.order_by(events.c.id))).all()
    return [{"type": r.type, "message_id": r.message_id, "payload": r.payload} for r in rows]


async def listed(relay: Relay) -> dict[str, dict[str, Any]]:
    """The suppression table: email → its row."""
    async with relay.db.read() as connection:
        rows = (await connection.execute(sa.select(suppressions))).all()
    return {r.email: dict(r._mapping) for r in rows}


async def rcpt(relay: Relay, sender: str, recipients: list[str]) -> list[tuple[int, str]]:
    """Open an SMTP session, MAIL FROM `sender`, RCPT TO each recipient: their replies. No DATA."""

    def probe() -> list[tuple[int, str]]:
        with smtplib.SMTP(*relay.smtp_address, timeout=30) as client:
            client.ehlo()
            client.mail(sender)
            replies = [client.rcpt(r) for r in recipients]
            client.rset()
        return [(code, text.decode()) for code, text in replies]

    return await asyncio.to_thread(probe)

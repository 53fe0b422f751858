"""Webhook endpoints and the delivery of outbox events to them (issue 8).

`fan_out` turns new outbox events into one `webhook_deliveries` row per subscribed endpoint (filters and
sampling applied) and marks the events done, in one transaction: every event reaches every endpoint subscribed
when it is fanned out, exactly once. `claim` leases due deliveries like the mail queue does messages — the row's
`next_attempt_at` is the due time while waiting and the lease expiry while being sent, so a process that dies
mid-post only delays the delivery — and never hands out a delivery while an earlier one for the same endpoint and
message is still pending: each endpoint gets each message's events in order.
"""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from ..clock import Clock
from .audit import record_change
from .database import Database, is_deadlock
from .tables import events, webhook_deliveries, webhook_endpoints
from .timestamps import from_db, to_db

__all__ = ["ClaimedDelivery", "DeliveryView", "EndpointRow", "Settlement", "WebhookStore", "sampled", "subscribes"]


@dataclass(frozen=True, slots=True)
class EndpointRow:
    id: str
    url: str
    secret: str | None
    events: tuple[str, ...]
    format: str = "relay"
    workspace_selected_sample: float = 1.0
    enabled: bool = True
    disabled_reason: str | None = None
    failing_since: datetime | None = None
    managed_by: str = "file"
    version: int = 1

    def document(self) -> dict[str, Any]:
        """As the audit log and the API show it: the secret masked."""
        return {
            "id": self.id,
            "url": self.url,
            "secret": "********" if self.secret else None,
            "events": list(self.events),
            "format": self.format,
            "workspace_selected_sample": self.workspace_selected_sample,
            "enabled": self.enabled,
        }


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    id: int
    endpoint_id: str
    event_id: int
    message_id: str | None
    event_type: str
    payload: dict[str, Any]
    attempts: int
    created_at: datetime
    lease_owner: str


@dataclass(frozen=True, slots=True)
class Settlement:
    """What became of one claimed delivery, to record with the others of its pass (`WebhookStore.settle`)."""

    claim: ClaimedDelivery
    values: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DeliveryView:
    id: int
    event_id: int
    event_type: str
    message_id: str | None
    status: str
    attempts: int
    last_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    next_attempt_at: datetime | None


def subscribes(endpoint: EndpointRow, event_type: str) -> bool:
    return endpoint.enabled and any(fnmatch.fnmatchcase(event_type, pattern) for pattern in endpoint.events)


def sampled(endpoint: EndpointRow, event_type: str, event_id: int) -> bool:
    """Whether `workspace_selected` sampling keeps this event for this endpoint: deterministic by event id, so
    every process decides alike."""
    rate = endpoint.workspace_selected_sample
    if event_type != "load_balancing.workspace_selected" or rate >= 1.0:
        return True
    digest = hashlib.sha256(f"{endpoint.id}:{event_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


class WebhookStore:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._claims = itertools.count(1)

    # Endpoints

    async def endpoints(self) -> list[EndpointRow]:
        async with self._db.read() as connection:
            rows = (await connection.execute(sa.select(webhook_endpoints).order_by(webhook_endpoints.c.id))).all()
        return [_endpoint(r) for r in rows]

    async def get(self, endpoint_id: str) -> EndpointRow | None:
        return next((e for e in await self.endpoints() if e.id == endpoint_id), None)

    async def sync_file(self, endpoints: Sequence[EndpointRow]) -> None:
        """Make the file-managed endpoints exactly `endpoints` (API-managed ones are left alone), audited as
        `config-file` where they change."""
        now = self._clock.now()
        async with self._db.begin() as connection:
            current = {r.id: _endpoint(r) for r in (await connection.execute(sa.select(webhook_endpoints))).all()}
            for endpoint in endpoints:
                before = current.get(endpoint.id)
                if before is not None and before.managed_by == "api":
                    continue
                if before is not None and before.disabled_reason is not None and not before.enabled:
                    # Disabled by the dispatcher: a restart is no reason to post to it again (the API re-enables).
                    endpoint = replace(endpoint, enabled=False, disabled_reason=before.disabled_reason)
                if before is not None and _same(before, endpoint):
                    continue
                await _write_endpoint(connection, endpoint, "file", now, exists=before is not None)
                action = "create" if before is None else "update"
                doc = before.document() if before else None
                after = endpoint.document()
                await record_change(connection, to_db(now), "config-file", action, "webhook", endpoint.id, doc, after)
            listed = {e.id for e in endpoints}
            for endpoint_id, before in current.items():
                if endpoint_id not in listed and before.managed_by == "file":
                    await connection.execute(webhook_endpoints.delete().where(webhook_endpoints.c.id == endpoint_id))
                    gone = before.document()
                    await record_change(
                        connection, to_db(now), "config-file", "delete", "webhook", endpoint_id, gone, None
                    )

    async def save(self, endpoint: EndpointRow, *, actor: str, before: EndpointRow | None) -> None:
        now = self._clock.now()
        async with self._db.begin() as connection:
            await _write_endpoint(connection, endpoint, "api", now, exists=before is not None)
            action = "create" if before is None else "update"
            doc = before.document() if before else None
            await record_change(connection, to_db(now), actor, action, "webhook", endpoint.id, doc, endpoint.document())

    async def remove(self, endpoint: EndpointRow, *, actor: str) -> None:
        now = to_db(self._clock.now())
        async with self._db.begin() as connection:
            await connection.execute(webhook_endpoints.delete().where(webhook_endpoints.c.id == endpoint.id))
            # Its pending deliveries go with it; the log of what was delivered stays.
            await connection.execute(
                webhook_deliveries.update()
                .where(webhook_deliveries.c.endpoint_id == endpoint.id, webhook_deliveries.c.status == "pending")
                .values(status="failed", last_error="endpoint deleted", next_attempt_at=None, lease_owner=None)
            )
            await record_change(connection, now, actor, "delete", "webhook", endpoint.id, endpoint.document(), None)

    async def disable(self, endpoint: EndpointRow, reason: str, *, actor: str = "dispatcher") -> None:
        """Stop posting to `endpoint` (it failed for 24 h), audited; its pending deliveries wait for re-enabling."""
        now = self._clock.now()
        async with self._db.begin() as connection:
            await connection.execute(
                webhook_endpoints.update()
                .where(webhook_endpoints.c.id == endpoint.id)
                .values(enabled=False, disabled_reason=reason[:2000], updated_at=to_db(now))
            )
            after = {**endpoint.document(), "enabled": False, "disabled_reason": reason}
            before = endpoint.document()
            await record_change(connection, to_db(now), actor, "disable", "webhook", endpoint.id, before, after)

    async def note_failing(self, endpoint_id: str, since: datetime | None) -> None:
        """Start (a time) or end (None) the endpoint's current run of failures."""
        async with self._db.begin() as connection:
            await connection.execute(
                webhook_endpoints.update()
                .where(webhook_endpoints.c.id == endpoint_id)
                .values(failing_since=to_db(since) if since is not None else None)
            )

    # Deliveries

    async def fan_out(self, endpoints: Sequence[EndpointRow], *, limit: int = 500) -> int:
        """Turn up to `limit` new outbox events into deliveries; returns how many events were fanned out."""
        for attempt in range(3):
            try:
                return await self._fan_out(endpoints, limit)
            except DBAPIError as exc:
                if attempt == 2 or not is_deadlock(exc):
                    raise
        raise AssertionError("unreachable")

    async def _fan_out(self, endpoints: Sequence[EndpointRow], limit: int) -> int:
        now = to_db(self._clock.now())
        query = (
            sa.select(events.c.id, events.c.type, events.c.message_id)
            .where(events.c.fanned_out == sa.false())
            .order_by(events.c.id)
            .limit(limit)
        )
        async with self._db.read() as connection:  # most passes find nothing: no write lock for that
            if (await connection.execute(query.with_only_columns(events.c.id).limit(1))).first() is None:
                return 0
        if self._db.supports_skip_locked:
            query = query.with_for_update(skip_locked=True)
        async with self._db.begin() as connection:
            found = (await connection.execute(query)).all()
            if not found:
                return 0
            rows = [
                {
                    "endpoint_id": endpoint.id,
                    "event_id": event.id,
                    "message_id": event.message_id,
                    "status": "pending",
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                }
                for event in found
                for endpoint in endpoints
                if subscribes(endpoint, event.type) and sampled(endpoint, event.type, event.id)
            ]
            if rows:
                await connection.execute(webhook_deliveries.insert(), rows)
            await connection.execute(
                events.update().where(events.c.id.in_([e.id for e in found])).values(fanned_out=True)
            )
        return len(found)

    async def claim(self, *, owner: str, limit: int, lease_seconds: float) -> list[ClaimedDelivery]:
        for attempt in range(3):
            try:
                return await self._claim(owner, limit, lease_seconds)
            except DBAPIError as exc:
                if attempt == 2 or not is_deadlock(exc):
                    raise
        raise AssertionError("unreachable")

    async def _claim(self, owner: str, limit: int, lease_seconds: float) -> list[ClaimedDelivery]:
        now = self._clock.now()
        token = f"{owner}/{next(self._claims)}"
        d = webhook_deliveries.alias("d")
        earlier = webhook_deliveries.alias("earlier")
        blocked = (
            sa.select(earlier.c.id)
            .where(
                earlier.c.endpoint_id == d.c.endpoint_id,
                earlier.c.message_id == d.c.message_id,
                earlier.c.status == "pending",
                earlier.c.event_id < d.c.event_id,
            )
            .exists()
        )
        # An earlier event of the message not yet fanned out (another process holds it, or it committed after a
        # later one) holds the delivery back too: order per message must not depend on who fans out first.
        unfanned = (
            sa.select(events.c.id)
            .where(events.c.message_id == d.c.message_id, events.c.id < d.c.event_id, events.c.fanned_out == sa.false())
            .exists()
        )
        due = (
            sa.select(d.c.id)
            .where(d.c.status == "pending", d.c.next_attempt_at <= to_db(now), ~blocked, ~unfanned)
            .order_by(d.c.id)
            .limit(limit)
        )
        async with self._db.read() as connection:  # most passes find nothing: no write lock for that
            if (await connection.execute(due.limit(1))).first() is None:
                return []
        if self._db.supports_skip_locked:
            due = due.with_for_update(skip_locked=True)
        async with self._db.begin() as connection:
            ids = list((await connection.execute(due)).scalars())
            if not ids:
                return []
            await connection.execute(
                webhook_deliveries.update()
                .where(webhook_deliveries.c.id.in_(ids))
                .values(next_attempt_at=to_db(now + timedelta(seconds=lease_seconds)), lease_owner=token)
            )
            query = (
                sa.select(webhook_deliveries, events.c.type, events.c.payload)
                .join(events, events.c.id == webhook_deliveries.c.event_id)
                .where(webhook_deliveries.c.id.in_(ids))
                .order_by(webhook_deliveries.c.id)
            )
            rows = (await connection.execute(query)).all()
        return [
            ClaimedDelivery(
                r.id,
                r.endpoint_id,
                r.event_id,
                r.message_id,
                r.type,
                r.payload,
                r.attempts,
                from_db(r.created_at),
                token,
            )
            for r in rows
        ]

    def delivered(self, claim: ClaimedDelivery, status: int) -> Settlement:
        return Settlement(
            claim,
            {
                "status": "delivered",
                "attempts": claim.attempts + 1,
                "last_status": status,
                "last_error": None,
                "next_attempt_at": None,
                "delivered_at": to_db(self._clock.now()),
            },
        )

    def retry(self, claim: ClaimedDelivery, at: datetime, status: int | None, error: str) -> Settlement:
        values = {"attempts": claim.attempts + 1, "last_status": status, "last_error": error[:2000]}
        return Settlement(claim, {**values, "next_attempt_at": to_db(at)})

    def give_up(self, claim: ClaimedDelivery, status: int | None, error: str) -> Settlement:
        values = {"attempts": claim.attempts + 1, "last_status": status, "last_error": error[:2000]}
        return Settlement(claim, {**values, "status": "failed", "next_attempt_at": None})

    async def settle(self, settlements: Sequence[Settlement]) -> int:
        """Record a pass's answers in one transaction (one commit for the lot, not one per post). A delivery whose
        lease was lost meanwhile is left to its new holder. Returns how many were recorded."""
        recorded = 0
        async with self._db.begin() as connection:
            for s in settlements:
                result = await connection.execute(
                    webhook_deliveries.update()
                    .where(
                        webhook_deliveries.c.id == s.claim.id,
                        webhook_deliveries.c.lease_owner == s.claim.lease_owner,
                    )
                    .values(lease_owner=None, **s.values)
                )
                recorded += result.rowcount
        return recorded

    async def deliveries(
        self, endpoint_id: str, *, status: str | None = None, before: int | None = None, limit: int = 100
    ) -> list[DeliveryView]:
        """The endpoint's delivery log, newest first."""
        query = (
            sa.select(webhook_deliveries, events.c.type)
            .join(events, events.c.id == webhook_deliveries.c.event_id)
            .where(webhook_deliveries.c.endpoint_id == endpoint_id)
            .order_by(webhook_deliveries.c.id.desc())
            .limit(limit)
        )
        if status is not None:
            query = query.where(webhook_deliveries.c.status == status)
        if before is not None:
            query = query.where(webhook_deliveries.c.id < before)
        async with self._db.read() as connection:
            rows = (await connection.execute(query)).all()
        return [
            DeliveryView(
                r.id,
                r.event_id,
                r.type,
                r.message_id,
                r.status,
                r.attempts,
                r.last_status,
                r.last_error,
                from_db(r.created_at),
                from_db(r.delivered_at) if r.delivered_at else None,
                from_db(r.next_attempt_at) if r.next_attempt_at and r.status == "pending" else None,
            )
            for r in rows
        ]

    async def prune(self, before: datetime) -> int:
        """Forget events fanned out before `before` and the deliveries of theirs that are settled (the log's
        retention); pending deliveries and their events stay."""
        cutoff = to_db(before)
        async with self._db.begin() as connection:
            settled = await connection.execute(
                webhook_deliveries.delete().where(
                    webhook_deliveries.c.created_at < cutoff, webhook_deliveries.c.status != "pending"
                )
            )
            still_needed = sa.select(webhook_deliveries.c.event_id).where(webhook_deliveries.c.status == "pending")
            await connection.execute(
                events.delete().where(
                    events.c.occurred_at < cutoff, events.c.fanned_out == sa.true(), events.c.id.not_in(still_needed)
                )
            )
        return int(settled.rowcount or 0)

    async def pending_by_endpoint(self) -> dict[str, int]:
        """Every endpoint with its pending deliveries (0 included), in one statement for `/metrics`: the count
        reads the pending rows only (the due index), never the delivery log's settled history."""
        d = webhook_deliveries
        pending = (
            sa.select(sa.func.count())
            .where(d.c.status == "pending", d.c.endpoint_id == webhook_endpoints.c.id)
            .scalar_subquery()
        )
        async with self._db.read() as connection:
            rows = (await connection.execute(sa.select(webhook_endpoints.c.id, pending))).all()
        return {endpoint_id: int(count or 0) for endpoint_id, count in rows}

    async def pending_count(self) -> int:
        async with self._db.read() as connection:
            query = (
                sa.select(sa.func.count())
                .select_from(webhook_deliveries)
                .where(webhook_deliveries.c.status == "pending")
            )
            return int((await connection.execute(query)).scalar() or 0)


def _endpoint(r: Any) -> EndpointRow:
    return EndpointRow(
        id=r.id,
        url=r.url,
        secret=r.secret,
        events=tuple(r.events),
        format=r.format,
        workspace_selected_sample=float(r.workspace_selected_sample),
        enabled=bool(r.enabled),
        disabled_reason=r.disabled_reason,
        failing_since=from_db(r.failing_since) if r.failing_since else None,
        managed_by=r.managed_by,
        version=r.version,
    )


def _same(a: EndpointRow, b: EndpointRow) -> bool:
    keys = ("url", "secret", "events", "format", "workspace_selected_sample", "enabled")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


async def _write_endpoint(connection: Any, e: EndpointRow, managed_by: str, now: datetime, *, exists: bool) -> None:
    values: dict[str, Any] = {
        "url": e.url,
        "secret": e.secret,
        "events": list(e.events),
        "format": e.format,
        "workspace_selected_sample": e.workspace_selected_sample,
        "enabled": e.enabled,
        "disabled_reason": None if e.enabled else e.disabled_reason,
        "managed_by": managed_by,
        "updated_at": to_db(now),
    }
    table = webhook_endpoints
    if exists:
        await connection.execute(
            table.update().where(table.c.id == e.id).values(version=table.c.version + 1, failing_since=None, **values)
        )
    else:
        await connection.execute(table.insert().values(id=e.id, created_at=to_db(now), version=1, **values))

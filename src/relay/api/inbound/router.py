"""`/webhooks/inbound/mailgun` and `/webhooks/inbound/mandrill`: provider events about mail Relay sent, outside
`/api/v1` and without an API key. Each request is authenticated by the provider's own signature, checked against
the key of every workspace of that kind (see `mailgun.py`, `mandrill.py`); its events become Relay events keyed
by Relay's message id, and hard bounces, complaints and unsubscribes (as `suppression.on` says) list the
recipient (`store/inbound.py`).

Answers: 200 once the events are recorded, also for events that match no Relay message or that Relay does not
map (the provider would otherwise retry them for hours); 401 for a missing or wrong signature, a Mailgun
timestamp more than 15 minutes away, or a Mailgun token already used; 400 for a body that is not the provider's
format; 503 when the database could not record them (the provider retries).

No `from __future__ import annotations`: FastAPI reads these annotations at definition time (see pools.py).
"""

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import structlog
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from ...clock import Clock
from ...config import Settings
from ...store import InboundEvents, ProviderEvent, SuppressionList
from ..errors import ApiError, ErrorOut
from . import mailgun, mandrill
from .replay import RecentTokens

__all__ = ["InboundOut", "inbound_router"]

log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 32 * 1024 * 1024  # Mandrill posts up to 1000 events at once
_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": text}
    for status, text in {
        400: "not the provider's format",
        401: "the signature is missing or wrong, stale, or replayed",
        413: "body too large",
        503: "not recorded; the provider retries",
    }.items()
}


class InboundOut(BaseModel):
    events: int = Field(description="events in the request")
    recorded: int = Field(description="Relay events written, keyed by Relay's message id")
    unmatched: int = Field(description="events about a message Relay does not know (its recipient is still listed)")
    ignored: int = Field(description="events Relay does not map: opens, clicks, deferrals, temporary failures, ...")
    suppressed: int = Field(description="recipients newly added to the suppression list")
    duplicate: bool = Field(default=False, description="the same Mandrill batch was recorded before; not again")


def inbound_router(
    settings: Callable[[], Settings], clock: Clock, inbound: InboundEvents, suppressions: SuppressionList
) -> APIRouter:
    router = APIRouter(prefix="/webhooks/inbound", tags=["inbound"], responses=_RESPONSES)
    # A Mailgun token is accepted once; it can pass the timestamp check for at most 2 * MAX_AGE_SECONDS.
    mailgun_tokens = RecentTokens(window=2 * mailgun.MAX_AGE_SECONDS)
    # A Mandrill batch carries no timestamp or nonce: an identical body (a retry whose 200 was lost, or a replay)
    # is answered 200 without being recorded twice.
    mandrill_batches = RecentTokens(window=24 * 3600, capacity=10_000)

    async def record(events: list[ProviderEvent], total: int, release: Callable[[], None]) -> InboundOut:
        try:
            result = await inbound.record(events, set(settings().suppression.on))
        except Exception:
            release()
            log.exception("inbound.record_failed", events=len(events))
            raise ApiError(503, "the events could not be recorded; try again later") from None
        await suppressions.note(result.suppressed)
        return InboundOut(
            events=total,
            recorded=result.recorded,
            unmatched=result.unmatched,
            ignored=total - len(events),
            suppressed=len(result.suppressed),
        )

    @router.post("/mailgun", summary="Mailgun webhook events (JSON, signed in the body)")
    async def mailgun_events(request: Request) -> InboundOut:
        body = await _body(request)
        try:
            payload = json.loads(body)
        except ValueError:
            raise ApiError(400, "the body is not JSON (Mailgun posts application/json)") from None
        signature = payload.get("signature") if isinstance(payload, dict) else None
        if not isinstance(signature, dict):
            raise ApiError(401, 'no "signature" object in the body')
        keys = [
            (w.id, w.mailgun.webhook_signing_key.get_secret_value())
            for w in settings().workspaces
            if w.mailgun is not None and w.mailgun.webhook_signing_key is not None
        ]
        workspace_id = mailgun.signed_by([(w, k) for w, k in keys if k], signature)
        if workspace_id is None:
            raise ApiError(401, _no_match("mailgun", "mailgun.webhook_signing_key", len(keys)))
        now = clock.now()
        try:
            age = now.timestamp() - float(signature["timestamp"])
        except (TypeError, ValueError):
            raise ApiError(401, "the signature's timestamp is not a number") from None
        if not abs(age) <= mailgun.MAX_AGE_SECONDS:  # also refuses NaN
            raise ApiError(401, f"the signature's timestamp is {abs(age):.0f} s away from now (at most "
                                f"{mailgun.MAX_AGE_SECONDS} s): stale or replayed")  # fmt: skip
        token = signature["token"]
        if not mailgun_tokens.claim(token, now.timestamp()):
            raise ApiError(401, "this signature's token was used before: a replayed request")
        data = payload.get("event-data")
        found = mailgun.event(data, workspace_id, now) if isinstance(data, dict) else None
        return await record([found] if found else [], 1, lambda: mailgun_tokens.release(token))

    @router.get("/mandrill", summary="Mandrill's check that the URL exists")
    async def mandrill_check() -> dict[str, str]:
        return {"status": "ok"}

    @router.head("/mandrill", include_in_schema=False)  # Mandrill checks a new webhook URL with HEAD
    async def mandrill_head() -> dict[str, str]:
        return {"status": "ok"}

    @router.post("/mandrill", summary="Mandrill webhook events (form-encoded mandrill_events, X-Mandrill-Signature)")
    async def mandrill_events(request: Request) -> InboundOut:
        body = await _body(request)
        try:
            params = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
        except (UnicodeDecodeError, ValueError):
            raise ApiError(400, "the body is not a UTF-8 form (Mandrill posts mandrill_events form-encoded)") from None
        given = request.headers.get("x-mandrill-signature")
        if not given:
            raise ApiError(401, "no X-Mandrill-Signature header")
        keys = [
            (w.id, w.mandrill.webhook_key.get_secret_value(), w.mandrill.webhook_url or str(request.url))
            for w in settings().workspaces
            if w.mandrill is not None and w.mandrill.webhook_key is not None
        ]
        workspace_id = mandrill.signed_by([k for k in keys if k[1]], params, given)
        if workspace_id is None:
            raise ApiError(401, _no_match("mandrill", "mandrill.webhook_key (and webhook_url)", len(keys)))
        if not mandrill_batches.claim(given, clock.now().timestamp()):
            return InboundOut(events=0, recorded=0, unmatched=0, ignored=0, suppressed=0, duplicate=True)
        try:
            items = json.loads(dict(params).get("mandrill_events", ""))
        except ValueError:
            items = None
        if not isinstance(items, list):
            mandrill_batches.release(given)
            raise ApiError(400, "mandrill_events is not a JSON array")
        now = clock.now()
        found = [e for e in (mandrill.event(item, workspace_id, now) for item in items) if e is not None]
        return await record(found, len(items), lambda: mandrill_batches.release(given))

    return router


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, f"the body is larger than {MAX_BODY_BYTES} bytes", code="too_large")
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(413, f"the body is larger than {MAX_BODY_BYTES} bytes", code="too_large")
    return body


def _no_match(kind: str, field: str, keys: int) -> str:
    if keys == 0:
        return f"no {kind} workspace has {field} set: Relay cannot check this request's signature"
    return f"the signature does not match the {field} of any {kind} workspace"

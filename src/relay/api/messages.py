"""`/api/v1/messages` (issue 7): search and read messages with their attempts and routing decisions; send, resend
or cancel one (operator).

No `from __future__ import annotations`: FastAPI reads these annotations at definition time (see pools.py).
"""

import base64
import binascii
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Response
from pydantic import BaseModel, Field

from ..clock import Clock
from ..errors import StoreError
from ..store import (
    AttemptView,
    DuplicateKeyError,
    MessageQueue,
    Messages,
    MessageView,
    NewMessage,
    Suppression,
    new_message_id,
)
from .auth import ApiKeys, Caller
from .errors import ERROR_RESPONSES, ApiError

__all__ = ["Ingress", "cancel_message", "messages_router", "resend_message"]

Status = Literal["queued", "sending", "deferred", "sent", "failed"]
_NOT_STORED = "the message could not be stored; nothing was queued, try again"


class MessageOut(BaseModel):
    id: str
    mail_from: str
    rcpt_to: list[str]
    status: str
    attempts: int
    next_attempt_at: datetime | None
    workspace_id: str | None
    last_error: str | None
    metadata: dict[str, Any]
    size: int
    created_at: datetime
    resent_from: str | None = Field(description="the message this one is a copy of (a resend); null otherwise")


class AttemptOut(BaseModel):
    attempt_number: int
    workspace_id: str | None
    pool_id: str | None
    sent_as: str | None
    outcome: str
    provider_status: str | None
    provider_response: str | None
    provider_message_id: str | None
    started_at: datetime
    finished_at: datetime
    latency_ms: int
    recipients: dict[str, str] | None
    decision: dict[str, Any] | None


class MessageDetailOut(MessageOut):
    attempts_detail: list[AttemptOut]


def _message(m: MessageView) -> dict[str, Any]:
    return {**dataclasses.asdict(m), "rcpt_to": list(m.rcpt_to)}


def _attempt(a: AttemptView) -> AttemptOut:
    return AttemptOut(
        attempt_number=a.attempt_number,
        workspace_id=a.workspace_id,
        pool_id=a.pool_id,
        sent_as=a.sent_as,
        outcome=a.outcome,
        provider_status=a.provider_status,
        provider_response=a.provider_response,
        provider_message_id=a.provider_message_id,
        started_at=a.started_at,
        finished_at=a.finished_at,
        latency_ms=a.latency_ms,
        recipients=a.recipients,
        decision=a.selection,
    )


class SendIn(BaseModel):
    """A message to send: either `subject` with `text` and/or `html` (Relay builds the MIME), or `raw`, a complete
    RFC 5322 message in base64 (sent byte for byte)."""

    from_: str = Field(alias="from", min_length=3, max_length=512, pattern=r"^[^@\s]+@[^@\s]+$")
    to: list[Annotated[str, Field(min_length=3, max_length=512, pattern=r"^[^@\s]+@[^@\s]+$")]] = Field(
        min_length=1, max_length=1000
    )
    subject: str | None = Field(default=None, max_length=998)
    text: str | None = None
    html: str | None = None
    headers: dict[str, Annotated[str, Field(max_length=998)]] = Field(default_factory=dict, max_length=50)
    raw: str | None = Field(default=None, description="base64 of a complete message; excludes subject/text/html")
    metadata: dict[str, Any] = Field(default_factory=dict)


class SentOut(BaseModel):
    id: str
    status: str


@dataclass(frozen=True, slots=True)
class Ingress:
    """What sending needs from the runtime: the durable writer, and whether a sender is served."""

    store: Callable[[NewMessage], Awaitable[None]]
    serves: Callable[[str], bool]
    max_size: int
    max_recipients: int
    clock: Clock
    # The suppression listing that refuses a new message to a recipient, if any (no I/O: an in-memory list).
    refuses: Callable[[str], Suppression | None] = lambda _recipient: None


def _require_served(ingress: Ingress, sender: str) -> None:
    """Refuse a sender no workspace or pool serves: nothing would deliver its mail."""
    if not ingress.serves(sender):
        raise ApiError(422, f"no workspace or pool serves the sender {sender}", field="from")


def _refuse_suppressed(ingress: Ingress, recipients: Sequence[str], field: str) -> None:
    """Refuse the whole message when a recipient is on the suppression list, naming the first one."""
    for index, recipient in enumerate(recipients):
        listed = ingress.refuses(recipient)
        if listed is not None:
            message = f"<{recipient}>: {listed.refusal}"
            raise ApiError(422, message, code="recipient_suppressed", field=f"{field}[{index}]")


def _mime(body: SendIn) -> bytes:
    if body.raw is not None:
        if body.subject is not None or body.text is not None or body.html is not None:
            raise ApiError(422, "raw excludes subject, text and html", field="raw")
        try:
            return base64.b64decode(body.raw, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(422, "raw is not base64", field="raw") from None
    if body.text is None and body.html is None:
        raise ApiError(422, "give text, html, or a raw message", field="text")
    message = EmailMessage()
    for name, value in body.headers.items():
        if "\r" in value or "\n" in value or not name.isascii() or ":" in name:
            raise ApiError(422, "a header name or value is not allowed", field=f"headers.{name}")
        message[name] = value
    message["From"] = body.from_
    message["To"] = ", ".join(body.to)
    message["Subject"] = body.subject or ""
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=body.from_.rpartition("@")[2])
    if body.text is not None:
        message.set_content(body.text)
    if body.html is not None:
        if body.text is None:
            message.set_content(body.html, subtype="html")
        else:
            message.add_alternative(body.html, subtype="html")
    return message.as_bytes()


async def cancel_message(
    messages: Messages, queue: MessageQueue, message_id: str, actor: str, *, through: str = "the API"
) -> MessageView:
    """Never send a waiting (queued or deferred) message: it becomes `failed`, its last error naming `actor` and
    where they cancelled it (`through`). Raises `ApiError` 404 for an unknown message, 409 for any other status."""
    if await messages.get(message_id) is None:
        raise ApiError(404, f'no message "{message_id}"')
    if not await queue.cancel(message_id, f'cancelled through {through} by "{actor}"'):
        view = await messages.get(message_id)
        status = view.status if view else "gone"
        raise ApiError(409, f"only a queued or deferred message can be cancelled; this one is {status}")
    view = await messages.get(message_id)
    assert view is not None
    return view


async def resend_message(messages: Messages, ingress: Ingress, message_id: str, actor: str) -> str:
    """Queue a new copy of a message in any status (the same bytes, sender, every recipient and metadata, with
    `resent_from` naming the original and `authenticated_user` the `actor`); returns the copy's id. The original
    and its history are left as they are. Raises `ApiError` like a send: 404, 422 (sender no longer served, a
    recipient suppressed), 503 (not stored)."""
    original, raw = await messages.get(message_id), await messages.raw(message_id)
    if original is None or raw is None:
        raise ApiError(404, f'no message "{message_id}"')
    _require_served(ingress, original.mail_from)
    _refuse_suppressed(ingress, original.rcpt_to, "rcpt_to")
    copy = NewMessage(
        id=new_message_id(),
        mail_from=original.mail_from,
        rcpt_to=original.rcpt_to,
        raw=raw,
        received_at=ingress.clock.now(),
        metadata=original.metadata,
        source="http",
        authenticated_user=actor,
        resent_from=original.id,
    )
    try:
        await ingress.store(copy)  # the send's durable path: the delivery worker is woken on commit
    except StoreError:
        raise ApiError(503, _NOT_STORED) from None
    return copy.id


def messages_router(
    messages: Messages, queue: MessageQueue, keys: ApiKeys, ingress: Ingress | None = None
) -> APIRouter:
    router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES)
    Viewer = Annotated[Caller, Depends(keys.requires("viewer"))]  # noqa: N806 (a type, used as one)
    Operator = Annotated[Caller, Depends(keys.requires("operator"))]  # noqa: N806

    @router.get("/messages", tags=["messages"])
    async def search(
        _caller: Viewer,
        status: Status | None = None,
        sender: Annotated[str | None, Query(max_length=512)] = None,
        recipient: Annotated[str | None, Query(max_length=512)] = None,
        workspace_id: Annotated[str | None, Query(max_length=255)] = None,
        before: Annotated[str | None, Query(max_length=26, description="continue after this message id")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> list[MessageOut]:
        """Newest first; page with `before=<last id>`."""
        found = await messages.search(
            status=status, sender=sender, recipient=recipient, workspace_id=workspace_id, before=before, limit=limit
        )
        return [MessageOut(**_message(m)) for m in found]

    async def detail(message_id: str) -> MessageDetailOut:
        view = await messages.get(message_id)
        if view is None:
            raise ApiError(404, f'no message "{message_id}"')
        attempts = [_attempt(a) for a in await messages.attempts(message_id)]
        return MessageDetailOut(**_message(view), attempts_detail=attempts)

    @router.get("/messages/{message_id}", tags=["messages"])
    async def get(message_id: str, _caller: Viewer) -> MessageDetailOut:
        """A message with every attempt: workspace, pool, the sender used, the provider's answer, and the routing
        decision's evidence (strategy, every member's score, exclusions, failover, fallback)."""
        return await detail(message_id)

    @router.post("/messages/{message_id}/cancel", tags=["messages"])
    async def cancel(message_id: str, caller: Operator) -> MessageOut:
        """Never send a waiting (queued or deferred) message: it becomes `failed`, with who cancelled it."""
        return MessageOut(**_message(await cancel_message(messages, queue, message_id, caller.name)))

    if ingress is not None:
        IdempotencyKey = Annotated[  # noqa: N806
            str | None,
            Header(alias="Idempotency-Key", max_length=255, description="a repeat within 24 h is the same message"),
        ]

        @router.post("/messages", status_code=202, tags=["messages"])
        async def send(body: SendIn, caller: Operator, response: Response, key: IdempotencyKey = None) -> SentOut:
            """Queue a message, durably: `202` means it survives a crash, exactly like SMTP's 250."""
            now = ingress.clock.now()
            if key is not None:
                await messages.forget_idempotency_key(key, now - timedelta(hours=24))
                first = await messages.by_idempotency_key(key, now - timedelta(hours=24))
                if first is not None:
                    response.status_code = 200
                    return SentOut(id=first, status="duplicate")
            _require_served(ingress, body.from_)
            if len(body.to) > ingress.max_recipients:
                raise ApiError(422, f"at most {ingress.max_recipients} recipients", field="to")
            _refuse_suppressed(ingress, body.to, "to")
            raw = _mime(body)
            if len(raw) > ingress.max_size:
                raise ApiError(422, f"the message is larger than {ingress.max_size} bytes", field="raw")
            message = NewMessage(
                id=new_message_id(),
                mail_from=body.from_,
                rcpt_to=tuple(body.to),
                raw=raw,
                received_at=now,
                metadata=body.metadata,
                source="http",
                authenticated_user=caller.name,
                idempotency_key=key,
            )
            try:
                await ingress.store(message)
            except DuplicateKeyError:
                # Another request with this key committed first: answer with its message.
                first = await messages.by_idempotency_key(key or "", now - timedelta(hours=24))
                if first is None:
                    raise ApiError(409, "this idempotency key is being used right now; retry") from None
                response.status_code = 200
                return SentOut(id=first, status="duplicate")
            except StoreError:
                raise ApiError(503, _NOT_STORED) from None
            return SentOut(id=message.id, status="queued")

        @router.post("/messages/{message_id}/resend", status_code=202, tags=["messages"])
        async def resend(message_id: str, caller: Operator) -> MessageDetailOut:
            """Queue a new copy of a message in any status: the same bytes, sender, every recipient and metadata,
            with `resent_from` naming the original. The original and its history are left as they are."""
            return await detail(await resend_message(messages, ingress, message_id, caller.name))

    return router

"""`/api/v1/messages` (issue 7): search and read messages with their attempts and routing decisions; cancel a
waiting one (operator).

No `from __future__ import annotations`: FastAPI reads these annotations at definition time (see pools.py).
"""

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from ..store import AttemptView, MessageQueue, Messages, MessageView
from .auth import ApiKeys, Caller
from .errors import ERROR_RESPONSES, ApiError

__all__ = ["messages_router"]

Status = Literal["queued", "sending", "deferred", "sent", "failed"]


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
    return {
        "id": m.id,
        "mail_from": m.mail_from,
        "rcpt_to": list(m.rcpt_to),
        "status": m.status,
        "attempts": m.attempts,
        "next_attempt_at": m.next_attempt_at,
        "workspace_id": m.workspace_id,
        "last_error": m.last_error,
        "metadata": m.metadata,
        "size": m.size,
        "created_at": m.created_at,
    }


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


def messages_router(messages: Messages, queue: MessageQueue, keys: ApiKeys) -> APIRouter:
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

    @router.get("/messages/{message_id}", tags=["messages"])
    async def get(message_id: str, _caller: Viewer) -> MessageDetailOut:
        """A message with every attempt: workspace, pool, the sender used, the provider's answer, and the routing
        decision's evidence (strategy, every member's score, exclusions, failover, fallback)."""
        view = await messages.get(message_id)
        if view is None:
            raise ApiError(404, f'no message "{message_id}"')
        attempts = [_attempt(a) for a in await messages.attempts(message_id)]
        return MessageDetailOut(**_message(view), attempts_detail=attempts)

    @router.post("/messages/{message_id}/cancel", tags=["messages"])
    async def cancel(message_id: str, caller: Operator) -> MessageOut:
        """Never send a waiting (queued or deferred) message: it becomes `failed`, with who cancelled it."""
        if await messages.get(message_id) is None:
            raise ApiError(404, f'no message "{message_id}"')
        if not await queue.cancel(message_id, f'cancelled through the API by "{caller.name}"'):
            view = await messages.get(message_id)
            status = view.status if view else "gone"
            raise ApiError(409, f"only a queued or deferred message can be cancelled; this one is {status}")
        view = await messages.get(message_id)
        assert view is not None
        return MessageOut(**_message(view))

    return router

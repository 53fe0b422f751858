"""`/api/v1/webhooks`: the endpoints events are posted to, and each endpoint's delivery log (issue 8).

Reads need `viewer`, writes `admin`; every write is audited. The secret is write-only: responses say whether one
is set; writing `********` (or leaving `secret` out of a PUT) keeps the stored one. Through the API an `env:NAME`
secret may only name a `RELAY_SECRET_*` variable, as for workspaces. PUT with `enabled: true` re-enables an
endpoint the dispatcher disabled; its pending deliveries resume.

No `from __future__ import annotations`: FastAPI reads these annotations at definition time (see pools.py).
"""

import hashlib
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, Field, HttpUrl, field_validator
from sqlalchemy.exc import IntegrityError

from ..config.documents import SECRET_MASK
from ..config.models import EVENT_PATTERN
from ..store import DeliveryView, EndpointRow, WebhookStore
from .auth import ApiKeys, Caller
from .errors import ERROR_RESPONSES, ApiError

__all__ = ["webhooks_router"]

Pattern = Annotated[str, Field(pattern=EVENT_PATTERN)]


class WebhookIn(BaseModel):
    id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")] | None = None
    url: HttpUrl
    secret: Annotated[str, Field(max_length=512)] | None = None
    events: list[Pattern] = Field(default=["*"], min_length=1)
    format: Literal["relay", "mandrill"] = "relay"
    workspace_selected_sample: float = Field(default=1.0, ge=0.0, le=1.0)
    enabled: bool = True

    @field_validator("url")
    @classmethod
    def _fits(cls, url: HttpUrl) -> HttpUrl:
        if len(str(url)) > 2048:
            raise ValueError("at most 2048 characters")
        return url


class WebhookOut(BaseModel):
    id: str
    url: str
    secret_set: bool
    events: list[str]
    format: str
    workspace_selected_sample: float
    enabled: bool
    disabled_reason: str | None
    failing_since: datetime | None
    managed_by: str
    version: int


class DeliveryOut(BaseModel):
    id: int
    event_id: int
    event: str
    message_id: str | None
    status: str
    attempts: int
    last_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    next_attempt_at: datetime | None


def _out(e: EndpointRow) -> WebhookOut:
    return WebhookOut(
        id=e.id,
        url=e.url,
        secret_set=bool(e.secret),
        events=list(e.events),
        format=e.format,
        workspace_selected_sample=e.workspace_selected_sample,
        enabled=e.enabled,
        disabled_reason=e.disabled_reason,
        failing_since=e.failing_since,
        managed_by=e.managed_by,
        version=e.version,
    )


def _delivery(d: DeliveryView) -> DeliveryOut:
    return DeliveryOut(
        id=d.id,
        event_id=d.event_id,
        event=d.event_type,
        message_id=d.message_id,
        status=d.status,
        attempts=d.attempts,
        last_status=d.last_status,
        last_error=d.last_error,
        created_at=d.created_at,
        delivered_at=d.delivered_at,
        next_attempt_at=d.next_attempt_at,
    )


def _secret(given: str | None, stored: str | None) -> str | None:
    if given is None or given == SECRET_MASK:
        return stored
    if given.startswith("env:") and not given.startswith("env:RELAY_SECRET_"):
        raise ApiError(
            422,
            "through the API, env: may only name variables starting with RELAY_SECRET_ (set them on every relay "
            "host); other variables are readable only from the config file",
            field="secret",
        )
    return given or None


def webhooks_router(store: WebhookStore, keys: ApiKeys, changed: Callable[[], None]) -> APIRouter:
    router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES, tags=["webhooks"])
    Admin = Annotated[Caller, Depends(keys.requires("admin"))]  # noqa: N806 (a type, used as one)
    Viewer = Annotated[Caller, Depends(keys.requires("viewer"))]  # noqa: N806

    async def current(endpoint_id: str) -> EndpointRow:
        found = await store.get(endpoint_id)
        if found is None:
            raise ApiError(404, f'no webhook "{endpoint_id}"')
        return found

    @router.get("/webhooks")
    async def list_webhooks(_caller: Viewer) -> list[WebhookOut]:
        return [_out(e) for e in await store.endpoints()]

    @router.get("/webhooks/{endpoint_id}")
    async def get_webhook(endpoint_id: str, _caller: Viewer) -> WebhookOut:
        return _out(await current(endpoint_id))

    @router.post("/webhooks", status_code=201)
    async def create_webhook(body: WebhookIn, caller: Admin) -> WebhookOut:
        if body.secret == SECRET_MASK:
            raise ApiError(422, f'"{SECRET_MASK}" keeps a stored secret, and there is none yet', field="secret")
        endpoint_id = body.id or "wh-" + hashlib.sha256(str(body.url).encode()).hexdigest()[:12]
        if await store.get(endpoint_id) is not None:
            raise ApiError(409, f'webhook "{endpoint_id}" exists; PUT /api/v1/webhooks/{endpoint_id}', field="id")
        endpoint = EndpointRow(
            id=endpoint_id,
            url=str(body.url),
            secret=_secret(body.secret, None),
            events=tuple(body.events),
            format=body.format,
            workspace_selected_sample=body.workspace_selected_sample,
            enabled=body.enabled,
        )
        try:
            await store.save(endpoint, actor=caller.name, before=None)
        except IntegrityError:  # a concurrent create of the same id won
            raise ApiError(409, f'webhook "{endpoint_id}" exists', field="id") from None
        changed()
        return _out(await current(endpoint_id))

    @router.put("/webhooks/{endpoint_id}")
    async def replace_webhook(endpoint_id: str, body: WebhookIn, caller: Admin) -> WebhookOut:
        if body.id is not None and body.id != endpoint_id:
            raise ApiError(422, f'the body\'s id "{body.id}" is not the path\'s "{endpoint_id}"', field="id")
        before = await current(endpoint_id)
        endpoint = replace(
            before,
            url=str(body.url),
            secret=_secret(body.secret, before.secret),
            events=tuple(body.events),
            format=body.format,
            workspace_selected_sample=body.workspace_selected_sample,
            enabled=body.enabled,
        )
        await store.save(endpoint, actor=caller.name, before=before)
        changed()
        return _out(await current(endpoint_id))

    @router.delete("/webhooks/{endpoint_id}", status_code=204)
    async def delete_webhook(endpoint_id: str, caller: Admin) -> Response:
        await store.remove(await current(endpoint_id), actor=caller.name)
        changed()
        return Response(status_code=204)

    @router.get("/webhooks/{endpoint_id}/deliveries")
    async def deliveries(
        endpoint_id: str,
        _caller: Viewer,
        status: Literal["pending", "delivered", "failed"] | None = None,
        before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[DeliveryOut]:
        """The endpoint's delivery log, newest first: each event's status, attempts, last answer and error."""
        await current(endpoint_id)
        return [_delivery(d) for d in await store.deliveries(endpoint_id, status=status, before=before, limit=limit)]

    return router

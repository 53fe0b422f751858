"""`/api/v1/suppressions` (issue 8): the recipients Relay refuses new mail to, listed by provider events (hard
bounces, complaints, unsubscribes) or by hand. Reading needs a viewer key, adding and removing an operator's.

No `from __future__ import annotations`: FastAPI reads these annotations at definition time (see pools.py).
"""

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, Field

from ..clock import Clock
from ..store import Suppression, SuppressionList, suppression_key
from .auth import ApiKeys, Caller
from .errors import ERROR_RESPONSES, ApiError

__all__ = ["suppressions_router"]

Reason = Literal["hard_bounce", "complaint", "unsubscribe", "manual"]
Address = Annotated[str, Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")]


class SuppressionOut(BaseModel):
    email: str
    reason: Reason
    detail: str | None
    source: str = Field(description='who listed it: "mailgun:<workspace>", "mandrill:<workspace>", "api:<key name>"')
    message_id: str | None = Field(description="the Relay message whose provider event listed it")
    created_at: datetime
    refusal: str = Field(description="what a new message to this recipient is answered")


class SuppressionIn(BaseModel):
    email: Address
    reason: Reason = Field(default="manual", description='"manual", or a provider reason when importing a list')
    detail: str | None = Field(default=None, max_length=1000)


def _out(entry: Suppression) -> SuppressionOut:
    return SuppressionOut(
        email=entry.email,
        reason=entry.reason,  # written only with REASONS
        detail=entry.detail,
        source=entry.source,
        message_id=entry.message_id,
        created_at=entry.created_at,
        refusal=entry.refusal,
    )


def suppressions_router(suppressions: SuppressionList, clock: Clock, keys: ApiKeys) -> APIRouter:
    router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES, tags=["suppressions"])
    Viewer = Annotated[Caller, Depends(keys.requires("viewer"))]  # noqa: N806 (a type, used as one)
    Operator = Annotated[Caller, Depends(keys.requires("operator"))]  # noqa: N806

    @router.get("/suppressions")
    async def search(
        _caller: Viewer,
        email: Annotated[str | None, Query(max_length=320, description="part of the address")] = None,
        reason: Reason | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[SuppressionOut]:
        """Newest first."""
        return [_out(s) for s in await suppressions.search(email=email, reason=reason, limit=limit)]

    @router.get("/suppressions/{email}")
    async def get(email: str, _caller: Viewer) -> SuppressionOut:
        found = await suppressions.get(email)
        if found is None:
            raise ApiError(404, f"{email} is not on the suppression list")
        return _out(found)

    @router.post("/suppressions", status_code=201)
    async def add(body: SuppressionIn, caller: Operator) -> SuppressionOut:
        """List a recipient: from now on a new message to it is refused (SMTP 550, API 422)."""
        entry = Suppression(
            email=suppression_key(body.email),
            reason=body.reason,
            detail=body.detail,
            source=f"api:{caller.name}",
            message_id=None,
            created_at=clock.now(),
        )
        if not await suppressions.add(entry):
            listed = await suppressions.get(entry.email)
            why = f" ({listed.reason} on {listed.created_at:%Y-%m-%d})" if listed else ""
            raise ApiError(409, f"{entry.email} is already on the suppression list{why}")
        return _out(entry)

    @router.delete("/suppressions/{email}", status_code=204)
    async def remove(email: str, _caller: Operator) -> Response:
        """Take a recipient off the list: mail to it flows again at once (other Relay processes follow within a
        second)."""
        if not await suppressions.remove(email):
            raise ApiError(404, f"{email} is not on the suppression list")
        return Response(status_code=204)

    return router

"""Messages: search by sender, recipient, status, workspace or id; one message with its attempts as a timeline,
each routing decision explained in words; an operator resends or cancels one with the API's own code, audited
the same way (the copy names the key and the original).

No `from __future__ import annotations`: FastAPI reads these annotations at definition time (see api/pools.py).
"""

import re
from collections.abc import Mapping
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from ..api import Caller
from ..api.errors import ApiError
from ..api.messages import cancel_message, resend_message
from ..store import AttemptView, Messages, MessageView
from .explain import explain
from .site import Site, redirect

__all__ = ["PAGE", "STATUSES", "message_routes", "search_filters"]

PAGE = 50
STATUSES = ("queued", "sending", "deferred", "sent", "failed")
CANCELLABLE = ("queued", "deferred")
_TEXT_FIELDS = {"q": 512, "sender": 512, "recipient": 512, "workspace": 255}  # field -> longest value kept
_ID = re.compile(r"[0-9A-Za-z]{26}")  # a ULID's shape: 26 characters of Crockford base32
_RECIPIENTS_SHOWN = 2


def search_filters(params: Mapping[str, str]) -> dict[str, str]:
    """The search form's fields that were given: text trimmed and capped, a status only if it is one."""
    out = {name: params.get(name, "").strip()[:size] for name, size in _TEXT_FIELDS.items()}
    status = params.get("status", "")
    out["status"] = status if status in STATUSES else ""
    return {name: value for name, value in out.items() if value}


async def find(messages: Messages, filters: Mapping[str, str], before: str | None) -> list[MessageView]:
    """One page, newest first. A free text (`q`) is part of the sender or of a recipient, used when neither of
    those fields is given: two searches, each a page newest first, whose merged first page is exactly the first
    page of "sender or recipient"."""
    common: dict[str, Any] = {
        "status": filters.get("status"),
        "workspace_id": filters.get("workspace"),
        "before": before,
        "limit": PAGE,
    }
    sender, recipient, text = filters.get("sender"), filters.get("recipient"), filters.get("q")
    if not text or sender or recipient:
        return await messages.search(sender=sender, recipient=recipient, **common)
    found = {m.id: m for m in await messages.search(sender=text, **common)}
    found.update({m.id: m for m in await messages.search(recipient=text, **common)})
    return [found[i] for i in sorted(found, reverse=True)[:PAGE]]


def recipients_shown(rcpt_to: tuple[str, ...]) -> str:
    """`ann@example.org, bob@example.org +3 more`, each address cut at 60 characters."""
    shown = [r if len(r) <= 60 else r[:59] + "…" for r in rcpt_to[:_RECIPIENTS_SHOWN]]
    more = len(rcpt_to) - _RECIPIENTS_SHOWN
    return ", ".join(shown) + (f" +{more} more" if more > 0 else "")


def attempt_row(a: AttemptView) -> dict[str, Any]:
    pool = a.pool_id or ((a.selection or {}).get("pool") if isinstance(a.selection, dict) else None)
    return {"a": a, "pool": pool if isinstance(pool, str) else None, "decision": explain(a.selection, a.workspace_id)}


def message_routes(site: Site) -> APIRouter:
    router = APIRouter()
    Viewer = Annotated[Caller, Depends(site.sessions.require("viewer"))]  # noqa: N806 (a type, used as one)
    Operator = Annotated[Caller, Depends(site.sessions.require("operator"))]  # noqa: N806
    api = site.services.api

    @router.get("/messages")
    async def messages(request: Request, caller: Viewer) -> Response:
        filters = search_filters(request.query_params)
        text = filters.get("q", "")
        problem = None
        before = request.query_params.get("before", "")[:26] or None
        if _ID.fullmatch(text):  # an id: straight to the message
            for candidate in dict.fromkeys((text, text.upper())):
                if await api.messages.get(candidate) is not None:
                    return RedirectResponse(f"/dashboard/messages/{candidate}", status_code=303)
            problem, found = f'No message "{text}".', []
        else:
            if text and (filters.get("sender") or filters.get("recipient")):
                problem = "The free text is used only when the sender and recipient fields are empty."
            found = await find(api.messages, filters, before)
        older = None
        if len(found) == PAGE:
            older = "/dashboard/messages?" + urlencode({**filters, "before": found[-1].id})
        rows = [{"m": m, "recipients": recipients_shown(m.rcpt_to)} for m in found]
        context: dict[str, Any] = {"filters": filters, "statuses": STATUSES, "rows": rows, "older": older, "page": PAGE}
        if problem:
            context["problem"] = problem
        if before:
            context["newest"] = "/dashboard/messages" + ("?" + urlencode(filters) if filters else "")
        return site.render(request, caller, "messages.html", "messages", **context)

    @router.get("/messages/{message_id}")
    async def message(request: Request, message_id: str, caller: Viewer) -> Response:
        view = await api.messages.get(message_id) if len(message_id) <= 64 else None
        if view is None:
            raise HTTPException(404, f'no message "{message_id[:64]}"')
        attempts = [attempt_row(a) for a in await api.messages.attempts(view.id)]
        return site.render(
            request, caller, "message.html", "messages",
            m=view,
            attempts=attempts,
            cancellable=view.status in CANCELLABLE,
            can_resend=api.ingress is not None,
        )  # fmt: skip

    @router.post("/messages/{message_id}/resend")
    async def resend(request: Request, message_id: str, caller: Operator) -> Response:
        await site.sessions.form(request, caller)
        if api.ingress is None:
            return redirect(_back(message_id), "this relay does not send through the API", error=True)
        try:
            copy_id = await resend_message(api.messages, api.ingress, message_id, caller.name)
        except ApiError as exc:
            return _refused(message_id, exc)
        return redirect(f"/dashboard/messages/{copy_id}", f"Queued a copy of {message_id} (resent by {caller.name}).")

    @router.post("/messages/{message_id}/cancel")
    async def cancel(request: Request, message_id: str, caller: Operator) -> Response:
        await site.sessions.form(request, caller)
        try:
            await cancel_message(api.messages, api.queue, message_id, caller.name, through="the dashboard")
        except ApiError as exc:
            return _refused(message_id, exc)
        return redirect(_back(message_id), f"Cancelled by {caller.name}: it will not be sent.")

    return router


def _back(message_id: str) -> str:
    return f"/dashboard/messages/{quote(message_id, safe='')}"


def _refused(message_id: str, error: ApiError) -> Response:
    """An unknown message is a 404 page; any other refusal is a problem banner on the message."""
    if error.status == 404:
        raise HTTPException(404, error.message)
    return redirect(_back(message_id), error.message, error=True)

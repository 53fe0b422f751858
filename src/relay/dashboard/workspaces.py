"""Workspaces: each one's health now and its changes, how much of its limits is used, and its last errors."""

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response

from ..api import Caller
from ..limits import Limit, Usage
from .site import Site

__all__ = ["limit_rows", "workspace_routes"]

_SENDERS_SHOWN = 20  # a workspace page lists its busiest senders' limits, not every sender of the day


def limit_rows(rows: list[tuple[str, Limit, Usage]]) -> list[dict[str, Any]]:
    """The capacity report as the templates show it: what the limit is on, how much of it is used, and when it
    gives capacity back."""
    out = []
    for _ws, limit, usage in rows:
        scope, _, rest = limit.key.partition(":")
        on = {"ws": "workspace", "user": "sender " + rest.partition(":")[2], "rate": "rate per " + rest[-1:]}
        out.append({
            "key": limit.key,
            "on": on.get(scope, scope),
            "kind": limit.kind,
            "limit": usage.limit,
            "used": usage.used,
            "remaining": usage.remaining,
            "used_fraction": min(usage.used / usage.limit, 1.0) if usage.limit else 0.0,
            "next_capacity_in": usage.next_capacity_in,
            "full_reset_in": usage.full_reset_in,
        })  # fmt: skip
    return out


def workspace_routes(site: Site) -> APIRouter:
    router = APIRouter()
    Viewer = Annotated[Caller, Depends(site.sessions.require("viewer"))]  # noqa: N806 (a type, used as one)
    api, activity = site.services.api, site.services.activity

    @router.get("/workspaces")
    async def workspaces(request: Request, caller: Viewer) -> Response:
        report = await api.capacity_report(None, None)
        sent = await activity.sent_by_route(api.clock.now() - timedelta(days=1))
        cards = []
        for ws in sorted(api.settings().workspaces, key=lambda w: w.id):
            own = [row for row in report if row[0] == ws.id and not row[1].key.startswith("user:")]
            cards.append({
                "ws": ws,
                "kind": ws.provider.kind,
                "enabled": ws.provider.enabled,
                "pools": api.balancer.catalog.pools_of(ws.id),
                "health": site.services.health(ws.id),
                "limits": limit_rows(own),
                "sent_day": sum(n for (_pool, w), n in sent.items() if w == ws.id),
            })  # fmt: skip
        return site.render(request, caller, "workspaces.html", "workspaces", cards=cards)

    @router.get("/workspaces/{workspace_id}")
    async def workspace(request: Request, workspace_id: str, caller: Viewer) -> Response:
        ws = api.settings().workspace(workspace_id)
        if ws is None:
            raise HTTPException(404, f'no workspace "{workspace_id}"')
        rows = limit_rows(await api.capacity_report(workspace_id, None))
        senders = sorted((r for r in rows if r["key"].startswith("user:")), key=lambda r: -r["used"])
        changes = [
            e for e in await activity.events(types=("workspace.health_changed",), limit=500)
            if e.data.get("workspace_id") == workspace_id
        ][:20]  # fmt: skip
        return site.render(
            request, caller, "workspace.html", "workspaces",
            ws=ws,
            kind=ws.provider.kind,
            pools=api.balancer.catalog.pools_of(workspace_id),
            health=site.services.health(workspace_id),
            limits=[r for r in rows if not r["key"].startswith("user:")],
            senders=senders[:_SENDERS_SHOWN],
            more_senders=max(len(senders) - _SENDERS_SHOWN, 0),
            changes=changes,
            failures=await activity.last_failures(workspace_id, limit=10),
        )  # fmt: skip

    return router

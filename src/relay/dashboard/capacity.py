"""Capacity planning (PRD KPIs): per pool, when it runs out at the current sending rate and when capacity comes
back; per workspace and pool, what the mail costs at each workspace's `cost_per_1000`."""

from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from ..api import Caller
from ..api.pools import MemberStatus, member_status
from ..balancer.eligibility import BELOW_THRESHOLD
from .site import Site

__all__ = ["RATE_WINDOW_MINUTES", "capacity_routes", "exhaustion_forecast"]

RATE_WINDOW_MINUTES = 15  # the "current send rate" is the last quarter hour's
_TOTALS_SECONDS = 60.0
_DAY = 86_400.0  # daily limits: what lasts longer than a day at a rate is given back faster than it is used


def exhaustion_forecast(members: list[MemberStatus], sent_per_minute: float) -> dict[str, Any]:
    """How long the pool's members that may take mail last at `sent_per_minute`, and whether their capacity
    comes back first. Members that are disabled, excluded or without capacity add nothing."""
    # A member only under its capacity threshold still takes mail: the pool spills to it when no other can.
    usable = [m for m in members if m.enabled and m.excluded in (None, BELOW_THRESHOLD)]
    remaining = sum(m.remaining for m in usable)
    limit = sum(m.limit for m in usable)
    back_in = min((m.next_capacity_in_seconds for m in usable if m.remaining < m.limit), default=None)
    exhausted_in = remaining / sent_per_minute * 60 if sent_per_minute > 0 else None
    return {
        "remaining": remaining,
        "limit": limit,
        "fraction": remaining / limit if limit else 0.0,
        "exhausted_in": exhausted_in,
        # Rolling windows hand capacity back as old sends age out: before that, the pool only runs dry if the
        # rate outruns what comes back.
        "back_first": exhausted_in is not None and back_in is not None and back_in < exhausted_in,
        "back_in": back_in,
        "beyond_day": exhausted_in is not None and exhausted_in > _DAY,
    }


def spend(sent: Mapping[tuple[str | None, str], int], costs: Mapping[str, float | None]) -> dict[str, Any]:
    """Spend by workspace and by pool ("direct" for mail a domain route sent) from sends per (pool, workspace)."""
    by_workspace: dict[str, float] = {}
    by_pool: dict[str, float] = {}
    for (pool, workspace), n in sent.items():
        cost = costs.get(workspace)
        if cost is None:
            continue
        amount = n * cost / 1000
        by_workspace[workspace] = by_workspace.get(workspace, 0.0) + amount
        by_pool[pool or "direct"] = by_pool.get(pool or "direct", 0.0) + amount
    return {"workspaces": by_workspace, "pools": by_pool, "total": sum(by_workspace.values())}


def capacity_routes(site: Site) -> APIRouter:
    router = APIRouter()
    Viewer = Annotated[Caller, Depends(site.sessions.require("viewer"))]  # noqa: N806 (a type, used as one)
    api, activity = site.services.api, site.services.activity
    cached: list[Any] = []  # [monotonic time read, day's sends, month's sends]

    async def totals() -> tuple[dict[tuple[str | None, str], int], dict[tuple[str | None, str], int]]:
        """The day's and the month's sends per route, read at most once a minute: a month of attempts is the
        largest read any page makes, and spend does not change by the second."""
        if not cached or api.clock.monotonic() - cached[0] > _TOTALS_SECONDS:
            now = api.clock.now()
            day = await activity.sent_by_route(now - timedelta(days=1))
            month = await activity.sent_by_route(now - timedelta(days=30))
            cached[:] = [api.clock.monotonic(), day, month]
        return cached[1], cached[2]

    @router.get("/capacity")
    async def capacity(request: Request, caller: Viewer) -> Response:
        now = api.clock.now()
        recent = await activity.sent_by_route(now - timedelta(minutes=RATE_WINDOW_MINUTES))
        day, month = await totals()
        pools = []
        for pool_id in sorted(api.balancer.catalog.pools):
            status = await api.balancer.get_pool_status(pool_id)
            if status is None:
                continue
            rate = sum(n for (p, _ws), n in recent.items() if p == pool_id) / RATE_WINDOW_MINUTES
            forecast = exhaustion_forecast([member_status(m) for m in status.members], rate)
            pools.append({"id": pool_id, "strategy": status.strategy, "per_minute": rate, **forecast})
        workspaces = api.settings().workspaces
        costs = {ws.id: ws.cost_per_1000 for ws in workspaces}
        rows = [
            {
                "id": ws.id,
                "cost": ws.cost_per_1000,
                "sent_day": sum(n for (_p, w), n in day.items() if w == ws.id),
                "sent_month": sum(n for (_p, w), n in month.items() if w == ws.id),
            }
            for ws in sorted(workspaces, key=lambda w: w.id)
        ]
        return site.render(
            request, caller, "capacity.html", "capacity",
            pools=pools,
            workspaces=rows,
            rate_minutes=RATE_WINDOW_MINUTES,
            spend_day=spend(day, costs),
            spend_month=spend(month, costs),
            priced=any(c is not None for c in costs.values()),
        )  # fmt: skip

    return router

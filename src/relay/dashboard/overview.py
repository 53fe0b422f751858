"""The overview: mail per minute over the last hour, the success rate, the queue, and each pool's availability."""

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from ..api import Caller
from ..store import minutes_back
from .site import Site

__all__ = ["OUTCOMES", "overview_routes"]

OUTCOMES = ("sent", "retry", "quota", "auth", "permanent")
_STATUSES = ("queued", "sending", "deferred", "sent", "failed")
_WINDOW_MINUTES = 60


async def pool_availability(site: Site) -> list[dict[str, Any]]:
    """Per pool: members able to take mail now out of those listed."""
    balancer = site.services.api.balancer
    out = []
    for pool_id in sorted(balancer.catalog.pools):
        status = await balancer.get_pool_status(pool_id)
        if status is not None:
            total = len(status.members)
            out.append({"id": pool_id, "enabled": status.enabled, "available": status.available, "total": total})
    return out


def overview_routes(site: Site) -> APIRouter:
    router = APIRouter()
    Viewer = Annotated[Caller, Depends(site.sessions.require("viewer"))]  # noqa: N806 (a type, used as one)
    api = site.services.api

    @router.get("")
    async def overview(request: Request, caller: Viewer) -> Response:
        now = api.clock.now()
        counted = {m.minute: m.outcomes for m in await site.services.activity.per_minute(
            now - timedelta(minutes=_WINDOW_MINUTES - 1, seconds=now.second, microseconds=now.microsecond)
        )}  # fmt: skip
        columns = [(m.strftime("%H:%M"), counted.get(m, {})) for m in minutes_back(now, _WINDOW_MINUTES)]
        totals = {o: sum(c.get(o, 0) for _, c in columns) for o in OUTCOMES}
        attempts = sum(totals.values())
        last_five = sum(c.get("sent", 0) for _, c in columns[-5:])
        queue = await api.queue.status_counts()
        return site.render(
            request, caller, "overview.html", "overview",
            columns=columns,
            outcomes=OUTCOMES,
            totals=totals,
            attempts=attempts,
            success_rate=(totals["sent"] / attempts) if attempts else None,
            per_minute=last_five / 5,
            queue=[(s, queue.get(s, 0)) for s in _STATUSES],
            queue_peak=max([*queue.values(), 1]),
            waiting=queue.get("queued", 0) + queue.get("deferred", 0),
            pools=await pool_availability(site),
        )  # fmt: skip

    return router

"""Pools: every member's weight, health and capacity with its time to reset, expected against actual shares; an
admin changes a member's weight or turns it on or off (audited like the API's write), and anyone may run the
pool's routing test."""

from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from pydantic import ValidationError

from ..api import Caller
from ..api.pool_writes import MemberPatch, member_change
from ..api.pools import member_status, pool_metrics_out
from ..errors import RelayError
from .site import Site, redirect

__all__ = ["pool_routes"]

_TEST_MAX = 1000  # simulated decisions per routing test: enough for shares, cheap for the page


async def pool_card(site: Site, pool_id: str) -> dict[str, Any] | None:
    api = site.services.api
    view = api.balancer.catalog.get(pool_id)
    status = await api.balancer.get_pool_status(pool_id)
    if view is None or status is None:
        return None
    metrics = await pool_metrics_out(api, view, 3600)
    shares = {m.workspace_id: m for m in metrics.workspaces}
    return {
        "view": view,
        "status": status,
        "members": [member_status(m) for m in status.members],
        "metrics": metrics,
        "shares": [(ws, m.expected_share, m.actual_share) for ws, m in shares.items()],
    }


def pool_routes(site: Site) -> APIRouter:
    router = APIRouter()
    Viewer = Annotated[Caller, Depends(site.sessions.require("viewer"))]  # noqa: N806 (a type, used as one)
    Admin = Annotated[Caller, Depends(site.sessions.require("admin"))]  # noqa: N806
    api = site.services.api

    @router.get("/pools")
    async def pools(request: Request, caller: Viewer) -> Response:
        cards = [await pool_card(site, pool_id) for pool_id in sorted(api.balancer.catalog.pools)]
        return site.render(request, caller, "pools.html", "pools", cards=[c for c in cards if c is not None])

    @router.get("/pools/{pool_id}")
    async def pool(request: Request, pool_id: str, caller: Viewer) -> Response:
        card = await pool_card(site, pool_id)
        if card is None:
            raise HTTPException(404, f'no pool "{pool_id}"')
        test = None
        sender = request.query_params.get("sender")
        if sender is not None:
            test = await routing_test(pool_id, sender[:512], request.query_params.get("count", "0"))
        audit = await api.audit.entries(target_type="pool", target_id=pool_id, limit=10)
        return site.render(request, caller, "pool.html", "pools", card=card, test=test, audit=audit)

    async def routing_test(pool_id: str, sender: str, count_text: str) -> dict[str, Any]:
        count = min(int(count_text), _TEST_MAX) if count_text.isdigit() else 0
        decision = await api.balancer.decide(sender or "test@example.invalid", pool_id)
        picks: Counter[str] = Counter()
        for _ in range(count):
            picks[(await api.balancer.decide(sender, pool_id)).workspace_id or "(none)"] += 1
        return {
            "sender": sender,
            "count": count,
            "chosen": decision.workspace_id,
            "spilled": decision.spilled,
            "microseconds": decision.elapsed_us,
            "members": [member_status(m) for m in decision.members],
            "picks": sorted(picks.items()),
        }

    @router.post("/pools/{pool_id}/members/{workspace_id}")
    async def change_member(request: Request, pool_id: str, workspace_id: str, caller: Admin) -> Response:
        fields = await site.sessions.form(request, caller)
        back = f"/dashboard/pools/{pool_id}"
        try:
            patch = MemberPatch(weight=fields.get("weight") or None, enabled=fields.get("enabled") == "on")
        except ValidationError:
            return redirect(back, "the weight must be a number from 0 to 999.99", error=True)
        changes = patch.model_dump(exclude_none=True)
        change = member_change(pool_id, workspace_id, lambda m: m.model_copy(update=changes))
        try:
            await api.config.change_pool(pool_id, change, actor=caller.name, action="update_member")
        except RelayError as exc:
            return redirect(back, str(exc), error=True)
        await api.refresh_pools()
        state = "enabled" if patch.enabled else "disabled"
        return redirect(back, f"{workspace_id}: weight {patch.weight}, {state} (audited as {caller.name})")

    return router

"""Pools: every member's weight, health and capacity with its time to reset, expected against actual shares; an
admin changes a member's weight or turns it on or off (audited like the API's write), and anyone may run the
pool's routing test."""

import re
from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from pydantic import ValidationError

from ..api import Caller
from ..api.pool_writes import MemberPatch, member_change
from ..api.pools import member_status, pool_metrics_out
from ..errors import RelayError
from ..pools import PreconditionFailedError, pool_etag
from .site import Site, redirect

__all__ = ["pool_routes"]

_COUNT = re.compile(r"[0-9]{1,7}")
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
        # The live refresh fetches this address again every few seconds: it refreshes the members, and must not
        # run the routing test again each time.
        if sender is not None and "x-relay-live" not in request.headers:
            test = await routing_test(pool_id, sender[:512], request.query_params.get("count", "0"))
        audit = await api.audit.entries(target_type="pool", target_id=pool_id, limit=10)
        row = await api.pool_tables.get(pool_id)
        etag = pool_etag(row) if row is not None else ""
        return site.render(request, caller, "pool.html", "pools", card=card, test=test, audit=audit, etag=etag)

    async def routing_test(pool_id: str, sender: str, count_text: str) -> dict[str, Any]:
        count = min(int(count_text), _TEST_MAX) if _COUNT.fullmatch(count_text) else 0
        sender = sender or "test@example.invalid"
        simulation = api.balancer.simulation()  # a dry run: the live round-robin positions stay where they are
        decision = await api.balancer.decide(sender, pool_id, simulation=simulation)
        picks: Counter[str] = Counter()
        for _ in range(count):
            picks[(await api.balancer.decide(sender, pool_id, simulation=simulation)).workspace_id or "(none)"] += 1
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
            # The form's version of the pool: a change made since the page was loaded is not silently undone.
            etag = fields.get("etag") or None
            await api.config.change_pool(pool_id, change, actor=caller.name, action="update_member", expected_etag=etag)
        except PreconditionFailedError:
            return redirect(back, "the pool was changed meanwhile (see its recent changes); nothing saved", error=True)
        except RelayError as exc:
            return redirect(back, str(exc), error=True)
        await api.refresh_pools()
        view = api.balancer.catalog.get(pool_id)
        member = next((m for m in view.members if m.workspace_id == workspace_id), None) if view else None
        if member is None:
            return redirect(back, f"{workspace_id}: saved (audited as {caller.name})")
        state = "enabled" if member.enabled else "disabled"
        return redirect(back, f"{workspace_id}: weight {member.weight}, {state} (audited as {caller.name})")

    return router

"""`/api/v1` pool and workspace read endpoints (PRD "Pool Management" and "Monitoring"): list and get pools, a
pool's status and metrics, the dry-run `test`, a workspace's pools and capacity.

No `from __future__ import annotations` here: FastAPI reads the handlers' annotations at definition time, and
the role dependency (`Viewer`) is a local alias that a postponed string could not resolve.
"""

from collections import Counter
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, Field

from ..pools import Decision, MemberReport, PoolView, pool_etag
from .auth import ApiKeys, Caller
from .errors import ERROR_RESPONSES, ApiError
from .services import ApiServices

__all__ = ["MemberStatus", "PoolMetricsOut", "member_status", "pool_metrics_out", "pools_router"]


class MemberOut(BaseModel):
    workspace_id: str
    weight: float
    enabled: bool


class PoolOut(BaseModel):
    id: str
    name: str
    domain_patterns: list[str]
    strategy: str
    enabled: bool
    max_failover_attempts: int | None
    max_ejection_percent: float
    workspaces: list[MemberOut]
    skipped: dict[str, str] = Field(description="listed members that cannot take mail here, with the reason")


class MemberStatus(BaseModel):
    workspace_id: str
    weight: float
    enabled: bool
    health: str
    last_error: str | None
    available_again_at: datetime | None
    sends_as: str
    remaining: int
    limit: int
    remaining_fraction: float
    next_capacity_in_seconds: float
    full_reset_in_seconds: float
    in_flight: int
    score: float | None
    excluded: str | None


class PoolStatusOut(BaseModel):
    pool_id: str
    name: str
    strategy: str
    enabled: bool
    available_workspaces: int
    members: list[MemberStatus]
    selections: dict[str, int] = Field(description="decisions placed by this process since it started")
    exhausted: int
    last_exhausted_at: datetime | None


class MemberMetrics(BaseModel):
    workspace_id: str
    selections: int
    successes: int
    success_rate: float | None
    actual_share: float | None
    expected_share: float | None


class PoolMetricsOut(BaseModel):
    pool_id: str
    window_seconds: float
    selections: int
    successes: int
    success_rate: float | None
    workspaces: list[MemberMetrics]


class PoolTestIn(BaseModel):
    sender: str = Field(default="test@example.invalid", max_length=512)
    count: int = Field(default=0, ge=0, le=100_000)


class PoolTestOut(BaseModel):
    pool_id: str
    sender: str
    strategy: str
    chosen: str | None
    spilled: bool
    decision_microseconds: float
    members: list[MemberStatus]
    picks: dict[str, int]
    expected_share: dict[str, float]


class CapacityOut(BaseModel):
    workspace_id: str
    limit: str
    kind: str
    max: int
    used: int
    remaining: int
    next_capacity_in_seconds: float
    full_reset_in_seconds: float


def pool_out(view: PoolView) -> PoolOut:
    return PoolOut(
        id=view.id,
        name=view.name,
        domain_patterns=list(view.domain_patterns),
        strategy=view.strategy,
        enabled=view.enabled,
        max_failover_attempts=view.max_failover_attempts,
        max_ejection_percent=view.max_ejection_percent,
        workspaces=[MemberOut(workspace_id=m.workspace_id, weight=m.weight, enabled=m.enabled) for m in view.members],
        skipped=dict(view.skipped),
    )


def member_status(m: MemberReport) -> MemberStatus:
    return MemberStatus(
        workspace_id=m.workspace_id,
        weight=m.weight,
        enabled=m.enabled,
        health=m.health,
        last_error=m.last_error,
        available_again_at=m.blocked_until,
        sends_as=m.sender,
        remaining=m.remaining,
        limit=m.limit,
        remaining_fraction=round(m.remaining_fraction, 4),
        next_capacity_in_seconds=round(m.next_capacity_in, 3),
        full_reset_in_seconds=round(m.full_reset_in, 3),
        in_flight=m.in_flight,
        score=None if m.score is None else round(m.score, 6),
        excluded=m.excluded,
    )


def _expected(strategy: str, decision: Decision) -> dict[str, float]:
    eligible = [m for m in decision.members if m.excluded is None and m.score is not None]
    if strategy == "least_used":
        return {}
    values = {m.workspace_id: (m.score if strategy == "capacity_weighted" else m.weight) or 0.0 for m in eligible}
    total = sum(values.values())
    return {k: round(v / total, 6) for k, v in values.items()} if total > 0 else {}


async def pool_metrics_out(services: ApiServices, view: PoolView, seconds: float) -> PoolMetricsOut:
    """A pool's decisions over the last `seconds` (every process's, from the decision log): per member, its
    picks, successes, and its actual share against the share its weight asks for."""
    since = services.clock.now() - timedelta(seconds=seconds)
    counts = await services.selections.counts(view.id, since)
    total = sum(n for n, _ in counts.values())
    succeeded = sum(s for _, s in counts.values())
    weights = {m.workspace_id: m.weight for m in view.members if m.enabled and m.weight > 0}
    weight_total = sum(weights.values())
    members = []
    for ws in sorted({*counts, *(m.workspace_id for m in view.members)}):
        n, s = counts.get(ws, (0, 0))
        members.append(
            MemberMetrics(
                workspace_id=ws,
                selections=n,
                successes=s,
                success_rate=round(s / n, 4) if n else None,
                actual_share=round(n / total, 4) if total else None,
                expected_share=round(weights[ws] / weight_total, 4) if ws in weights and weight_total else None,
            )
        )
    return PoolMetricsOut(
        pool_id=view.id,
        window_seconds=seconds,
        selections=total,
        successes=succeeded,
        success_rate=round(succeeded / total, 4) if total else None,
        workspaces=members,
    )


_WINDOWS = {"m": 60, "h": 3600, "d": 86_400}


def _window_seconds(window: str) -> float:
    unit = window[-1:]
    if unit not in _WINDOWS or not window[:-1].isdigit() or int(window[:-1]) <= 0:
        raise ApiError(422, 'window must look like "15m", "1h" or "7d"', field="window")
    return int(window[:-1]) * _WINDOWS[unit]


def pools_router(services: ApiServices, keys: ApiKeys) -> APIRouter:
    router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES)
    Viewer = Annotated[Caller, Depends(keys.requires("viewer"))]  # noqa: N806 (a type, used as one)

    def pool(pool_id: str) -> PoolView:
        view = services.balancer.catalog.get(pool_id)
        if view is None:
            raise ApiError(404, f'no pool "{pool_id}"')
        return view

    def workspace(workspace_id: str) -> None:
        if services.settings().workspace(workspace_id) is None:
            raise ApiError(404, f'no workspace "{workspace_id}"')

    @router.get("/pools", tags=["pools"])
    async def list_pools(_caller: Viewer) -> list[PoolOut]:
        return [pool_out(v) for v in sorted(services.balancer.catalog.pools.values(), key=lambda v: v.id)]

    @router.get("/pools/{pool_id}", tags=["pools"])
    async def get_pool(pool_id: str, response: Response, _caller: Viewer) -> PoolOut:
        body = pool_out(pool(pool_id))
        row = await services.pool_tables.get(pool_id)
        if row is not None:
            response.headers["ETag"] = pool_etag(row)
        return body

    @router.get("/pools/{pool_id}/status", tags=["monitoring"])
    async def pool_status(
        pool_id: str, _caller: Viewer, sender: Annotated[str | None, Query(max_length=512)] = None
    ) -> PoolStatusOut:
        pool(pool_id)
        status = await services.balancer.get_pool_status(pool_id, sender)
        if status is None:
            raise ApiError(404, f'no pool "{pool_id}"')
        return PoolStatusOut(
            pool_id=status.pool_id,
            name=status.name,
            strategy=status.strategy,
            enabled=status.enabled,
            available_workspaces=status.available,
            members=[member_status(m) for m in status.members],
            selections=status.selections,
            exhausted=status.exhausted,
            last_exhausted_at=status.last_exhausted_at,
        )

    @router.get("/pools/{pool_id}/metrics", tags=["monitoring"])
    async def pool_metrics(pool_id: str, _caller: Viewer, window: str = "1h") -> PoolMetricsOut:
        return await pool_metrics_out(services, pool(pool_id), _window_seconds(window))

    @router.post("/pools/{pool_id}/test", tags=["pools"])
    async def dry_run(pool_id: str, _caller: Viewer, body: PoolTestIn | None = None) -> PoolTestOut:
        """A dry run of the pool's decision for `sender` (nothing is reserved or sent); with `count`, the shares
        of that many simulated decisions."""
        view = pool(pool_id)
        request = body or PoolTestIn()
        simulation = services.balancer.simulation()  # the live round-robin positions stay where they are
        decision = await services.balancer.decide(request.sender, pool_id, simulation=simulation)
        picks: Counter[str] = Counter()
        for _ in range(request.count):
            pick = await services.balancer.decide(request.sender, pool_id, simulation=simulation)
            picks[pick.workspace_id or "(none)"] += 1
        return PoolTestOut(
            pool_id=pool_id,
            sender=request.sender,
            strategy=view.strategy,
            chosen=decision.workspace_id,
            spilled=decision.spilled,
            decision_microseconds=round(decision.elapsed_us, 1),
            members=[member_status(m) for m in decision.members],
            picks=dict(picks),
            expected_share=_expected(view.strategy, decision),
        )

    @router.get("/workspaces/{workspace_id}/pools", tags=["workspaces"])
    async def workspace_pools(workspace_id: str, _caller: Viewer) -> list[str]:
        workspace(workspace_id)
        return services.balancer.catalog.pools_of(workspace_id)

    @router.get("/workspaces/{workspace_id}/capacity", tags=["workspaces"])
    async def workspace_capacity(
        workspace_id: str, _caller: Viewer, sender: Annotated[str | None, Query(max_length=512)] = None
    ) -> list[CapacityOut]:
        workspace(workspace_id)
        rows = await services.capacity_report(workspace_id, sender)
        return [
            CapacityOut(
                workspace_id=ws,
                limit=limit.key,
                kind=limit.kind,
                max=usage.limit,
                used=usage.used,
                remaining=usage.remaining,
                next_capacity_in_seconds=round(usage.next_capacity_in, 3),
                full_reset_in_seconds=round(usage.full_reset_in, 3),
            )
            for ws, limit, usage in rows
        ]

    return router

"""`/api/v1` pool writes (PRD "Pool Management" and "Pool Membership"), admin only: create, replace and delete
pools, add, change and remove members. Each write is validated like the config file (the same models and
cross-object rules, errors naming the field), guarded by `If-Match` when given, written with its audit entry in
one transaction, and takes effect in this process at once and in every other within a second. A pool written
here is API-managed: a SIGHUP no longer overwrites it from the file.

No `from __future__ import annotations`: FastAPI reads these annotations at definition time (see pools.py).
"""

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Response
from pydantic import BaseModel, Field

from ..config import Pool, PoolMember
from ..config.checks import cross_checks
from ..config.documents import redact
from ..errors import ConfigError
from ..pools import pool_model, pool_row
from ..store import AuditEntry, PoolRow, pool_document
from .auth import ApiKeys, Caller
from .errors import ERROR_RESPONSES, ApiError
from .pools import PoolOut, etag, pool_out
from .services import ApiServices

__all__ = ["pool_writes_router"]


class MemberPatch(BaseModel):
    weight: float | None = Field(default=None, ge=0.0, le=999.99)
    enabled: bool | None = None


class AuditOut(BaseModel):
    id: int
    at: str
    actor: str
    action: str
    target_type: str
    target_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


def pool_writes_router(services: ApiServices, keys: ApiKeys) -> APIRouter:
    router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES)
    Admin = Annotated[Caller, Depends(keys.requires("admin"))]  # noqa: N806 (a type, used as one)
    Viewer = Annotated[Caller, Depends(keys.requires("viewer"))]  # noqa: N806
    IfMatch = Annotated[str | None, Header(alias="If-Match")]  # noqa: N806

    async def current(pool_id: str) -> PoolRow:
        row = await services.pool_tables.get(pool_id)
        if row is None:
            raise ApiError(404, f'no pool "{pool_id}"')
        return row

    async def check_precondition(pool_id: str, if_match: str | None) -> None:
        if if_match is None or if_match.strip() == "*":
            return
        await services.refresh_pools()
        view = services.balancer.catalog.get(pool_id)
        if view is None or etag(pool_out(view)) != if_match.strip():
            raise ApiError(412, f'pool "{pool_id}" changed since that ETag; read it again')

    async def validate(candidate: Pool, replacing: str | None) -> None:
        """The config file's cross-object rules over every pool as it would be after this write."""
        others = [pool_model(r) for r in await services.pool_tables.load() if r.id not in (candidate.id, replacing)]
        settings = services.settings()
        after = settings.model_copy(update={"load_balancing_pools": [*others, candidate]})
        prefix = f"load_balancing_pools[{len(others)}]"
        for problem in cross_checks(after):
            if problem.path.startswith(prefix) or problem.path == "load_balancing_pools":
                field = problem.path.removeprefix(prefix).lstrip(".") or None
                raise ApiError(422, problem.message, field=field)

    async def write(row: PoolRow, caller: Caller, action: str, before: PoolRow | None, response: Response) -> PoolOut:
        document = pool_document(before) if before is not None else None
        await services.pool_tables.save(row, actor=caller.name, action=action, before=document)
        await services.refresh_pools()  # this process at once; the others at their next refresh (≤ 1 s)
        view = services.balancer.catalog.get(row.id)
        assert view is not None
        body = pool_out(view)
        response.headers["ETag"] = etag(body)
        return body

    @router.post("/pools", status_code=201, tags=["pools"])
    async def create_pool(pool: Pool, caller: Admin, response: Response) -> PoolOut:
        if await services.pool_tables.get(pool.id) is not None:
            raise ApiError(409, f'pool "{pool.id}" exists; PUT /api/v1/pools/{pool.id} changes it', field="id")
        await validate(pool, None)
        return await write(pool_row(pool), caller, "create", None, response)

    @router.put("/pools/{pool_id}", tags=["pools"])
    async def replace_pool(
        pool_id: str, pool: Pool, caller: Admin, response: Response, if_match: IfMatch = None
    ) -> PoolOut:
        if pool.id != pool_id:
            raise ApiError(422, f'the body\'s id "{pool.id}" is not the path\'s "{pool_id}"', field="id")
        before = await current(pool_id)
        await check_precondition(pool_id, if_match)
        await validate(pool, pool_id)
        return await write(pool_row(pool), caller, "update", before, response)

    @router.delete("/pools/{pool_id}", status_code=204, tags=["pools"])
    async def delete_pool(pool_id: str, caller: Admin, if_match: IfMatch = None) -> Response:
        before = await current(pool_id)
        await check_precondition(pool_id, if_match)
        if not await services.pool_tables.remove(pool_id, actor=caller.name, before=pool_document(before)):
            raise ApiError(404, f'no pool "{pool_id}"')
        await services.refresh_pools()
        return Response(status_code=204)

    @router.post("/pools/{pool_id}/workspaces", status_code=201, tags=["membership"])
    async def add_member(
        pool_id: str, member: PoolMember, caller: Admin, response: Response, if_match: IfMatch = None
    ) -> PoolOut:
        before = await current(pool_id)
        await check_precondition(pool_id, if_match)
        if any(m.workspace_id == member.workspace_id for m in before.members):
            raise ApiError(409, f'workspace "{member.workspace_id}" is already a member', field="workspace_id")
        model = pool_model(before)
        candidate = model.model_copy(update={"workspaces": [*model.workspaces, member]})
        await validate(candidate, pool_id)
        return await write(pool_row(candidate), caller, "add_member", before, response)

    @router.put("/pools/{pool_id}/workspaces/{workspace_id}", tags=["membership"])
    async def change_member(
        pool_id: str,
        workspace_id: str,
        patch: MemberPatch,
        caller: Admin,
        response: Response,
        if_match: IfMatch = None,
    ) -> PoolOut:
        before = await current(pool_id)
        await check_precondition(pool_id, if_match)
        model = pool_model(before)
        if not any(m.workspace_id == workspace_id for m in model.workspaces):
            raise ApiError(404, f'workspace "{workspace_id}" is not a member of pool "{pool_id}"')
        changes = patch.model_dump(exclude_none=True)
        members = [m.model_copy(update=changes) if m.workspace_id == workspace_id else m for m in model.workspaces]
        candidate = model.model_copy(update={"workspaces": members})
        await validate(candidate, pool_id)
        return await write(pool_row(candidate), caller, "update_member", before, response)

    @router.delete("/pools/{pool_id}/workspaces/{workspace_id}", tags=["membership"])
    async def remove_member(
        pool_id: str, workspace_id: str, caller: Admin, response: Response, if_match: IfMatch = None
    ) -> PoolOut:
        before = await current(pool_id)
        await check_precondition(pool_id, if_match)
        model = pool_model(before)
        members = [m for m in model.workspaces if m.workspace_id != workspace_id]
        if len(members) == len(model.workspaces):
            raise ApiError(404, f'workspace "{workspace_id}" is not a member of pool "{pool_id}"')
        candidate = model.model_copy(update={"workspaces": members})
        return await write(pool_row(candidate), caller, "remove_member", before, response)

    @router.post("/audit/{entry_id}/rollback", tags=["audit"])
    async def rollback(entry_id: int, caller: Admin) -> AuditOut:
        """Restore what audit entry `entry_id` changed (a pool or a workspace) to how it was before, checked like
        any change; the rollback is audited too."""
        entry = await services.audit.get(entry_id)
        if entry is None:
            raise ApiError(404, f"no audit entry {entry_id}")
        try:
            await services.config.rollback(entry, actor=caller.name)
        except ConfigError as exc:
            raise ApiError(409, "cannot roll back: " + "; ".join(str(p) for p in exc.problems)) from None
        await services.refresh_pools()
        [done] = await services.audit.entries(target_type=entry.target_type, target_id=entry.target_id, limit=1)
        return _audit_out(done)

    @router.get("/audit", tags=["audit"])
    async def audit(
        _caller: Viewer, target_type: str | None = None, target_id: str | None = None, limit: int = 100
    ) -> list[AuditOut]:
        entries: list[AuditEntry] = await services.audit.entries(
            target_type=target_type, target_id=target_id, limit=max(1, min(limit, 1000))
        )
        return [_audit_out(e) for e in entries]

    return router


def _audit_out(e: AuditEntry) -> AuditOut:
    if e.target_type == "workspace":  # secrets stay in the database: shown masked, restored by a rollback
        e = dataclasses.replace(
            e,
            before=redact(e.before) if e.before is not None else None,
            after=redact(e.after) if e.after is not None else None,
        )
    return AuditOut(
        id=e.id,
        at=e.at.isoformat(),
        actor=e.actor,
        action=e.action,
        target_type=e.target_type,
        target_id=e.target_id,
        before=e.before,
        after=e.after,
    )

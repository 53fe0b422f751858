"""`/api/v1` pool writes (PRD "Pool Management" and "Pool Membership"), admin only: create, replace and delete
pools, add, change and remove members. Each write is validated like the config file (the same models and
cross-object rules, errors naming the field), guarded by `If-Match` when given, written with its audit entry in
one transaction under the configuration write lock (so concurrent writes from any process never lose one another
or together break a rule), and takes effect in this process at once and in every other within a second. A pool written
here is API-managed: a SIGHUP no longer overwrites it from the file.

No `from __future__ import annotations`: FastAPI reads these annotations at definition time (see pools.py).
"""

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi import Path as FastApiPath
from pydantic import BaseModel, Field

from ..config import Pool, PoolMember
from ..config.documents import redact
from ..errors import ConfigError, RelayError
from ..pools import ConflictError, NotFoundError, pool_etag
from ..store import AuditEntry
from .auth import ApiKeys, Caller
from .errors import ERROR_RESPONSES, ApiError
from .pools import PoolOut, pool_out
from .services import ApiServices
from .workspaces import api_error

__all__ = ["MemberPatch", "member_change", "pool_writes_router"]


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


def member_change(
    pool_id: str, workspace_id: str, change: Callable[[PoolMember], PoolMember | None]
) -> Callable[[Pool], Pool]:
    """The pool with one member changed (or removed, when `change` answers None), for `ConfigStore.change_pool`."""

    def apply(pool: Pool) -> Pool:
        if not any(m.workspace_id == workspace_id for m in pool.workspaces):
            raise NotFoundError(f'workspace "{workspace_id}" is not a member of pool "{pool_id}"')
        members = [change(m) if m.workspace_id == workspace_id else m for m in pool.workspaces]
        return pool.model_copy(update={"workspaces": [m for m in members if m is not None]})

    return apply


def pool_writes_router(services: ApiServices, keys: ApiKeys) -> APIRouter:
    router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES)
    Admin = Annotated[Caller, Depends(keys.requires("admin"))]  # noqa: N806 (a type, used as one)
    Viewer = Annotated[Caller, Depends(keys.requires("viewer"))]  # noqa: N806
    IfMatch = Annotated[str | None, Header(alias="If-Match")]  # noqa: N806

    config = services.config

    async def write(pool_id: str, response: Response, change: Callable[[], Awaitable[None]]) -> PoolOut:
        try:
            await change()
        except RelayError as exc:
            raise api_error(exc, f'load_balancing_pools["{pool_id}"]') from None
        await services.refresh_pools()  # this process at once; the others within a second
        view = services.balancer.catalog.get(pool_id)
        row = await services.pool_tables.get(pool_id)
        if view is None or row is None:  # deleted again by a concurrent request
            raise ApiError(409, f'pool "{pool_id}" changed again meanwhile; read it again')
        response.headers["ETag"] = pool_etag(row)
        return pool_out(view)

    @router.post("/pools", status_code=201, tags=["pools"])
    async def create_pool(pool: Pool, caller: Admin, response: Response) -> PoolOut:
        return await write(
            pool.id, response, lambda: config.save_pool(pool, actor=caller.name, action="create", create=True)
        )

    @router.put("/pools/{pool_id}", tags=["pools"])
    async def replace_pool(
        pool_id: str, pool: Pool, caller: Admin, response: Response, if_match: IfMatch = None
    ) -> PoolOut:
        if pool.id != pool_id:
            raise ApiError(422, f'the body\'s id "{pool.id}" is not the path\'s "{pool_id}"', field="id")
        return await write(
            pool_id,
            response,
            lambda: config.save_pool(pool, actor=caller.name, action="update", create=False, expected_etag=if_match),
        )

    @router.delete("/pools/{pool_id}", status_code=204, tags=["pools"])
    async def delete_pool(pool_id: str, caller: Admin, if_match: IfMatch = None) -> Response:
        try:
            await config.delete_pool(pool_id, actor=caller.name, expected_etag=if_match)
        except RelayError as exc:
            raise api_error(exc) from None
        await services.refresh_pools()
        return Response(status_code=204)

    @router.post("/pools/{pool_id}/workspaces", status_code=201, tags=["membership"])
    async def add_member(
        pool_id: str, member: PoolMember, caller: Admin, response: Response, if_match: IfMatch = None
    ) -> PoolOut:
        def add(pool: Pool) -> Pool:
            if any(m.workspace_id == member.workspace_id for m in pool.workspaces):
                raise ConflictError(f'workspace "{member.workspace_id}" is already a member', field="workspace_id")
            return pool.model_copy(update={"workspaces": [*pool.workspaces, member]})

        return await write(
            pool_id,
            response,
            lambda: config.change_pool(pool_id, add, actor=caller.name, action="add_member", expected_etag=if_match),
        )

    @router.put("/pools/{pool_id}/workspaces/{workspace_id}", tags=["membership"])
    async def change_member(
        pool_id: str,
        workspace_id: str,
        patch: MemberPatch,
        caller: Admin,
        response: Response,
        if_match: IfMatch = None,
    ) -> PoolOut:
        changes = patch.model_dump(exclude_none=True)
        change = member_change(pool_id, workspace_id, lambda m: m.model_copy(update=changes))
        return await write(
            pool_id,
            response,
            lambda: config.change_pool(
                pool_id, change, actor=caller.name, action="update_member", expected_etag=if_match
            ),
        )

    @router.delete("/pools/{pool_id}/workspaces/{workspace_id}", tags=["membership"])
    async def remove_member(
        pool_id: str, workspace_id: str, caller: Admin, response: Response, if_match: IfMatch = None
    ) -> PoolOut:
        change = member_change(pool_id, workspace_id, lambda _m: None)
        return await write(
            pool_id,
            response,
            lambda: config.change_pool(
                pool_id, change, actor=caller.name, action="remove_member", expected_etag=if_match
            ),
        )

    @router.post("/audit/{entry_id}/rollback", tags=["audit"])
    async def rollback(entry_id: Annotated[int, FastApiPath(ge=1, le=2**63 - 1)], caller: Admin) -> AuditOut:
        """Restore what audit entry `entry_id` changed (a pool or a workspace) to how it was before, checked like
        any change; the rollback is audited too."""
        entry = await services.audit.get(entry_id)
        if entry is None:
            raise ApiError(404, f"no audit entry {entry_id}")
        try:
            await services.config.rollback(entry, actor=caller.name)
        except RelayError as exc:
            problems = exc.problems if isinstance(exc, ConfigError) else [str(exc)]
            raise ApiError(409, "cannot roll back: " + "; ".join(str(p) for p in problems)) from None
        await services.refresh_pools()
        [done] = await services.audit.entries(target_type=entry.target_type, target_id=entry.target_id, limit=1)
        return _audit_out(done)

    @router.get("/audit", tags=["audit"])
    async def audit(
        _caller: Viewer,
        target_type: Annotated[str | None, Query(max_length=32)] = None,
        target_id: Annotated[str | None, Query(max_length=255)] = None,
        limit: int = 100,
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

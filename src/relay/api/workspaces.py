"""`/api/v1/workspaces`: list, read, create, replace and delete workspaces (issue 7).

The body is the config file's workspace object, validated by the same models and cross-object rules; a write
takes effect in this process at once and in every other within a second. Secrets are write-only: responses show
`********` for a literal secret (an `env:NAME` reference is not a secret and is shown), and writing `********`
back keeps the stored value, so a workspace read here can be edited and written back. Writes need `admin`, reads
`viewer`; `If-Match` with the `ETag` of a read guards against overwriting someone else's change (412).

No `from __future__ import annotations`: FastAPI reads these annotations at definition time (see pools.py).
"""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Response
from pydantic import BaseModel, Field

from ..config import Workspace
from ..config.documents import redact, workspace_document
from ..errors import ConfigError
from .auth import ApiKeys, Caller
from .errors import ERROR_RESPONSES, ApiError
from .services import ApiServices

__all__ = ["config_error", "workspaces_router"]


class WorkspaceOut(BaseModel):
    id: str
    managed_by: Literal["file", "api"] = Field(
        description='"file": written from the config file (a SIGHUP rewrites it); "api": changed here since, '
        "and the database's version is the one that counts"
    )
    version: int = Field(description="incremented on every change; the ETag")
    definition: dict[str, Any] = Field(description="the config file's workspace object, literal secrets masked")


def etag(version: int) -> str:
    return f'"v{version}"'


def config_error(exc: ConfigError, within: str = "") -> ApiError:
    """422 naming the first problem's field (relative to the body when it lies `within` it); all problems in the
    message."""
    first = exc.problems[0]
    field = first.path.removeprefix(within).lstrip(".") if within and first.path.startswith(within) else first.path
    message = "; ".join(str(p) if p is not first else p.message for p in exc.problems)
    return ApiError(422, message, field=field or None)


def workspaces_router(services: ApiServices, keys: ApiKeys) -> APIRouter:
    router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES, tags=["workspaces"])
    Admin = Annotated[Caller, Depends(keys.requires("admin"))]  # noqa: N806 (a type, used as one)
    Viewer = Annotated[Caller, Depends(keys.requires("viewer"))]  # noqa: N806
    IfMatch = Annotated[str | None, Header(alias="If-Match")]  # noqa: N806
    config = services.config

    async def read(workspace_id: str) -> WorkspaceOut:
        definition = await config.workspaces.get(workspace_id)
        if definition is None:
            raise ApiError(404, f'no workspace "{workspace_id}"')
        return WorkspaceOut(
            id=definition.id,
            managed_by="api" if definition.managed_by == "api" else "file",
            version=definition.version,
            definition=redact(definition.document),
        )

    def check_precondition(current: WorkspaceOut, if_match: str | None) -> None:
        if if_match is not None and if_match.strip() not in ("*", etag(current.version)):
            raise ApiError(412, f'workspace "{current.id}" changed since that ETag; read it again')

    async def write(document: dict[str, Any], caller: Caller, response: Response) -> WorkspaceOut:
        workspace_id = str(document["id"])
        try:
            await config.save_workspace(document, actor=caller.name)
        except ConfigError as exc:
            raise config_error(exc, f'workspaces["{workspace_id}"]') from None
        await services.refresh_pools()  # this process at once; the others within a second
        body = await read(workspace_id)
        response.headers["ETag"] = etag(body.version)
        return body

    @router.get("/workspaces")
    async def list_workspaces(_caller: Viewer) -> list[WorkspaceOut]:
        return [
            WorkspaceOut(
                id=d.id,
                managed_by="api" if d.managed_by == "api" else "file",
                version=d.version,
                definition=redact(d.document),
            )
            for d in await config.workspaces.load()
        ]

    @router.get("/workspaces/{workspace_id}")
    async def get_workspace(workspace_id: str, _caller: Viewer, response: Response) -> WorkspaceOut:
        body = await read(workspace_id)
        response.headers["ETag"] = etag(body.version)
        return body

    @router.post("/workspaces", status_code=201)
    async def create_workspace(workspace: Workspace, caller: Admin, response: Response) -> WorkspaceOut:
        if await config.workspaces.get(workspace.id) is not None:
            raise ApiError(
                409, f'workspace "{workspace.id}" exists; PUT /api/v1/workspaces/{workspace.id} changes it', field="id"
            )
        return await write(workspace_document(workspace), caller, response)

    @router.put("/workspaces/{workspace_id}")
    async def replace_workspace(
        workspace_id: str, workspace: Workspace, caller: Admin, response: Response, if_match: IfMatch = None
    ) -> WorkspaceOut:
        if workspace.id != workspace_id:
            raise ApiError(422, f'the body\'s id "{workspace.id}" is not the path\'s "{workspace_id}"', field="id")
        check_precondition(await read(workspace_id), if_match)
        return await write(workspace_document(workspace), caller, response)

    @router.delete("/workspaces/{workspace_id}", status_code=204)
    async def delete_workspace(workspace_id: str, caller: Admin, if_match: IfMatch = None) -> Response:
        check_precondition(await read(workspace_id), if_match)
        try:
            deleted = await config.delete_workspace(workspace_id, actor=caller.name)
        except ConfigError as exc:
            raise ApiError(409, "; ".join(str(p) for p in exc.problems)) from None
        if not deleted:
            raise ApiError(404, f'no workspace "{workspace_id}"')
        await services.refresh_pools()
        return Response(status_code=204)

    return router

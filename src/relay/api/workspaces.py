"""`/api/v1/workspaces`: list, read, create, replace and delete workspaces (issue 7).

The body is the config file's workspace object, validated by the same models and cross-object rules; a write
takes effect in this process at once and in every other within a second. Secrets are write-only: responses show
`********` for a literal secret (an `env:NAME` reference is not a secret and is shown), and writing `********`
back keeps the stored value, so a workspace read here can be edited and written back. Writes need `admin`, reads
`viewer`; `If-Match` with the `ETag` of a read guards against overwriting someone else's change (412).

No `from __future__ import annotations`: FastAPI reads these annotations at definition time (see pools.py).
"""

import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Response
from pydantic import BaseModel, Field

from ..config import Workspace
from ..config.documents import check_api_env_references, check_api_paths, redact, workspace_document
from ..errors import ConfigError, RelayError
from ..pools import ConflictError, NotFoundError, PreconditionFailedError
from ..store import WorkspaceDefinition
from .auth import ApiKeys, Caller
from .errors import ERROR_RESPONSES, ApiError
from .services import ApiServices

__all__ = ["api_error", "config_error", "expected_version", "workspaces_router"]


class WorkspaceOut(BaseModel):
    id: str
    managed_by: Literal["file", "api"] = Field(
        description='"file": written from the config file (a SIGHUP rewrites it); "api": changed here since, '
        "and the database's version is the one that counts"
    )
    version: int = Field(description="incremented on every change; the ETag")
    definition: dict[str, Any] = Field(description="the config file's workspace object, literal secrets masked")


def _out(definition: WorkspaceDefinition) -> WorkspaceOut:
    return WorkspaceOut(
        id=definition.id,
        managed_by="api" if definition.managed_by == "api" else "file",
        version=definition.version,
        definition=redact(definition.document),
    )


def etag(version: int) -> str:
    return f'"v{version}"'


def config_error(exc: ConfigError, within: str = "") -> ApiError:
    """422 naming the first problem's field (relative to the body when it lies `within` it); all problems in the
    message."""
    first = exc.problems[0]
    field = first.path.removeprefix(within).lstrip(".") if within and first.path.startswith(within) else first.path
    message = "; ".join(str(p) if p is not first else p.message for p in exc.problems)
    return ApiError(422, message, field=field or None)


def api_error(exc: RelayError, within: str = "") -> ApiError:
    """The HTTP answer to a refused configuration change."""
    if isinstance(exc, ConfigError):
        return config_error(exc, within)
    status = {NotFoundError: 404, ConflictError: 409, PreconditionFailedError: 412}.get(type(exc), 409)
    return ApiError(status, str(exc), field=getattr(exc, "field", None))


def expected_version(if_match: str | None) -> int | None:
    """The version an `If-Match` names (`"v3"`); None for none or `*`. A malformed one matches nothing."""
    if if_match is None or if_match.strip() == "*":
        return None
    tag = if_match.strip().removeprefix("W/").strip('"')
    return int(tag[1:]) if re.fullmatch(r"v[0-9]{1,18}", tag) else -1


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
        return _out(definition)

    async def write(
        document: dict[str, Any], caller: Caller, response: Response, *, create: bool, if_match: str | None = None
    ) -> WorkspaceOut:
        workspace_id = str(document["id"])
        # Through the API, `env:NAME` names only RELAY_SECRET_* variables; a reference already stored (from the
        # config file) is kept while it goes to the same place. Checked before anything is built or sent.
        stored = None if create else await config.workspaces.get(workspace_id)
        previous = stored.document if stored is not None else None
        problems = check_api_env_references(document, previous) + check_api_paths(document, previous)
        if problems:
            raise config_error(ConfigError(problems))
        try:
            await config.save_workspace(
                document, actor=caller.name, create=create, expected_version=expected_version(if_match)
            )
        except RelayError as exc:
            raise api_error(exc, f'workspaces["{workspace_id}"]') from None
        await services.refresh_pools()  # this process at once; the others within a second
        body = await read(workspace_id)
        response.headers["ETag"] = etag(body.version)
        return body

    @router.get("/workspaces")
    async def list_workspaces(_caller: Viewer) -> list[WorkspaceOut]:
        return [_out(d) for d in await config.workspaces.load()]

    @router.get("/workspaces/{workspace_id}")
    async def get_workspace(workspace_id: str, _caller: Viewer, response: Response) -> WorkspaceOut:
        body = await read(workspace_id)
        response.headers["ETag"] = etag(body.version)
        return body

    @router.post("/workspaces", status_code=201)
    async def create_workspace(workspace: Workspace, caller: Admin, response: Response) -> WorkspaceOut:
        return await write(workspace_document(workspace), caller, response, create=True)

    @router.put("/workspaces/{workspace_id}")
    async def replace_workspace(
        workspace_id: str, workspace: Workspace, caller: Admin, response: Response, if_match: IfMatch = None
    ) -> WorkspaceOut:
        if workspace.id != workspace_id:
            raise ApiError(422, f'the body\'s id "{workspace.id}" is not the path\'s "{workspace_id}"', field="id")
        return await write(workspace_document(workspace), caller, response, create=False, if_match=if_match)

    @router.delete("/workspaces/{workspace_id}", status_code=204)
    async def delete_workspace(workspace_id: str, caller: Admin, if_match: IfMatch = None) -> Response:
        stored = await config.workspaces.get(workspace_id)
        if stored is not None and stored.managed_by == "file":
            raise ApiError(
                409,
                f'workspace "{workspace_id}" comes from the config file, which would write it back at the next start '
                "or SIGHUP: remove it from the file and send SIGHUP",
            )
        try:
            await config.delete_workspace(workspace_id, actor=caller.name, expected_version=expected_version(if_match))
        except RelayError as exc:
            raise api_error(exc) from None
        await services.refresh_pools()
        return Response(status_code=204)

    return router

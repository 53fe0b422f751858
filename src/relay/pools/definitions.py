"""The workspaces this process runs by: the database's definitions, seeded from the config file.

At start and on SIGHUP the file's workspaces are written to the `workspaces` table (except those the API has
taken over); then every definition is read back, validated with the file's own models and cross-object rules,
and put in place of the file's workspaces. `changed()` is the one-query poll that tells a process that another
one (or the API, or `relay config apply`) changed a definition.
"""

from __future__ import annotations

import structlog
from pydantic import ValidationError

from ..config import Settings, Workspace, validation_problems
from ..config.checks import cross_checks
from ..config.documents import with_workspaces, workspace_document
from ..errors import ConfigError, Problem
from ..store import PoolTables, WorkspaceDefinition, WorkspaceTables
from .config_store import pool_model

__all__ = ["WorkspaceDefinitions"]

log = structlog.get_logger(__name__)


class WorkspaceDefinitions:
    def __init__(self, tables: WorkspaceTables, pools: PoolTables | None = None) -> None:
        self._tables = tables
        self._pools = pools
        self._versions: dict[str, int] | None = None

    async def seed(self, file_settings: Settings) -> None:
        """Write the file's workspaces; the ones the API has taken over are left as they are, with a warning."""
        ignored = await self._tables.sync_file([workspace_document(w) for w in file_settings.workspaces])
        if ignored:
            log.warning(
                "workspaces.file_ignored",
                workspaces=ignored,
                reason="changed through the API since; the database is the source of truth "
                "(change the file to match, or `relay config export` to see the database's version)",
            )

    async def changed(self) -> bool:
        return await self._tables.versions() != self._versions

    async def settings(self, file_settings: Settings) -> Settings:
        """`file_settings` with the database's workspaces. Raises `ConfigError` (every problem, by JSON path) when
        they do not validate here — an `env:NAME` this process lacks, or a row edited into an invalid state; the
        versions read count as seen either way, so one bad change is reported once, not every second."""
        definitions = _in_file_order(await self._tables.load(), file_settings)
        self._versions = {d.id: d.version for d in definitions}
        workspaces: list[Workspace] = []
        problems: list[Problem] = []
        for index, definition in enumerate(definitions):
            try:
                workspaces.append(Workspace.model_validate(definition.document))
            except ValidationError as exc:
                problems += validation_problems(exc, ("workspaces", index))
        effective = with_workspaces(file_settings, workspaces)
        if not problems:
            problems = cross_checks(await self._as_checked(effective))
        if problems:
            raise ConfigError([Problem(f"database: {_id_at(p.path, definitions)}", p.message) for p in problems])
        return effective

    async def _as_checked(self, settings: Settings) -> Settings:
        """`settings` with the file's pools that the API has taken over replaced by the database's version: a pool
        the file still lists with a member the API removed (and then deleted) is not a problem."""
        if self._pools is None:
            return settings
        taken_over = {row.id: row for row in await self._pools.load() if row.managed_by == "api"}
        pools = [pool_model(taken_over[p.id]) if p.id in taken_over else p for p in settings.load_balancing_pools]
        return settings.model_copy(update={"load_balancing_pools": pools})


def _in_file_order(definitions: list[WorkspaceDefinition], settings: Settings) -> list[WorkspaceDefinition]:
    """The file's workspaces in the file's order, then the database's others by id."""
    position = {w.id: i for i, w in enumerate(settings.workspaces)}
    return sorted(definitions, key=lambda d: (position.get(d.id, len(position)), d.id))


def _id_at(path: str, definitions: list[WorkspaceDefinition]) -> str:
    """`workspaces[2].domains[0]` → `workspaces["mg-1"].domains[0]`: the position means nothing to the operator."""
    if path.startswith("workspaces["):
        index, _, rest = path[len("workspaces[") :].partition("]")
        if index.isdigit() and int(index) < len(definitions):
            return f'workspaces["{definitions[int(index)].id}"]{rest}'
    return path

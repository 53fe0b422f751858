"""The workspaces this process runs by: the database's definitions, seeded from the config file.

At start and on SIGHUP the file's workspaces are written to the `workspaces` table (except those the API has
taken over); then every definition is read back, validated with the file's own models and cross-object rules,
and put in place of the file's workspaces. `changed()` is the one-query poll that tells a process that another
one (or the API, or `relay config apply`) changed a definition.

One bad definition never stops the rest. A workspace whose definition does not validate here (an `env:NAME` this
host lacks, a row edited by hand into a conflict) keeps the version this process last ran, or is left out if it
never ran one; each problem is reported by the workspace's id and field. Writers check changes against the same
view (`checked_view`), so through the API and the CLI such a definition cannot be written in the first place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from ..config import Settings, Workspace, validation_problems
from ..config.checks import cross_checks
from ..config.documents import with_workspaces, workspace_document
from ..errors import Problem
from ..store import PoolTables, WorkspaceDefinition, WorkspaceTables, config_change
from .config_store import checked_view

__all__ = ["Reading", "WorkspaceDefinitions"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Reading:
    """What the database's definitions amount to: the settings to run, the problems found (each already worked
    around), and the versions read, to `commit` once the settings are adopted."""

    settings: Settings
    problems: list[Problem] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)


class WorkspaceDefinitions:
    def __init__(self, tables: WorkspaceTables, pools: PoolTables | None = None) -> None:
        self._tables = tables
        self._pools = pools
        self._versions: dict[str, int] | None = None
        self._running: dict[str, Workspace] = {}

    async def seed(self, file_settings: Settings) -> None:
        """Write the file's workspaces; the ones the API has taken over are left as they are, with a warning."""
        _warn_ignored(await self._tables.sync_file([workspace_document(w) for w in file_settings.workspaces]))

    async def changed(self) -> bool:
        return await self._tables.versions() != self._versions

    def commit(self, reading: Reading) -> None:
        """`reading` is what this process runs now: its versions are seen, its workspaces the last good ones."""
        self._versions = reading.versions
        self._running = {w.id: w for w in reading.settings.workspaces}

    async def read(self, file_settings: Settings) -> Reading:
        """`file_settings` with the database's workspaces, bad definitions worked around (see the module)."""
        definitions = _in_file_order(await self._tables.load(), file_settings)
        return await self._evaluate(file_settings, [(d.id, d.document) for d in definitions], definitions)

    async def seed_checked(self, running: Settings, file_settings: Settings) -> list[Problem]:
        """Seed `file_settings` unless that adds problems to the configuration `running` (the file this process
        runs by, with the database) has; returns them, writing nothing. Checked and written in one transaction
        under the configuration write lock, so no API change can slip in between."""
        async with config_change(self._tables.db) as connection:
            added = await self.preview(running, file_settings, connection)
            if added:
                return added
            ignored = await self._tables.sync_file(
                [workspace_document(w) for w in file_settings.workspaces], connection=connection
            )
        _warn_ignored(ignored)
        return []

    async def preview(
        self, running: Settings, file_settings: Settings, connection: AsyncConnection | None = None
    ) -> list[Problem]:
        """The problems seeding `file_settings` would add to the configuration as it is with `running` (SIGHUP,
        start): a file workspace clashing with one the API manages, a workspace dropped that an API-managed pool
        still lists, a file pool on a pattern an API pool has."""
        definitions = await self._tables.load(connection)
        stored = {d.id: d for d in definitions}
        listed = {w.id: workspace_document(w) for w in file_settings.workspaces}
        merged = [(d.id, d.document) for d in definitions if d.managed_by == "api"]
        merged += [(i, doc) for i, doc in listed.items() if i not in stored or stored[i].managed_by != "api"]
        before = await self._evaluate(running, [(d.id, d.document) for d in definitions], definitions, connection)
        after = await self._evaluate(file_settings, merged, definitions, connection)
        known = {str(p) for p in before.problems}
        return [p for p in after.problems if str(p) not in known]

    async def _evaluate(
        self,
        file_settings: Settings,
        documents: list[tuple[str, dict[str, object]]],
        definitions: list[WorkspaceDefinition],
        connection: AsyncConnection | None = None,
    ) -> Reading:
        versions = {d.id: d.version for d in definitions}
        rows = await self._pools.load(connection) if self._pools is not None else []
        problems: list[Problem] = []
        validated: dict[str, Workspace | None] = {}
        in_file = {w.id: w for w in file_settings.workspaces}
        for workspace_id, document in documents:
            same = _same_model(document, self._running.get(workspace_id), in_file.get(workspace_id))
            if same is not None:
                validated[workspace_id] = same
                continue
            try:
                validated[workspace_id] = Workspace.model_validate(document)
            except ValidationError as exc:
                where = f'database: workspaces["{workspace_id}"]'
                problems += [_under(where, p) for p in validation_problems(exc)]
                validated[workspace_id] = self._running.get(workspace_id)
        # What runs now claims its domains first, so a clash is blamed on the newcomer; then the file's order.
        position = {w.id: i for i, w in enumerate(file_settings.workspaces)}
        order = sorted(
            validated,
            key=lambda i: (validated[i] != self._running.get(i), position.get(i, len(position)), i),
        )
        chosen = {i: validated[i] for i in order}
        # A workspace a cross-object rule objects to falls back to the version this process runs, then out: each
        # round moves at least one workspace a step down (new → running → out), so 2n + 1 rounds always end it.
        for _ in range(2 * len(chosen) + 1):
            running = [w for w in chosen.values() if w is not None]
            view = checked_view(file_settings, running, rows)
            found = cross_checks(view)
            blamed = {running[i].id: p for p in found if (i := _workspace_index(p.path)) is not None}
            if not blamed:
                problems += [Problem(f"database: {_named(p.path, view)}", p.message) for p in found]
                unique = list({str(p): p for p in problems}.values())
                return Reading(with_workspaces(file_settings, running), unique, versions)
            for workspace_id, problem in blamed.items():
                problems.append(Problem(f"database: {_named(problem.path, view)}", problem.message))
                fallback = self._running.get(workspace_id)
                chosen[workspace_id] = fallback if fallback is not None and fallback != chosen[workspace_id] else None
        raise AssertionError("unreachable: every round moves a workspace a step down")


def _same_model(document: dict[str, object], *known: Workspace | None) -> Workspace | None:
    """The model already validated (this process's running one, or the file's) whose document `document` is:
    the same definition read back. Reusing it keeps one model per workspace in memory instead of one for the file
    and one for the database (≈ 3.4 KB each)."""
    for workspace in known:
        if workspace is not None and workspace_document(workspace) == document:
            return workspace
    return None


def _warn_ignored(ignored: list[str]) -> None:
    if ignored:
        log.warning(
            "workspaces.file_ignored",
            workspaces=ignored,
            reason="changed through the API since; the database is the source of truth "
            "(change the file to match, or `relay config export` to see the database's version)",
        )


def _in_file_order(definitions: list[WorkspaceDefinition], settings: Settings) -> list[WorkspaceDefinition]:
    """The file's workspaces in the file's order, then the database's others by id."""
    position = {w.id: i for i, w in enumerate(settings.workspaces)}
    return sorted(definitions, key=lambda d: (position.get(d.id, len(position)), d.id))


def _workspace_index(path: str) -> int | None:
    if path.startswith("workspaces["):
        index = path[len("workspaces[") :].partition("]")[0]
        if index.isdigit():
            return int(index)
    return None


def _named(path: str, settings: Settings) -> str:
    """`workspaces[2].domains[0]` → `workspaces["mg-1"].domains[0]`: the position means nothing to the operator."""
    for name, items in (("workspaces", settings.workspaces), ("load_balancing_pools", settings.load_balancing_pools)):
        prefix = f"{name}["
        if path.startswith(prefix):
            index, _, rest = path[len(prefix) :].partition("]")
            if index.isdigit() and int(index) < len(items):
                return f'{name}["{items[int(index)].id}"]{rest}'
    return path


def _under(prefix: str, problem: Problem) -> Problem:
    path = problem.path
    return Problem(f"{prefix}{'' if not path or path.startswith('[') else '.'}{path}", problem.message)

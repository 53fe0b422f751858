"""Configuration changes made in the database: by the API, `relay config apply` and rollbacks.

Each change runs in one transaction holding the configuration write lock (`store.config_change`): it reads the
current state, checks the change like the config file — the same models, and the cross-object rules over the
whole configuration as it would be after the change — writes it with its audit entry, and commits. Concurrent
changes from any process are serialised, so each is checked against the state it replaces. A change is refused
when it adds a problem (a pool naming a workspace that is gone, a domain served twice); problems the
configuration already had do not block unrelated changes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from ..config import Pool, PoolMember, Settings, Workspace, validation_problems
from ..config.checks import cross_checks
from ..config.documents import MaskedSecretError, restore_masked
from ..config.loader import json_path
from ..config.secrets import UNRESOLVED
from ..errors import ConfigError, Problem, ProviderError, RelayError
from ..store import (
    AuditEntry,
    AuditLog,
    Database,
    PoolMemberRow,
    PoolRow,
    PoolTables,
    WorkspaceTables,
    config_change,
    pool_document,
)

__all__ = [
    "ConfigStore",
    "ConflictError",
    "Current",
    "NotFoundError",
    "PreconditionFailedError",
    "checked_view",
    "pool_etag",
    "pool_model",
    "pool_model_from_document",
    "pool_row",
]


class NotFoundError(RelayError):
    """No such pool, workspace or audit entry."""


class ConflictError(RelayError):
    """The change cannot be made in the current state (the id exists, something still needs it)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class PreconditionFailedError(RelayError):
    """`If-Match` named a version that is no longer current."""


@dataclass(frozen=True, slots=True)
class Current:
    """The configuration as the database holds it: the file's other settings with the database's workspaces and
    pools (`settings`, what changes are checked against), and the stored documents they came from."""

    settings: Settings
    workspace_documents: dict[str, dict[str, Any]]
    versions: dict[str, int]
    pools: dict[str, PoolRow]


class ConfigStore:
    def __init__(
        self,
        db: Database,
        pools: PoolTables,
        workspaces: WorkspaceTables,
        audit: AuditLog,
        file_settings: Callable[[], Settings],
        *,
        resolve_env: bool = True,
        provider_check: Callable[[Workspace], Awaitable[None]] | None = None,
    ) -> None:
        self.db = db
        self.pools = pools
        self.workspaces = workspaces
        self.audit = audit
        self._file_settings = file_settings
        # The API validates as the serving process it is (an `env:NAME` it cannot read is refused); the CLI only
        # checks the references, since it runs where the relays' environment is not.
        self._context = None if resolve_env else UNRESOLVED
        # Builds (and closes) the workspace's provider, raising `ProviderError` when it cannot be: an unreadable
        # service-account key is refused here rather than found by every process after the write.
        self._provider_check = provider_check

    async def current(self, connection: AsyncConnection | None = None) -> Current:
        definitions = await self.workspaces.load(connection)
        rows = await self.pools.load(connection)
        workspaces = []
        for definition in definitions:
            try:
                workspaces.append(Workspace.model_validate(definition.document, context=self._context))
            except ValidationError:
                continue  # reported by every serving process; not this change's problem
        settings = checked_view(self._file_settings(), workspaces, rows)
        return Current(
            settings=settings,
            workspace_documents={d.id: d.document for d in definitions},
            versions={d.id: d.version for d in definitions},
            pools={r.id: r for r in rows},
        )

    def parse_workspace(
        self, document: dict[str, Any], stored: dict[str, Any] | None
    ) -> tuple[Workspace, dict[str, Any]]:
        """Validate a workspace document given by an operator; masked secrets keep the stored values.
        Returns the model and the document to store. Raises `ConfigError` naming each field."""
        try:
            document = restore_masked(document, stored)
        except MaskedSecretError as exc:
            raise ConfigError([Problem(json_path(exc.path), str(exc))]) from None
        try:
            return Workspace.model_validate(document, context=self._context), document
        except ValidationError as exc:
            raise ConfigError(validation_problems(exc)) from None

    # Workspaces

    async def save_workspace(
        self,
        document: dict[str, Any],
        *,
        actor: str,
        create: bool | None = None,
        expected_version: int | None = None,
        action: str | None = None,
    ) -> Workspace:
        """Create (`create=True`: `ConflictError` if it exists) or replace (`create=False`: `NotFoundError` if it
        does not; None: either) one workspace, validated and audited; it becomes API-managed. With
        `expected_version`, a workspace changed since is `PreconditionFailedError`."""
        async with config_change(self.db) as connection:
            return await self._save_workspace(connection, document, actor, create, expected_version, action)

    async def _save_workspace(
        self,
        connection: AsyncConnection,
        document: dict[str, Any],
        actor: str,
        create: bool | None,
        expected_version: int | None,
        action: str | None,
    ) -> Workspace:
        current = await self.current(connection)
        workspace_id = str(document.get("id", ""))
        stored = current.workspace_documents.get(workspace_id)
        if create and stored is not None:
            raise ConflictError(
                f'workspace "{workspace_id}" exists; PUT /api/v1/workspaces/{workspace_id} changes it', field="id"
            )
        if create is False and stored is None:
            raise NotFoundError(f'no workspace "{workspace_id}"')
        if expected_version is not None and current.versions.get(workspace_id) != expected_version:
            raise PreconditionFailedError(f'workspace "{workspace_id}" changed since that ETag; read it again')
        workspace, document = self.parse_workspace(document, stored)
        others = [w for w in current.settings.workspaces if w.id != workspace.id]
        self.check_change(current.settings, current.settings.model_copy(update={"workspaces": [*others, workspace]}))
        if self._provider_check is not None and workspace.provider.enabled:
            try:
                await self._provider_check(workspace)
            except ProviderError as exc:
                raise ConfigError([Problem(workspace.provider.kind, str(exc))]) from None
        action = action or ("create" if stored is None else "update")
        await self.workspaces.save(document, actor=actor, action=action, before=stored, connection=connection)
        return workspace

    async def delete_workspace(
        self, workspace_id: str, *, actor: str, expected_version: int | None = None, action: str = "delete"
    ) -> None:
        """Delete one workspace's definition unless something still needs it (a pool, `fallback_workspace`)."""
        async with config_change(self.db) as connection:
            await self._delete_workspace(connection, workspace_id, actor, expected_version, action)

    async def _delete_workspace(
        self, connection: AsyncConnection, workspace_id: str, actor: str, expected_version: int | None, action: str
    ) -> None:
        current = await self.current(connection)
        stored = current.workspace_documents.get(workspace_id)
        if stored is None:
            raise NotFoundError(f'no workspace "{workspace_id}"')
        if expected_version is not None and current.versions.get(workspace_id) != expected_version:
            raise PreconditionFailedError(f'workspace "{workspace_id}" changed since that ETag; read it again')
        users = [p.id for p in current.pools.values() if any(m.workspace_id == workspace_id for m in p.members)]
        if users:
            raise ConflictError(
                f'workspace "{workspace_id}" is a member of pools {", ".join(users)}: remove it there first'
            )
        after = current.settings.model_copy(
            update={"workspaces": [w for w in current.settings.workspaces if w.id != workspace_id]}
        )
        try:
            self.check_change(current.settings, after)
        except ConfigError as exc:
            raise ConflictError("; ".join(str(p) for p in exc.problems)) from None
        await self.workspaces.remove(workspace_id, actor=actor, before=stored, action=action, connection=connection)

    # Pools

    async def save_pool(
        self,
        pool: Pool,
        *,
        actor: str,
        action: str,
        create: bool | None = None,
        expected_etag: str | None = None,
    ) -> None:
        """Create or replace one pool, checked and audited; it becomes API-managed."""
        async with config_change(self.db) as connection:
            await self._save_pool(connection, pool, actor, action, create, expected_etag)

    async def _save_pool(
        self,
        connection: AsyncConnection,
        pool: Pool,
        actor: str,
        action: str,
        create: bool | None,
        expected_etag: str | None,
    ) -> None:
        current = await self.current(connection)
        before = current.pools.get(pool.id)
        if create and before is not None:
            raise ConflictError(f'pool "{pool.id}" exists; PUT /api/v1/pools/{pool.id} changes it', field="id")
        if create is False and before is None:
            raise NotFoundError(f'no pool "{pool.id}"')
        _check_etag(before, expected_etag, pool.id)
        others = [p for p in current.settings.load_balancing_pools if p.id != pool.id]
        after = current.settings.model_copy(update={"load_balancing_pools": [*others, pool]})
        self.check_change(current.settings, after)
        document = pool_document(before) if before is not None else None
        await self.pools.save(pool_row(pool), actor=actor, action=action, before=document, connection=connection)

    async def change_pool(
        self,
        pool_id: str,
        change: Callable[[Pool], Pool],
        *,
        actor: str,
        action: str,
        expected_etag: str | None = None,
    ) -> None:
        """Read pool `pool_id`, apply `change` to it (raising `NotFoundError`/`ConflictError` as it sees fit) and
        save the result, all under the lock: a membership edit never overwrites a concurrent one."""
        async with config_change(self.db) as connection:
            row = await self.pools.get(pool_id, connection)
            if row is None:
                raise NotFoundError(f'no pool "{pool_id}"')
            _check_etag(row, expected_etag, pool_id)
            await self._save_pool(connection, change(pool_model(row)), actor, action, False, None)

    async def delete_pool(self, pool_id: str, *, actor: str, expected_etag: str | None = None) -> None:
        async with config_change(self.db) as connection:
            await self._delete_pool(connection, pool_id, actor, expected_etag, "delete")

    async def _delete_pool(
        self, connection: AsyncConnection, pool_id: str, actor: str, expected_etag: str | None, action: str
    ) -> None:
        current = await self.current(connection)
        row = current.pools.get(pool_id)
        if row is None:
            raise NotFoundError(f'no pool "{pool_id}"')
        _check_etag(row, expected_etag, pool_id)
        after = current.settings.model_copy(
            update={"load_balancing_pools": [p for p in current.settings.load_balancing_pools if p.id != pool_id]}
        )
        try:
            self.check_change(current.settings, after)
        except ConfigError as exc:  # a workspace names it in load_balancing.pools
            raise ConflictError("; ".join(str(p) for p in exc.problems)) from None
        await self.pools.remove(pool_id, actor=actor, before=pool_document(row), action=action, connection=connection)

    # Rollback

    async def rollback(self, entry: AuditEntry, *, actor: str) -> str:
        """Put what `entry` changed back to how it was before it, checked like any change; returns what was done."""
        action = f"rollback:{entry.id}"
        what = f'{entry.target_type} "{entry.target_id}"'
        async with config_change(self.db) as connection:
            if entry.target_type == "workspace":
                if entry.before is None:
                    await self._delete_workspace(connection, entry.target_id, actor, None, action)
                    return f"{what} removed (entry {entry.id} created it)"
                await self._save_workspace(connection, dict(entry.before), actor, None, None, action)
            elif entry.target_type == "pool":
                if entry.before is None:
                    await self._delete_pool(connection, entry.target_id, actor, None, action)
                    return f"{what} removed (entry {entry.id} created it)"
                try:
                    pool = pool_model_from_document(entry.before)
                except ValidationError as exc:
                    raise ConfigError(validation_problems(exc)) from None
                await self._save_pool(connection, pool, actor, action, None, None)
            else:
                raise ConflictError(f"audit entry {entry.id} changed a {entry.target_type}: it cannot be rolled back")
        return f"{what} restored as before entry {entry.id}"

    def check_change(self, before: Settings, after: Settings) -> None:
        """Raise `ConfigError` with the problems `after` has that `before` did not."""
        known = {_keyed(p, before) for p in cross_checks(before)}
        added = [keyed for keyed in (_keyed(p, after) for p in cross_checks(after)) if keyed not in known]
        if added:
            raise ConfigError(added)


def checked_view(file_settings: Settings, workspaces: list[Workspace], rows: list[PoolRow]) -> Settings:
    """The whole configuration as checks see it: the database's workspaces, and every pool the database holds —
    the file's pools as the database holds them (the API may have changed them), and pools only in the
    database. The same view for writers (`ConfigStore`) and readers (`WorkspaceDefinitions`)."""
    in_file = [p.id for p in file_settings.load_balancing_pools]
    by_id = {row.id: row for row in rows}
    pools = [
        pool_model(by_id[p.id]) if p.id in by_id and by_id[p.id].managed_by == "api" else p
        for p in file_settings.load_balancing_pools
    ]
    pools += [pool_model(row) for row in rows if row.id not in in_file]
    return file_settings.model_copy(update={"workspaces": workspaces, "load_balancing_pools": pools})


def pool_etag(row: PoolRow) -> str:
    """A strong validator of a pool as stored (`If-Match` on writes compares with it)."""
    digest = hashlib.sha256(json.dumps(pool_document(row), sort_keys=True).encode()).hexdigest()
    return f'"{digest[:32]}"'


def _check_etag(row: PoolRow | None, expected: str | None, pool_id: str) -> None:
    if expected is None or expected.strip() == "*":
        return
    if row is None or pool_etag(row) != expected.strip():
        raise PreconditionFailedError(f'pool "{pool_id}" changed since that ETag; read it again')


def pool_row(pool: Pool) -> PoolRow:
    return PoolRow(
        id=pool.id,
        name=pool.name,
        domain_patterns=tuple(pool.domain_patterns),
        strategy=pool.strategy,
        enabled=pool.enabled,
        members=tuple(PoolMemberRow(m.workspace_id, m.weight, m.enabled) for m in pool.workspaces),
        max_failover_attempts=pool.max_failover_attempts,
    )


def pool_model(row: PoolRow) -> Pool:
    return Pool(
        id=row.id,
        name=row.name,
        domain_patterns=list(row.domain_patterns),
        strategy=row.strategy,
        enabled=row.enabled,
        max_failover_attempts=row.max_failover_attempts,
        workspaces=[PoolMember(workspace_id=m.workspace_id, weight=m.weight, enabled=m.enabled) for m in row.members],
    )


def pool_model_from_document(document: dict[str, Any]) -> Pool:
    return Pool.model_validate(document)


def _keyed(problem: Problem, settings: Settings) -> Problem:
    """The problem with list positions replaced by ids (`workspaces["mg-1"].domains[0]`): it compares across
    configurations of other lengths, and tells the operator which object is meant."""
    path = problem.path
    for name, items in (("workspaces", settings.workspaces), ("load_balancing_pools", settings.load_balancing_pools)):
        prefix = f"{name}["
        if path.startswith(prefix):
            index, _, rest = path[len(prefix) :].partition("]")
            if index.isdigit() and int(index) < len(items):
                path = f'{name}["{items[int(index)].id}"]{rest}'
    return Problem(path, problem.message)

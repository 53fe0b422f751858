"""Configuration changes made in the database: by the API, `relay config apply` and rollbacks.

Each change is checked like the config file — the same models, and the cross-object rules over the whole
configuration as it would be after the change — and refused when it adds a problem (a pool naming a workspace
that is gone, a domain served twice). Problems the configuration already had do not block unrelated changes.
Every change is written with its audit entry in one transaction; running processes follow within a second.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ..config import Pool, PoolMember, Settings, Workspace, validation_problems
from ..config.checks import cross_checks
from ..config.documents import MaskedSecretError, restore_masked
from ..config.loader import json_path
from ..config.secrets import UNRESOLVED
from ..errors import ConfigError, Problem, ProviderError
from ..store import AuditEntry, AuditLog, PoolMemberRow, PoolRow, PoolTables, WorkspaceTables, pool_document

__all__ = ["ConfigStore", "Current", "pool_model", "pool_row"]


@dataclass(frozen=True, slots=True)
class Current:
    """The configuration as the database holds it: the file's other settings with the database's workspaces
    and pools, and the stored documents they came from."""

    settings: Settings
    workspace_documents: dict[str, dict[str, Any]]
    managed_by: dict[str, str]
    versions: dict[str, int]
    pools: dict[str, PoolRow]


class ConfigStore:
    def __init__(
        self,
        pools: PoolTables,
        workspaces: WorkspaceTables,
        audit: AuditLog,
        file_settings: Callable[[], Settings],
        *,
        resolve_env: bool = True,
        provider_check: Callable[[Workspace], Awaitable[None]] | None = None,
    ) -> None:
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

    async def current(self) -> Current:
        definitions = await self.workspaces.load()
        rows = await self.pools.load()
        workspaces = []
        for definition in definitions:
            try:
                workspaces.append(Workspace.model_validate(definition.document, context=self._context))
            except ValidationError:
                continue  # reported by every serving process; not this change's problem
        settings = self._file_settings().model_copy(
            update={"workspaces": workspaces, "load_balancing_pools": [pool_model(r) for r in rows]}
        )
        return Current(
            settings=settings,
            workspace_documents={d.id: d.document for d in definitions},
            managed_by={d.id: d.managed_by for d in definitions},
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

    def check_change(self, before: Settings, after: Settings) -> None:
        """Raise `ConfigError` with the problems `after` has that `before` did not."""
        known = {_keyed(p, before) for p in cross_checks(before)}
        added = [keyed for keyed in (_keyed(p, after) for p in cross_checks(after)) if keyed not in known]
        if added:
            raise ConfigError(added)

    async def save_workspace(self, document: dict[str, Any], *, actor: str, action: str | None = None) -> Workspace:
        """Create or replace one workspace (validated, audited); it becomes API-managed."""
        current = await self.current()
        workspace_id = str(document.get("id", ""))
        stored = current.workspace_documents.get(workspace_id)
        workspace, document = self.parse_workspace(document, stored)
        others = [w for w in current.settings.workspaces if w.id != workspace.id]
        after = current.settings.model_copy(update={"workspaces": [*others, workspace]})
        self.check_change(current.settings, after)
        if self._provider_check is not None and workspace.provider.enabled:
            try:
                await self._provider_check(workspace)
            except ProviderError as exc:
                raise ConfigError([Problem(workspace.provider.kind, str(exc))]) from None
        action = action or ("create" if stored is None else "update")
        await self.workspaces.save(document, actor=actor, action=action, before=stored)
        return workspace

    async def delete_workspace(self, workspace_id: str, *, actor: str, action: str = "delete") -> bool:
        """Delete one workspace's definition unless something still needs it (a pool, `fallback_workspace`)."""
        current = await self.current()
        stored = current.workspace_documents.get(workspace_id)
        if stored is None:
            return False
        after = current.settings.model_copy(
            update={"workspaces": [w for w in current.settings.workspaces if w.id != workspace_id]}
        )
        self.check_change(current.settings, after)
        users = [p.id for p in current.pools.values() if any(m.workspace_id == workspace_id for m in p.members)]
        if users:
            raise ConfigError(
                [
                    Problem(
                        "id",
                        f'workspace "{workspace_id}" is a member of pools {", ".join(users)}; remove it there first',
                    )
                ]
            )
        return await self.workspaces.remove(workspace_id, actor=actor, before=stored, action=action)

    async def save_pool(self, pool: Pool, *, actor: str, action: str) -> None:
        current = await self.current()
        before = current.pools.get(pool.id)
        others = [p for p in current.settings.load_balancing_pools if p.id != pool.id]
        after = current.settings.model_copy(update={"load_balancing_pools": [*others, pool]})
        self.check_change(current.settings, after)
        document = pool_document(before) if before is not None else None
        await self.pools.save(pool_row(pool), actor=actor, action=action, before=document)

    async def rollback(self, entry: AuditEntry, *, actor: str) -> str:
        """Put what `entry` changed back to how it was before it, checked like any change; returns what was done."""
        action = f"rollback:{entry.id}"
        what = f'{entry.target_type} "{entry.target_id}"'
        if entry.target_type == "workspace":
            if entry.before is None:
                removed = await self.delete_workspace(entry.target_id, actor=actor, action=action)
                return f"{what} removed (entry {entry.id} created it)" if removed else f"{what} was already gone"
            await self.save_workspace(dict(entry.before), actor=actor, action=action)
        elif entry.target_type == "pool":
            if entry.before is None:
                current = await self.pools.get(entry.target_id)
                if current is not None:
                    await self.pools.remove(entry.target_id, actor=actor, before=pool_document(current), action=action)
                return f"{what} removed (entry {entry.id} created it)"
            await self.save_pool(pool_model_from_document(entry.before), actor=actor, action=action)
        else:
            raise ConfigError([Problem("", f"audit entry {entry.id} changed a {entry.target_type}: cannot roll back")])
        return f"{what} restored as before entry {entry.id}"


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

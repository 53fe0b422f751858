"""`relay config export` and `relay config apply FILE`, for operators who keep configuration in git.

Export writes the database's workspaces and pools as a config file fragment, literal secrets masked (`********`)
and `env:NAME` references as they are. Apply reads a config file's `workspaces` and `load_balancing_pools`,
validates them as a whole like the config file, and makes the database hold exactly them: each difference is a
`Change` that is printed before it is made, and made with its audit entry — all in one transaction, so no process
ever sees half of it. A masked secret keeps the stored value, so an exported file applies back unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from ..config import Pool, Workspace, validation_problems
from ..config.checks import cross_checks
from ..config.documents import SECRET_FIELDS, redact, workspace_document
from ..errors import ConfigError, Problem
from ..store import PoolTables, WorkspaceTables, config_change, pool_document
from .catalog import config_rows
from .config_store import ConfigStore, ConflictError, pool_model_from_document, pool_row

__all__ = ["APPLIED_SECTIONS", "Change", "apply_changes", "export", "plan"]

APPLIED_SECTIONS = ("workspaces", "load_balancing_pools")


@dataclass(frozen=True, slots=True)
class Change:
    target_type: Literal["workspace", "pool"]
    target_id: str
    action: Literal["create", "update", "delete"]
    before: dict[str, Any] | None
    after: dict[str, Any] | None

    def describe(self) -> list[str]:
        """`+ workspace news`, `~ pool invite` with one line per changed field, `- workspace old`; secrets never
        shown (a changed secret says so)."""
        sign = {"create": "+", "update": "~", "delete": "-"}[self.action]
        head = f"{sign} {self.target_type} {self.target_id}"
        if self.action != "update":
            return [head]
        return [head, *(f"    {line}" for line in _differences(self.before, self.after, ""))]


async def export(store: ConfigStore) -> dict[str, Any]:
    """By id, so the file diffs well in git whichever process or config file it came from."""
    current = await store.current()
    return {
        "workspaces": [redact(current.workspace_documents[i]) for i in sorted(current.workspace_documents)],
        "load_balancing_pools": [pool_document(current.pools[p]) for p in sorted(current.pools)],
    }


async def plan(store: ConfigStore, data: dict[str, Any], connection: AsyncConnection | None = None) -> list[Change]:
    """The changes that make the database hold `data`'s workspaces and pools; `ConfigError` (every problem, by
    JSON path) when they are not a valid configuration."""
    current = await store.current(connection)
    workspaces: list[Workspace] = []
    documents: dict[str, dict[str, Any]] = {}
    problems: list[Problem] = []
    for index, given in enumerate(_list(data, "workspaces", problems)):
        stored = current.workspace_documents.get(str(given.get("id"))) if isinstance(given, dict) else None
        try:
            workspace, _ = store.parse_workspace(given if isinstance(given, dict) else {}, stored)
        except ConfigError as exc:
            problems += [Problem(_under(f"workspaces[{index}]", p.path), p.message) for p in exc.problems]
            continue
        workspaces.append(workspace)
        documents[workspace.id] = workspace_document(workspace)
    pools: list[Pool] = []
    for index, given in enumerate(_list(data, "load_balancing_pools", problems)):
        try:
            pools.append(pool_model_from_document(given))
        except ValidationError as exc:
            problems += validation_problems(exc, ("load_balancing_pools", index))
    if problems:
        raise ConfigError(problems)
    target = current.settings.model_copy(update={"workspaces": workspaces, "load_balancing_pools": pools})
    problems = cross_checks(target)
    if problems:
        raise ConfigError(problems)
    changes: list[Change] = []
    for workspace_id, document in documents.items():
        before = current.workspace_documents.get(workspace_id)
        if before != document:
            changes.append(
                Change("workspace", workspace_id, "create" if before is None else "update", before, document)
            )
    target_pools = {row.id: pool_document(row) for row in config_rows(target)}
    current_pools = {pool_id: pool_document(row) for pool_id, row in current.pools.items()}
    for pool_id, document in target_pools.items():
        before = current_pools.get(pool_id)
        if before != document:
            changes.append(Change("pool", pool_id, "create" if before is None else "update", before, document))
    changes += [Change("pool", i, "delete", d, None) for i, d in current_pools.items() if i not in target_pools]
    changes += [
        Change("workspace", i, "delete", d, None) for i, d in current.workspace_documents.items() if i not in documents
    ]
    return changes


async def apply_changes(store: ConfigStore, data: dict[str, Any], planned: list[Change], *, actor: str) -> None:
    """Make the changes `plan` printed, in one transaction under the configuration write lock, each audited: no
    process ever sees half of them. If the database changed since `planned` was computed, nothing is done
    (`ConflictError`): the operator approved that diff, not another."""
    async with config_change(store.db) as connection:
        if await plan(store, data, connection) != planned:
            raise ConflictError("the configuration changed since the diff was made; run the command again")
        for change in planned:
            if change.after is None:
                continue
            action = f"apply:{'create' if change.before is None else 'update'}"
            if change.target_type == "workspace":
                await store.workspaces.save(
                    change.after, actor=actor, action=action, before=change.before, connection=connection
                )
            else:
                row = pool_row(pool_model_from_document(change.after))
                await store.pools.save(row, actor=actor, action=action, before=change.before, connection=connection)
        for change in planned:
            if change.after is not None or change.before is None:
                continue
            tables: PoolTables | WorkspaceTables = store.pools if change.target_type == "pool" else store.workspaces
            await tables.remove(
                change.target_id, actor=actor, before=change.before, action="apply:delete", connection=connection
            )


def _list(data: dict[str, Any], key: str, problems: list[Problem]) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        problems.append(Problem(key, "must be a list"))
        return []
    return value


def _under(prefix: str, path: str) -> str:
    if not path:
        return prefix
    return f"{prefix}{path}" if path.startswith("[") else f"{prefix}.{path}"


def _differences(before: Any, after: Any, path: str) -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        lines = []
        for key in [*before, *(k for k in after if k not in before)]:
            where = f"{path}.{key}" if path else str(key)
            if key in SECRET_FIELDS and before.get(key) != after.get(key):
                lines.append(f"{where}: (secret changed)")
            elif key not in after:
                lines.append(f"{where}: removed (was {_show(before[key])})")
            elif key not in before:
                lines.append(f"{where}: {_show(after[key])} (new)")
            else:
                lines += _differences(before[key], after[key], where)
        return lines
    keyed_before, keyed_after = _keyed_items(before), _keyed_items(after)
    if keyed_before is not None and keyed_after is not None:  # pool members: by workspace, not by position
        lines = []
        for key in [*keyed_before, *(k for k in keyed_after if k not in keyed_before)]:
            where = f'{path}["{key}"]'
            if key not in keyed_after:
                lines.append(f"{where}: removed")
            elif key not in keyed_before:
                lines.append(f"{where}: {_show(keyed_after[key])} (new)")
            else:
                lines += _differences(keyed_before[key], keyed_after[key], where)
        return lines
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [
            line
            for i, (b, a) in enumerate(zip(before, after, strict=True))
            for line in _differences(b, a, f"{path}[{i}]")
        ]
    if before != after:
        return [f"{path}: {_show(before)} -> {_show(after)}"]
    return []


def _keyed_items(value: Any) -> dict[str, Any] | None:
    """A list of objects that each name a workspace (pool members), keyed by it; None for any other value."""
    if not isinstance(value, list) or not all(isinstance(v, dict) and "workspace_id" in v for v in value):
        return None
    return {str(v["workspace_id"]): v for v in value}


def _show(value: Any) -> str:
    return json.dumps(redact(value) if isinstance(value, dict) else value, sort_keys=True)

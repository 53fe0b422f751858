"""The pools Relay routes by right now: the config file's pools written to the TR4 tables, and whatever the
tables hold, read back and checked against the configured workspaces.

The config file owns the pools it names: at start and on SIGHUP they are written to `load_balancing_pools` and
`pool_workspaces` (membership as `routing.pool_members` computes it). Pools that exist only in the tables are
kept. Every process re-reads the tables every `refresh_seconds`, so a change made in the database reaches all
of them without a restart; the router's pool table is swapped only when something changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import structlog

from ..config import Settings, Strategy, Workspace
from ..health import EjectionGroups
from ..routing import Member, Router, pool_members
from ..store import PoolMemberRow, PoolRow, PoolTables

__all__ = ["PoolCatalog", "PoolView", "config_rows"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class PoolView:
    """One pool as the balancer uses it. `members` can take mail; `skipped` are listed in the tables but cannot
    (unknown workspace, provider disabled, opted out), with the reason."""

    id: str
    name: str
    domain_patterns: tuple[str, ...]
    strategy: Strategy
    enabled: bool
    members: tuple[Member, ...]
    max_failover_attempts: int | None = None
    skipped: tuple[tuple[str, str], ...] = ()
    max_ejection_percent: float = 50.0

    @property
    def failover_limit(self) -> int:
        """How many workspaces one delivery pass may try in this pool: every member, or 1 + the configured limit."""
        limit = len(self.members)
        if self.max_failover_attempts is not None:
            limit = min(limit, self.max_failover_attempts + 1)
        return max(limit, 1)


def config_rows(settings: Settings) -> list[PoolRow]:
    """The config file's pools as table rows."""
    return [
        PoolRow(
            id=pool.id,
            name=pool.name,
            domain_patterns=tuple(pool.domain_patterns),
            strategy=pool.strategy,
            enabled=pool.enabled,
            members=tuple(PoolMemberRow(m.workspace_id, m.weight, m.enabled) for m in pool_members(settings, pool)),
            max_failover_attempts=pool.max_failover_attempts,
        )
        for pool in settings.load_balancing_pools
    ]


class PoolCatalog:
    """Holds the current `PoolView`s; `tables=None` runs on the config file alone (tests, dry runs)."""

    def __init__(self, settings: Settings, tables: PoolTables | None = None, router: Router | None = None) -> None:
        self._settings = settings
        self._workspaces = {w.id: w for w in settings.workspaces}
        self.rewriting = _rewriting(settings)
        self._tables = tables
        self._lock = asyncio.Lock()
        self._router = router
        self._pools: dict[str, PoolView] = {}
        self._rows: list[PoolRow] | None = None
        if tables is None:
            self._install(config_rows(settings))

    @property
    def settings(self) -> Settings:
        return self._settings

    def workspace(self, workspace_id: str) -> Workspace | None:
        return self._workspaces.get(workspace_id)

    @property
    def pools(self) -> dict[str, PoolView]:
        return self._pools

    def get(self, pool_id: str) -> PoolView | None:
        return self._pools.get(pool_id)

    def ejection_groups(self, workspace_id: str) -> EjectionGroups:
        """The pools `workspace_id` is in, for the breaker's ejection cap: (other members, size, max %)."""
        groups = []
        for pool in self._pools.values():
            ids = [m.workspace_id for m in pool.members]
            if workspace_id in ids:
                groups.append(([ws for ws in ids if ws != workspace_id], len(ids), pool.max_ejection_percent))
        return groups

    def pools_of(self, workspace_id: str) -> list[str]:
        """Ids of the pools `workspace_id` is a member of."""
        return [p.id for p in self._pools.values() if any(m.workspace_id == workspace_id for m in p.members)]

    def use_config(self) -> None:
        """Route by the config file's pools alone, without the tables (dry runs on an empty database)."""
        self._tables = None
        self._install(config_rows(self._settings))

    async def apply(self, settings: Settings) -> None:
        """Adopt `settings` (start-up, SIGHUP, a workspace changed): write its pools to the tables, then read
        everything back.

        Nothing changes unless the write succeeds. Serialised with `refresh`, so a refresh that read the tables
        before this write cannot put the old pools back after it.
        """
        async with self._lock:
            if self._tables is not None:
                ignored = await self._tables.sync_file(config_rows(settings))
                if ignored:
                    log.warning(
                        "pools.file_ignored",
                        pools=ignored,
                        reason="changed through the API since; the database is the source of truth "
                        "(change the file to match, or delete the pool through the API to hand it back to the file)",
                    )
            await self._use_locked(settings)

    async def use(self, settings: Settings) -> None:
        """Route by `settings`' workspaces and the tables' pools without writing anything (dry runs)."""
        async with self._lock:
            await self._use_locked(settings)

    async def _use_locked(self, settings: Settings) -> None:
        self._settings = settings
        self._workspaces = {w.id: w for w in settings.workspaces}
        self.rewriting = _rewriting(settings)
        if self._tables is None:
            self._install(config_rows(settings))
            return
        self._rows = None  # force a rebuild: workspace settings may have changed even if the rows did not
        await self._refresh_locked()

    async def refresh(self) -> bool:
        """Re-read the tables; True when the pools changed."""
        if self._tables is None:
            return False
        async with self._lock:
            return await self._refresh_locked()

    async def _refresh_locked(self) -> bool:
        assert self._tables is not None
        rows = await self._tables.load()
        if rows == self._rows:
            return False
        changed = self._rows is not None
        self._install(rows)
        if changed:
            log.info("pools.changed", pools=len(self._pools))
        return True

    def _install(self, rows: list[PoolRow]) -> None:
        views = {row.id: self._view(row) for row in rows}
        self._rows = rows
        self._pools = views
        if self._router is not None:
            self._router.replace_pools(_patterns(views.values()))
        for view in views.values():
            for workspace_id, why in view.skipped:
                log.warning("pools.member_skipped", pool_id=view.id, workspace_id=workspace_id, reason=why)

    def _view(self, row: PoolRow) -> PoolView:
        members: list[Member] = []
        skipped: list[tuple[str, str]] = []
        for entry in row.members:
            workspace = self._workspaces.get(entry.workspace_id)
            if workspace is None:
                skipped.append((entry.workspace_id, "unknown workspace"))
            elif not workspace.provider.enabled:
                skipped.append((entry.workspace_id, "provider disabled"))
            elif "enabled" in workspace.load_balancing.model_fields_set and not workspace.load_balancing.enabled:
                skipped.append((entry.workspace_id, "load_balancing.enabled is false"))
            else:
                lb = workspace.load_balancing
                members.append(Member(entry.workspace_id, entry.weight, entry.enabled, lb.min_capacity_threshold))
        return PoolView(
            id=row.id,
            name=row.name,
            domain_patterns=row.domain_patterns,
            strategy=cast(Strategy, row.strategy),
            enabled=row.enabled,
            members=tuple(members),
            max_failover_attempts=row.max_failover_attempts,
            skipped=tuple(skipped),
            max_ejection_percent=next(
                (p.max_ejection_percent for p in self._settings.load_balancing_pools if p.id == row.id), 50.0
            ),
        )


def _patterns(pools: Iterable[PoolView]) -> list[tuple[str, str]]:
    return [(pattern, p.id) for p in pools if p.enabled for pattern in p.domain_patterns]


def _rewriting(settings: Settings) -> frozenset[str]:
    """Workspaces that present pool senders differently (`sender_rewrite` other than keep)."""
    return frozenset(w.id for w in settings.workspaces if w.load_balancing.sender_rewrite != "keep")

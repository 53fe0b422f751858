"""Load-balancing pools and their member workspaces, as stored in the PRD's TR4 tables."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from ..clock import Clock
from .audit import record_change
from .config_lock import config_change
from .database import Database
from .tables import STRATEGIES, load_balancing_pools, pool_workspaces
from .timestamps import to_db

__all__ = ["PoolMemberRow", "PoolRow", "PoolTables"]


@dataclass(frozen=True, slots=True)
class PoolMemberRow:
    workspace_id: str
    weight: float
    enabled: bool


@dataclass(frozen=True, slots=True)
class PoolRow:
    id: str
    name: str
    domain_patterns: tuple[str, ...]
    strategy: str
    enabled: bool
    members: tuple[PoolMemberRow, ...]
    max_failover_attempts: int | None = None
    managed_by: str = "file"  # or "api": see `sync_file`


class PoolTables:
    """Reads and writes whole pools; a pool and its members always change in one transaction."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def replace(self, pools: Sequence[PoolRow]) -> None:
        """Upsert each pool and make its members exactly `members`; pools not given are left alone."""
        await self._write(pools, keep_api_managed=False)

    async def sync_file(self, pools: Sequence[PoolRow]) -> list[str]:
        """Write the config file's pools, except those the API has taken over (`managed_by = "api"`): the
        database is the source of truth once a pool was changed there. Returns the ids left alone."""
        return await self._write(pools, keep_api_managed=True)

    async def _write(self, pools: Sequence[PoolRow], *, keep_api_managed: bool) -> list[str]:
        now = to_db(self._clock.now())
        table = load_balancing_pools
        owned_query = sa.select(table.c.id).where(table.c.id.in_([p.id for p in pools]), table.c.managed_by == "api")
        for tries_left in reversed(range(3)):
            try:
                # Under the configuration write lock: an API change to one of these pools cannot slip in between
                # reading who manages it and writing the file's version.
                async with config_change(self._db) as connection:
                    owned = set((await connection.execute(owned_query)).scalars()) if keep_api_managed else set()
                    for pool in pools:
                        if pool.id not in owned:
                            await _upsert_pool(connection, pool, now)
                            await _replace_members(connection, pool)
                return sorted(owned)
            except IntegrityError:
                # Another process inserted the same new pool or member first; once it has committed,
                # the next try updates its rows instead.
                if not tries_left:
                    raise
        raise AssertionError("unreachable")

    async def save(
        self,
        pool: PoolRow,
        *,
        actor: str,
        action: str,
        before: dict[str, Any] | None,
        connection: AsyncConnection | None = None,
    ) -> None:
        """Create or change one pool through the API (it becomes API-managed) and audit it, in one transaction
        (`connection`'s, when given)."""
        now = to_db(self._clock.now())
        async with self._db.using(connection, write=True) as connection:
            await _upsert_pool(connection, pool, now, managed_by="api")
            await _replace_members(connection, pool)
            await record_change(connection, now, actor, action, "pool", pool.id, before, pool_document(pool))

    async def remove(
        self,
        pool_id: str,
        *,
        actor: str,
        before: dict[str, Any],
        action: str = "delete",
        connection: AsyncConnection | None = None,
    ) -> bool:
        """Delete one pool through the API and audit it, in one transaction; False if it was not there."""
        now = to_db(self._clock.now())
        async with self._db.using(connection, write=True) as connection:
            await connection.execute(pool_workspaces.delete().where(pool_workspaces.c.pool_id == pool_id))
            result = await connection.execute(load_balancing_pools.delete().where(load_balancing_pools.c.id == pool_id))
            if result.rowcount != 1:
                return False
            await record_change(connection, now, actor, action, "pool", pool_id, before, None)
        return True

    async def get(self, pool_id: str, connection: AsyncConnection | None = None) -> PoolRow | None:
        return next((p for p in await self.load(connection) if p.id == pool_id), None)

    async def load(self, connection: AsyncConnection | None = None) -> list[PoolRow]:
        """Every pool with its members: pools by id, members by workspace id. Two queries in all."""
        pools_query = sa.select(load_balancing_pools).order_by(load_balancing_pools.c.id)
        members_query = sa.select(pool_workspaces).order_by(pool_workspaces.c.pool_id, pool_workspaces.c.workspace_id)
        async with self._db.using(connection, write=False) as connection:
            pools = (await connection.execute(pools_query)).all()
            members = (await connection.execute(members_query)).all()
        by_pool: dict[str, list[PoolMemberRow]] = {}
        for m in members:
            by_pool.setdefault(m.pool_id, []).append(PoolMemberRow(m.workspace_id, float(m.weight), bool(m.enabled)))
        return [
            PoolRow(
                id=p.id,
                name=p.name,
                domain_patterns=tuple(p.domain_patterns),
                strategy=p.strategy,
                enabled=bool(p.enabled),
                members=tuple(by_pool.get(p.id, ())),
                max_failover_attempts=p.max_failover_attempts,
                managed_by=p.managed_by,
            )
            for p in pools
        ]

    async def delete(self, pool_id: str) -> bool:
        """Remove a pool and its members; False if there was no such pool."""
        async with self._db.begin() as connection:
            # Members explicitly: the foreign key cascades too, but not on a SQLite file opened without the pragma.
            await connection.execute(pool_workspaces.delete().where(pool_workspaces.c.pool_id == pool_id))
            result = await connection.execute(load_balancing_pools.delete().where(load_balancing_pools.c.id == pool_id))
        return result.rowcount == 1


def _weight(value: float) -> Decimal:
    """Numeric(5, 2): two decimals, half up, so 0.125 is 0.13 on every database alike."""
    if not math.isfinite(value) or abs(value) >= 999.995:
        raise ValueError(f"pool member weight {value} does not fit the column (at most 999.99)")
    return Decimal(str(value)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


async def _upsert_pool(connection: AsyncConnection, pool: PoolRow, now: datetime, managed_by: str = "file") -> None:
    if pool.strategy not in STRATEGIES:
        raise ValueError(f'pool "{pool.id}": unknown strategy "{pool.strategy}" (one of {", ".join(STRATEGIES)})')
    values: dict[str, Any] = {
        "name": pool.name,
        "domain_patterns": list(pool.domain_patterns),
        "strategy": pool.strategy,
        "enabled": pool.enabled,
        "max_failover_attempts": pool.max_failover_attempts,
        "updated_at": now,
        "managed_by": managed_by,
    }
    # Update first, insert if nothing matched: portable, and the write lock the transaction holds (BEGIN
    # IMMEDIATE on SQLite, the row lock elsewhere) keeps created_at of a row that exists.
    table = load_balancing_pools
    updated = await connection.execute(table.update().where(table.c.id == pool.id).values(**values))
    if updated.rowcount == 0:
        await connection.execute(table.insert().values(id=pool.id, created_at=now, **values))


async def _replace_members(connection: AsyncConnection, pool: PoolRow) -> None:
    table = pool_workspaces
    members = {m.workspace_id: m for m in pool.members}  # a workspace listed twice: the last entry wins
    listed = list(members)
    stale = table.delete().where(table.c.pool_id == pool.id)
    if listed:
        stale = stale.where(table.c.workspace_id.not_in(listed))
    await connection.execute(stale)
    existing = set(
        (await connection.execute(sa.select(table.c.workspace_id).where(table.c.pool_id == pool.id))).scalars()
    )
    for member in members.values():
        values = {"weight": _weight(member.weight), "enabled": member.enabled}
        if member.workspace_id in existing:
            await connection.execute(
                table.update()
                .where(table.c.pool_id == pool.id, table.c.workspace_id == member.workspace_id)
                .values(**values)
            )
        else:
            await connection.execute(table.insert().values(pool_id=pool.id, workspace_id=member.workspace_id, **values))


def pool_document(pool: PoolRow) -> dict[str, Any]:
    """A pool as the audit log and the API show it."""
    return {
        "id": pool.id,
        "name": pool.name,
        "domain_patterns": list(pool.domain_patterns),
        "strategy": pool.strategy,
        "enabled": pool.enabled,
        "max_failover_attempts": pool.max_failover_attempts,
        "workspaces": [
            {"workspace_id": m.workspace_id, "weight": m.weight, "enabled": m.enabled} for m in pool.members
        ],
    }


def pool_from_document(document: dict[str, Any]) -> PoolRow:
    """The inverse of `pool_document`."""
    return PoolRow(
        id=str(document["id"]),
        name=str(document["name"]),
        domain_patterns=tuple(document["domain_patterns"]),
        strategy=str(document["strategy"]),
        enabled=bool(document["enabled"]),
        members=tuple(
            PoolMemberRow(str(m["workspace_id"]), float(m["weight"]), bool(m["enabled"]))
            for m in document["workspaces"]
        ),
        max_failover_attempts=document.get("max_failover_attempts"),
    )

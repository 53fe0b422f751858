from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.exc import DBAPIError

from relay.clock import ManualClock
from relay.store import Database, PoolMemberRow, PoolRow, PoolTables
from relay.store.tables import load_balancing_pools, load_balancing_selections, metadata, pool_workspaces
from relay.store.timestamps import from_db


def pool(pool_id: str, *members: PoolMemberRow, **kwargs: Any) -> PoolRow:
    defaults: dict[str, Any] = {
        "name": f"Pool {pool_id}",
        "domain_patterns": ("*.invite.com", "invite.com"),
        "strategy": "capacity_weighted",
        "enabled": True,
    }
    defaults.update(kwargs)
    return PoolRow(id=pool_id, members=members, **defaults)


def member(workspace_id: str, weight: float = 1.0, enabled: bool = True) -> PoolMemberRow:
    return PoolMemberRow(workspace_id, weight, enabled)


async def columns(db: Database, table: str) -> dict[str, dict[str, Any]]:
    async with db.read() as connection:
        found = await connection.run_sync(lambda c: sa.inspect(c).get_columns(table))
    return {c["name"]: c for c in found}


async def test_the_migration_creates_the_prd_tables(db: Database) -> None:
    pools = await columns(db, "load_balancing_pools")
    assert list(pools) == [
        "id",
        "name",
        "domain_patterns",
        "strategy",
        "enabled",
        "max_failover_attempts",
        "created_at",
        "updated_at",
        "managed_by",  # 0004: the file or the API owns the pool
    ]
    assert [n for n, c in pools.items() if c["nullable"]] == ["max_failover_attempts"]
    members = await columns(db, "pool_workspaces")
    assert list(members) == ["pool_id", "workspace_id", "weight", "enabled"]
    assert (members["weight"]["type"].precision, members["weight"]["type"].scale) == (5, 2)
    selections = await columns(db, "load_balancing_selections")
    assert list(selections) == [
        "id",
        "pool_id",
        "workspace_id",
        "sender_email",
        "selected_at",
        "success",
        "capacity_score",
    ]
    assert (selections["capacity_score"]["type"].precision, selections["capacity_score"]["type"].scale) == (5, 4)
    attempts = await columns(db, "delivery_attempts")
    assert {n: attempts[n]["nullable"] for n in ("pool_id", "selection", "sent_as")} == {
        "pool_id": True,
        "selection": True,
        "sent_as": True,
    }

    def keys(connection: sa.Connection) -> tuple[Any, ...]:
        inspector = sa.inspect(connection)
        return (
            inspector.get_pk_constraint("pool_workspaces")["constrained_columns"],
            [
                (fk["referred_table"], fk["options"].get("ondelete"))
                for fk in inspector.get_foreign_keys("pool_workspaces")
            ],
            sorted((i["name"], i["column_names"]) for i in inspector.get_indexes("load_balancing_selections")),
        )

    async with db.read() as connection:
        assert await connection.run_sync(keys) == (
            ["pool_id", "workspace_id"],
            [("load_balancing_pools", "CASCADE")],
            [("idx_pool_workspace", ["pool_id", "workspace_id"]), ("idx_selected_at", ["selected_at"])],
        )


async def test_the_migration_matches_the_tables_module(db: Database) -> None:
    def differences(connection: sa.Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    async with db.read() as connection:
        assert await connection.run_sync(differences) == []


async def test_column_defaults_and_the_strategy_check(db: Database) -> None:
    stamp = {"created_at": sa.func.current_timestamp(), "updated_at": sa.func.current_timestamp()}
    async with db.begin() as connection:
        await connection.execute(load_balancing_pools.insert().values(id="p", name="P", domain_patterns=["*"], **stamp))
        await connection.execute(pool_workspaces.insert().values(pool_id="p", workspace_id="w"))
    async with db.read() as connection:
        row = (await connection.execute(sa.select(load_balancing_pools))).one()
        weight, enabled = (
            await connection.execute(sa.select(pool_workspaces.c.weight, pool_workspaces.c.enabled))
        ).one()
    assert (row.strategy, bool(row.enabled), row.domain_patterns) == ("capacity_weighted", True, ["*"])
    assert (float(weight), bool(enabled)) == (1.0, True)
    with pytest.raises(DBAPIError):
        async with db.begin() as connection:
            await connection.execute(
                load_balancing_pools.insert().values(id="q", name="Q", domain_patterns=[], strategy="fastest", **stamp)
            )


async def test_replace_then_load_round_trips(db: Database) -> None:
    clock = ManualClock()
    tables = PoolTables(db, clock)
    medical = pool(
        "medical",
        member("gmail-2", 2.5),
        member("gmail-1", 1.005),  # rounds half up to 1.01
        member("gmail-3", 0.334, enabled=False),
        strategy="round_robin",
        max_failover_attempts=3,
    )
    general = pool("general", member("mailgun-1"), domain_patterns=("*",), enabled=False)
    await tables.replace([medical, general])
    loaded = await tables.load()
    assert [p.id for p in loaded] == ["general", "medical"]
    assert loaded[0] == general
    assert loaded[1] == pool(
        "medical",
        member("gmail-1", 1.01),
        member("gmail-2", 2.5),
        member("gmail-3", 0.33, enabled=False),
        strategy="round_robin",
        max_failover_attempts=3,
    )
    assert all(type(m.weight) is float for p in loaded for m in p.members)


async def test_replace_updates_a_pool_exactly_and_leaves_the_others_alone(db: Database) -> None:
    clock = ManualClock()
    tables = PoolTables(db, clock)
    general = pool("general", member("mailgun-1"), member("mailgun-2"))
    await tables.replace([pool("medical", member("gmail-1"), member("gmail-2"), member("gmail-3")), general])
    created = clock.now()
    clock.advance(60)
    changed = pool(
        "medical",
        member("gmail-2", 4.0, enabled=False),
        member("gmail-4", 0.5),
        name="Medical mail",
        domain_patterns=("joinmednet.org",),
        strategy="least_used",
    )
    await tables.replace([changed])
    assert await tables.load() == [general, changed]  # gmail-1 and gmail-3 are gone, gmail-2 changed
    async with db.read() as connection:
        rows = await connection.execute(sa.select(load_balancing_pools))
        stamps = {r.id: (from_db(r.created_at), from_db(r.updated_at)) for r in rows}
    assert stamps == {"medical": (created, clock.now()), "general": (created, created)}
    await tables.replace([pool("medical")])  # no members at all
    assert [p.members for p in await tables.load()] == [general.members, ()]


async def test_replace_is_one_transaction(db: Database) -> None:
    tables = PoolTables(db, ManualClock())
    await tables.replace([pool("a", member("w1"))])
    with pytest.raises(ValueError, match="1000"):
        await tables.replace([pool("a", member("w2")), pool("b", member("w1", 1000.0))])
    assert await tables.load() == [pool("a", member("w1"))]


async def test_weights_and_strategies_that_do_not_fit_are_refused(db: Database) -> None:
    tables = PoolTables(db, ManualClock())
    with pytest.raises(ValueError, match="1000"):
        await tables.replace([pool("a", member("w1", 1000.0))])
    with pytest.raises(ValueError, match="fastest"):
        await tables.replace([pool("a", strategy="fastest")])
    assert await tables.load() == []


async def test_delete_removes_the_pool_and_its_members(db: Database) -> None:
    tables = PoolTables(db, ManualClock())
    await tables.replace([pool("a", member("w1"), member("w2")), pool("b", member("w1"))])
    assert await tables.delete("a")
    assert not await tables.delete("a")
    assert await tables.load() == [pool("b", member("w1"))]
    async with db.read() as connection:
        owners = (await connection.execute(sa.select(pool_workspaces.c.pool_id))).scalars().all()
    assert owners == ["b"]


async def test_selection_table_is_separate_from_pools(db: Database) -> None:
    # The decision log outlives pool edits: deleting a pool keeps its history.
    tables = PoolTables(db, ManualClock())
    await tables.replace([pool("a", member("w1"))])
    async with db.begin() as connection:
        await connection.execute(
            load_balancing_selections.insert().values(
                pool_id="a", workspace_id="w1", sender_email="x@invite.com", selected_at=sa.func.current_timestamp()
            )
        )
    await tables.delete("a")
    async with db.read() as connection:
        assert (
            await connection.execute(sa.select(sa.func.count()).select_from(load_balancing_selections))
        ).scalar() == 1


async def test_api_saves_are_audited_and_kept_from_the_file(db: Database) -> None:
    from relay.store import AuditLog, pool_document

    tables = PoolTables(db, ManualClock())
    await tables.sync_file([pool("p1", member("a")), pool("p2", member("b"))])
    changed = pool("p1", member("a", 4.0))
    await tables.save(changed, actor="ops", action="update", before=pool_document(pool("p1", member("a"))))
    ignored = await tables.sync_file([pool("p1", member("a", 9.0)), pool("p2", member("b", 2.0))])
    assert ignored == ["p1"]
    rows = {p.id: p.members for p in await tables.load()}
    assert rows == {"p1": (member("a", 4.0),), "p2": (member("b", 2.0),)}
    [entry] = await AuditLog(db).entries(target_id="p1")
    assert (entry.actor, entry.action, entry.target_type) == ("ops", "update", "pool")
    assert entry.before is not None and entry.before["workspaces"][0]["weight"] == 1.0
    assert entry.after is not None and entry.after["workspaces"][0]["weight"] == 4.0
    assert await tables.remove("p1", actor="ops", before=pool_document(changed))
    assert [e.action for e in await AuditLog(db).entries(target_id="p1")] == ["delete", "update"]

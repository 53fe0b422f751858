"""The pool catalog on every database: the config file's pools are written to the TR4 tables, the tables are read
back, and the router follows them — including pools and edits that exist only in the database."""

from __future__ import annotations

import asyncio
from typing import Any

from relay.clock import ManualClock
from relay.config import Settings
from relay.pools import PoolCatalog, config_rows
from relay.routing import Route, Router
from relay.store import Database, PoolMemberRow, PoolRow, PoolTables


def ws(workspace_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": workspace_id, "domains": [f"{workspace_id}.example"], "sandbox": {}, **extra}


def settings(**overrides: Any) -> Settings:
    data: dict[str, Any] = {
        "workspaces": [
            ws("a"),
            ws("b"),
            ws("joiner", load_balancing={"enabled": True, "pools": ["invite"], "default_weight": 3}),
            ws("loner", load_balancing={"enabled": False}),
        ],
        "load_balancing_pools": [
            {
                "id": "invite",
                "name": "Invite",
                "domain_patterns": ["invite.com", "*.invite.com"],
                "workspaces": [{"workspace_id": "a", "weight": 2}, {"workspace_id": "b", "enabled": False}],
            }
        ],
    }
    data.update(overrides)
    return Settings.model_validate(data)


async def test_the_config_files_pools_are_written_to_the_tables_with_their_opt_ins(db: Database) -> None:
    tables = PoolTables(db, ManualClock())
    catalog = PoolCatalog(settings(), tables, Router(settings(), pools=()))
    await catalog.apply(settings())
    [row] = await tables.load()
    assert row.id == "invite" and row.strategy == "capacity_weighted"
    assert row.members == (
        PoolMemberRow("a", 2.0, True),
        PoolMemberRow("b", 1.0, False),
        PoolMemberRow("joiner", 3.0, True),
    )
    view = catalog.get("invite")
    assert view is not None
    assert [(m.workspace_id, m.weight, m.enabled) for m in view.members] == [
        ("a", 2.0, True),
        ("b", 1.0, False),
        ("joiner", 3.0, True),
    ]
    assert catalog.pools_of("joiner") == ["invite"] and catalog.pools_of("loner") == []


async def test_the_router_follows_changes_made_in_the_database(db: Database) -> None:
    tables = PoolTables(db, ManualClock())
    router = Router(settings(), pools=())
    catalog = PoolCatalog(settings(), tables, router)
    assert router.route("brian@invite.com") is None  # nothing applied yet
    await catalog.apply(settings())
    assert router.route("brian@invite.com") == Route("pool", "invite")
    assert await catalog.refresh() is False  # unchanged tables: nothing rebuilt

    # Another process (or SQL) adds a pool and changes a weight; this one sees it at its next refresh.
    [invite] = await tables.load()
    reweighted = PoolRow(
        invite.id,
        invite.name,
        invite.domain_patterns,
        invite.strategy,
        invite.enabled,
        (PoolMemberRow("a", 0.5, True), *invite.members[1:]),
    )
    extra = PoolRow("news", "News", ("news.example.org",), "round_robin", True, (PoolMemberRow("b", 1.0, True),))
    await tables.replace([reweighted, extra])
    assert await catalog.refresh() is True
    assert router.route("x@news.example.org") == Route("pool", "news")
    view = catalog.get("invite")
    assert view is not None and view.members[0].weight == 0.5
    news = catalog.get("news")
    assert news is not None and news.strategy == "round_robin"


async def test_database_members_that_cannot_take_mail_are_skipped_with_the_reason(db: Database) -> None:
    tables = PoolTables(db, ManualClock())
    await tables.replace(
        [
            PoolRow(
                "db-only",
                "Only in the database",
                ("db.example",),
                "random_weighted",
                True,
                (PoolMemberRow("a", 1.0, True), PoolMemberRow("ghost", 1.0, True), PoolMemberRow("loner", 1.0, True)),
            )
        ]
    )
    catalog = PoolCatalog(settings(load_balancing_pools=[]), tables)
    await catalog.refresh()
    view = catalog.get("db-only")
    assert view is not None
    assert [m.workspace_id for m in view.members] == ["a"]
    assert dict(view.skipped) == {"ghost": "unknown workspace", "loner": "load_balancing.enabled is false"}


async def test_a_disabled_pool_routes_nothing_and_a_reload_removes_its_members(db: Database) -> None:
    tables = PoolTables(db, ManualClock())
    router = Router(settings(), pools=())
    catalog = PoolCatalog(settings(), tables, router)
    await catalog.apply(settings())
    changed = settings(
        load_balancing_pools=[
            {
                "id": "invite",
                "name": "Invite",
                "domain_patterns": ["invite.com"],
                "enabled": False,
                "workspaces": [{"workspace_id": "a"}],
            }
        ],
        workspaces=[ws("a"), ws("b"), ws("joiner"), ws("loner")],
    )
    await catalog.apply(changed)
    assert router.route("brian@invite.com") is None
    [row] = await tables.load()
    assert row.enabled is False and [m.workspace_id for m in row.members] == ["a"]


def test_failover_limit_is_every_member_or_one_more_than_max_failover_attempts() -> None:
    catalog = PoolCatalog(settings())
    view = catalog.get("invite")
    assert view is not None and view.failover_limit == 3
    limited = settings(
        load_balancing_pools=[
            {
                "id": "invite",
                "name": "Invite",
                "domain_patterns": ["invite.com"],
                "max_failover_attempts": 1,
                "workspaces": [{"workspace_id": "a"}, {"workspace_id": "b"}, {"workspace_id": "joiner"}],
            }
        ]
    )
    view = PoolCatalog(limited).get("invite")
    assert view is not None and view.failover_limit == 2
    assert config_rows(limited)[0].max_failover_attempts == 1


class SlowTables(PoolTables):
    """Real tables whose `load` can be held after reading, to put a refresh and a reload in the worst order."""

    def __init__(self, db: Database) -> None:
        super().__init__(db, ManualClock())
        self.hold: asyncio.Event | None = None
        self.reading = asyncio.Event()

    async def load(self) -> list[PoolRow]:
        rows = await super().load()
        if self.hold is not None:
            self.reading.set()
            await self.hold.wait()
        return rows


async def test_a_refresh_that_read_before_a_reload_cannot_undo_it(db: Database) -> None:
    tables = SlowTables(db)
    catalog = PoolCatalog(settings(), tables)
    await catalog.apply(settings())
    tables.hold = asyncio.Event()
    stale = asyncio.create_task(catalog.refresh())  # reads the old rows, then is held
    await tables.reading.wait()
    reweighted = settings(
        load_balancing_pools=[
            {
                "id": "invite",
                "name": "Invite",
                "domain_patterns": ["invite.com"],
                "workspaces": [{"workspace_id": "a", "weight": 7}],
            }
        ]
    )
    reload = asyncio.create_task(catalog.apply(reweighted))
    tables.hold.set()
    tables.hold = None
    await asyncio.gather(stale, reload)
    view = catalog.get("invite")
    assert view is not None and [(m.workspace_id, m.weight) for m in view.members] == [("a", 7.0), ("joiner", 3.0)]

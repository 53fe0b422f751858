"""The database connection: URL dialects, SQLite durability pragmas, migrations under a lock."""

from __future__ import annotations

import asyncio
import fcntl
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

__all__ = ["Database", "async_url"]

_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "mysql": "mysql+asyncmy",
    "mariadb": "mysql+asyncmy",
}
_MIGRATIONS = Path(__file__).parent / "migrations"
# Alembic keeps its context in module globals, so two upgrades must never interleave in one process;
# across processes the database lock in `upgrade()` serialises them.
_upgrade_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def async_url(url: str) -> str:
    """`postgresql://…` → `postgresql+asyncpg://…`; a URL that already names a driver is kept."""
    parsed = make_url(url)
    if "+" in parsed.drivername:
        return url
    driver = _DRIVERS.get(parsed.drivername)
    if driver is None:
        raise ValueError(f'unsupported database "{parsed.drivername}" (use sqlite, postgresql or mysql)')
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


class Database:
    """One engine per process. `begin()` yields a transaction; on SQLite it starts with BEGIN IMMEDIATE."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        self.url = async_url(url)
        parsed = make_url(self.url)
        self.dialect = parsed.get_backend_name()
        # hide_parameters: a failed statement's error text must not carry message bodies or addresses into logs.
        kwargs: dict[str, Any] = {"echo": echo, "pool_pre_ping": True, "hide_parameters": True}
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800)
            kwargs["connect_args"] = {"timeout": 10} if self.dialect == "postgresql" else {"connect_timeout": 10}
            if self.dialect in ("mysql", "mariadb"):
                # InnoDB's default REPEATABLE READ makes the claim's SELECT … FOR UPDATE take gap locks on
                # the next_attempt_at index, which deadlock with concurrent INSERTs of new mail (a 451 to
                # the client) and with outcome writes. READ COMMITTED, PostgreSQL's default, locks rows only.
                kwargs["isolation_level"] = "READ COMMITTED"
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.dialect == "sqlite":
            _configure_sqlite(self.engine)

    @property
    def supports_skip_locked(self) -> bool:
        return self.dialect in ("postgresql", "mysql", "mariadb")

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as connection:
            yield connection

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that only reads: on SQLite it takes no write lock, so it never waits for ingest."""
        async with self.engine.connect() as connection:
            reader = await connection.execution_options(relay_read_only=True)
            async with reader.begin():
                yield reader

    @asynccontextmanager
    async def using(self, connection: AsyncConnection | None, *, write: bool) -> AsyncIterator[AsyncConnection]:
        """`connection` when the caller already holds a transaction (its work joins it), else a new one."""
        if connection is not None:
            yield connection
            return
        async with self.begin() if write else self.read() as opened:
            yield opened

    async def max_packet_bytes(self) -> int | None:
        """MySQL/MariaDB's `max_allowed_packet`, the largest row it takes in one statement; None elsewhere."""
        if self.dialect not in ("mysql", "mariadb"):
            return None
        async with self.engine.connect() as connection:
            value = (await connection.execute(sa.text("SELECT @@max_allowed_packet"))).scalar()
        return int(value) if value is not None else None

    async def upgrade(self) -> None:
        """Apply Alembic migrations up to head; safe when several processes start at once."""
        lock = _upgrade_locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())
        async with lock, self._sqlite_file_lock(), self.engine.connect() as connection:
            if self.dialect in ("mysql", "mariadb"):
                await connection.execute(sa.text("SELECT GET_LOCK('relay_migrations', 120)"))
            try:
                await connection.run_sync(self._upgrade_sync)
                await connection.commit()
            finally:
                if self.dialect in ("mysql", "mariadb"):
                    await connection.execute(sa.text("SELECT RELEASE_LOCK('relay_migrations')"))

    @asynccontextmanager
    async def _sqlite_file_lock(self) -> AsyncIterator[None]:
        """On SQLite, processes upgrading one file take turns on a lock file beside it: Alembic's SQLite DDL does
        not stay inside one transaction, so the database's own lock does not keep two upgrades apart."""
        path = make_url(self.url).database
        if self.dialect != "sqlite" or not path or path == ":memory:":
            yield
            return
        with open(f"{path}.migrate-lock", "a+b") as handle:  # noqa: ASYNC230 (opening a lock file does not block)
            await asyncio.to_thread(fcntl.flock, handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _upgrade_sync(self, connection: sa.Connection) -> None:
        if self.dialect == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(727465)"))
        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    async def dispose(self) -> None:
        await self.engine.dispose()


_DEADLOCK_CODES = frozenset({1213, 1205})  # MySQL/MariaDB: deadlock, lock wait timeout
_DEADLOCK_STATES = frozenset({"40P01", "40001"})  # PostgreSQL: deadlock detected, serialization failure


def is_deadlock(exc: BaseException) -> bool:
    """Whether `exc` is the database breaking a lock cycle: the transaction was rolled back and may simply be run
    again (InnoDB can pick a `SELECT … FOR UPDATE SKIP LOCKED` claim as the victim when another process updates
    the same index range)."""
    orig = getattr(exc, "orig", None)
    if orig is None:
        return False
    args = getattr(orig, "args", ())
    if args and args[0] in _DEADLOCK_CODES:
        return True
    state = getattr(orig, "sqlstate", None) or getattr(getattr(orig, "__cause__", None), "sqlstate", None)
    return state in _DEADLOCK_STATES


def _configure_sqlite(engine: AsyncEngine) -> None:
    # WAL lets readers run beside the writer; synchronous=FULL fsyncs the WAL on every commit, which is
    # what makes "250 means durable" true. The driver's own transaction handling is turned off so that
    # every transaction can start with BEGIN IMMEDIATE: it takes the write lock up front instead of failing
    # with SQLITE_BUSY when a read transaction later tries to write.
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # busy_timeout first: switching a new file to WAL needs a lock another process may hold at that moment.
        for pragma in ("busy_timeout=30000", "journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        read_only = connection.get_execution_options().get("relay_read_only", False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

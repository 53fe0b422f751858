"""The configuration write lock: a configuration change (read the current state, check, write, audit) runs in
one transaction that first updates the single `config_revision` row. That row lock (SQLite: the write lock every
transaction takes) serialises changes from every process, so each is checked against the state it replaces and
two concurrent changes can never together make an invalid configuration."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncConnection

from .database import Database
from .tables import config_revision

__all__ = ["config_change"]


@asynccontextmanager
async def config_change(db: Database) -> AsyncIterator[AsyncConnection]:
    async with db.begin() as connection:
        bumped = await connection.execute(
            config_revision.update().where(config_revision.c.id == 1).values(revision=config_revision.c.revision + 1)
        )
        if bumped.rowcount == 0:  # the row was deleted by hand: put it back (a concurrent one fails, and retries)
            await connection.execute(config_revision.insert().values(id=1, revision=1))
        yield connection

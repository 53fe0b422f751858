"""The suppression list (issue 8): recipients Relay no longer sends to, in the `suppressions` table and in memory.

Every process keeps the whole list in a dict (address, reason and time of each listing), so checking a
recipient (each SMTP RCPT, each API recipient) costs no database round trip. The dict follows the table: `run()`
reads a cheap fingerprint (`count(*)`, `max(created_at)`) every second and, when it changed, the rows stamped at
or after the newest one it knew; if the count still differs (a row was deleted, or stamped by a process whose
clock runs behind) it reads the whole list. It reads the whole list once a minute anyway, for the one change a
fingerprint cannot see (a delete and an insert stamped in the past). What this process adds or removes is in the
dict at once; another process's changes arrive within a second.

Addresses are compared case-insensitively (the whole address is lower-cased): providers report them lower-cased,
and a hard-bounced `Ann@Example.org` is the same mailbox for every practical receiver.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import mysql, postgresql, sqlite

from ..clock import Clock
from .database import Database
from .tables import suppressions
from .timestamps import from_db, to_db

__all__ = ["MAX_EMAIL_LENGTH", "REASONS", "Suppression", "SuppressionList", "insert_suppressions", "suppression_key"]

log = structlog.get_logger(__name__)

REASONS = ("hard_bounce", "complaint", "unsubscribe", "manual")
MAX_EMAIL_LENGTH = 320  # the column's size; RFC 5321 paths are shorter still


def suppression_key(address: str) -> str:
    """The form an address is listed and looked up in."""
    return address.strip().lower()


@dataclass(frozen=True, slots=True)
class Suppression:
    email: str
    reason: str  # one of REASONS
    detail: str | None
    source: str  # "mailgun:<workspace>", "mandrill:<workspace>", "api:<key name>"
    message_id: str | None  # the Relay message whose event listed it
    created_at: datetime

    @property
    def refusal(self) -> str:
        """Why a new message to this recipient is refused: the SMTP reply's text and the API error's."""
        return (
            f"recipient suppressed ({self.reason} on {self.created_at:%Y-%m-%d}; "
            "remove it from the suppression list to send again)"
        )

    def row(self) -> dict[str, Any]:
        return {
            "email": self.email,
            "reason": self.reason,
            "detail": self.detail,
            "source": self.source,
            "message_id": self.message_id,
            "created_at": to_db(self.created_at),
        }


def _suppression(row: Any) -> Suppression:
    return Suppression(row.email, row.reason, row.detail, row.source, row.message_id, from_db(row.created_at))


# What the in-memory list keeps of each listing: enough to refuse and say why, a fraction of a full row.
_MEMORY_COLUMNS = (suppressions.c.email, suppressions.c.reason, suppressions.c.created_at)


def _slim(email: str, reason: str, created_at: datetime) -> Suppression:
    return Suppression(email, reason, None, "", None, created_at)


def _insert_ignoring_listed(dialect: str) -> Any:
    """INSERT that leaves an address already listed as it is (a concurrent writer may list it first)."""
    if dialect == "postgresql":
        return postgresql.insert(suppressions).on_conflict_do_nothing(index_elements=["email"])
    if dialect == "sqlite":
        return sqlite.insert(suppressions).on_conflict_do_nothing(index_elements=["email"])
    statement = mysql.insert(suppressions)
    return statement.on_duplicate_key_update(email=statement.inserted.email)


async def insert_suppressions(connection: Any, entries: Sequence[Suppression]) -> list[Suppression]:
    """List `entries` in the caller's transaction, keeping an address already listed as it is (the first reason
    wins). Returns the entries that were not listed before."""
    unique: dict[str, Suppression] = {}
    for entry in entries:
        if len(entry.email) <= MAX_EMAIL_LENGTH:
            unique.setdefault(entry.email, entry)
    if not unique:
        return []
    listed = await connection.execute(sa.select(suppressions.c.email).where(suppressions.c.email.in_(list(unique))))
    for email in listed.scalars():
        unique.pop(email, None)
    if unique:
        statement = _insert_ignoring_listed(connection.dialect.name)
        await connection.execute(statement, [entry.row() for entry in unique.values()])
    return list(unique.values())


class SuppressionList:
    """The list, in the database and mirrored in memory; `refuses()` is the hot-path check (no I/O)."""

    def __init__(self, db: Database, clock: Clock, *, enabled: Callable[[], bool] = lambda: True) -> None:
        self._db = db
        self._clock = clock
        self._enabled = enabled
        self._entries: dict[str, Suppression] = {}
        self._fingerprint: tuple[int, datetime | None] | None = None
        self._last_full = 0.0
        self._lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, address: str) -> Suppression | None:
        """The listing of `address` as this process knows it: email, reason and created_at (`get()` reads the
        whole row). No I/O."""
        return self._entries.get(suppression_key(address))

    def refuses(self, address: str) -> Suppression | None:
        """The listing that refuses a new message to `address`, or None (also when refusing is switched off)."""
        return self.lookup(address) if self._enabled() else None

    async def note(self, entries: Iterable[Suppression]) -> None:
        """Entries this process has just committed: known at once, before the next refresh. (Under the refresh's
        lock, so a refresh that read the table before the commit cannot drop them again.)"""
        async with self._lock:
            for entry in entries:
                self._entries.setdefault(entry.email, _slim(entry.email, entry.reason, entry.created_at))

    async def refresh(self, *, full: bool = False) -> None:
        """Bring the in-memory list up to the table (see the module's docstring)."""
        async with self._lock, self._db.read() as connection:
            count, newest = (
                await connection.execute(sa.select(sa.func.count(), sa.func.max(suppressions.c.created_at)))
            ).one()
            fingerprint = (int(count), newest)
            if not full and fingerprint == self._fingerprint:
                return
            known = self._fingerprint[1] if self._fingerprint is not None else None
            if not full and known is not None and newest is not None and newest >= known:
                rows = await connection.execute(sa.select(*_MEMORY_COLUMNS).where(suppressions.c.created_at >= known))
                for row in rows:
                    self._entries[row.email] = _slim(row.email, row.reason, from_db(row.created_at))
                full = len(self._entries) != fingerprint[0]
            else:
                full = True
            if full:
                rows = await connection.execute(sa.select(*_MEMORY_COLUMNS))
                self._entries = {row.email: _slim(row.email, row.reason, from_db(row.created_at)) for row in rows}
                self._last_full = self._clock.monotonic()
            self._fingerprint = fingerprint

    async def run(self, interval: float = 1.0, full_every: float = 60.0) -> None:
        """Follow the table until cancelled. A failed read keeps the list as it was and is tried again."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh(full=self._clock.monotonic() - self._last_full >= full_every)
            except Exception as exc:  # the database may be away for a while: keep refusing what we know
                log.warning("suppressions.refresh_failed", error=type(exc).__name__)

    async def get(self, address: str) -> Suppression | None:
        query = sa.select(suppressions).where(suppressions.c.email == suppression_key(address))
        async with self._db.read() as connection:
            row = (await connection.execute(query)).first()
        return _suppression(row) if row is not None else None

    async def search(
        self, *, email: str | None = None, reason: str | None = None, limit: int = 100
    ) -> list[Suppression]:
        """Newest first. `email` matches part of the address, case-insensitively."""
        query = sa.select(suppressions).order_by(suppressions.c.created_at.desc(), suppressions.c.email).limit(limit)
        if email is not None:
            query = query.where(suppressions.c.email.contains(suppression_key(email), autoescape=True))
        if reason is not None:
            query = query.where(suppressions.c.reason == reason)
        async with self._db.read() as connection:
            rows = (await connection.execute(query)).all()
        return [_suppression(row) for row in rows]

    async def add(self, entry: Suppression) -> bool:
        """List `entry`; False (and nothing changed) if its address is listed already."""
        async with self._db.begin() as connection:
            added = await insert_suppressions(connection, [entry])
        await self.note(added)
        return bool(added)

    async def remove(self, address: str) -> bool:
        """Take `address` off the list; False if it was not listed."""
        key = suppression_key(address)
        async with self._db.begin() as connection:
            result = await connection.execute(suppressions.delete().where(suppressions.c.email == key))
        async with self._lock:
            self._entries.pop(key, None)
        return bool(result.rowcount)

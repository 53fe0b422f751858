"""A claim that InnoDB (or PostgreSQL) rolled back to break a lock cycle is recognised, so it can be run again."""

from __future__ import annotations

from asyncmy.errors import OperationalError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import OperationalError as SAOperationalError

from relay.store.database import is_deadlock


def wrapped(orig: Exception) -> DBAPIError:
    return SAOperationalError("SELECT … FOR UPDATE SKIP LOCKED", {}, orig)


def test_innodb_deadlock_and_lock_wait_timeout_are_retryable() -> None:
    assert is_deadlock(wrapped(OperationalError(1213, "Deadlock found when trying to get lock")))
    assert is_deadlock(wrapped(OperationalError(1205, "Lock wait timeout exceeded")))


def test_other_database_errors_are_not() -> None:
    assert not is_deadlock(wrapped(OperationalError(2013, "Lost connection to MySQL server during query")))
    assert not is_deadlock(RuntimeError("not a database error"))


def test_postgresql_deadlock_by_sqlstate() -> None:
    class PgError(Exception):
        sqlstate = "40P01"

    assert is_deadlock(wrapped(PgError("deadlock detected")))

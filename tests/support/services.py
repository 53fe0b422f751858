"""Real database servers for tests: a fresh, uniquely named database per test, dropped afterwards.

A server that is not reachable skips the test with the reason, or fails it when RELAY_REQUIRE_SERVICES=1
(as CI sets), so a missing service can never pass silently.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

POSTGRES_HOST = os.environ.get("RELAY_TEST_POSTGRES_HOST", "127.0.0.1")
POSTGRES_PORT = int(os.environ.get("RELAY_TEST_POSTGRES_PORT", "5432"))
POSTGRES_USER = os.environ.get("RELAY_TEST_POSTGRES_USER", "root")
MARIADB_HOST = os.environ.get("RELAY_TEST_MARIADB_HOST", "127.0.0.1")
MARIADB_PORT = int(os.environ.get("RELAY_TEST_MARIADB_PORT", "3306"))
MARIADB_USER = os.environ.get("RELAY_TEST_MARIADB_USER", "root")

BACKENDS = ("sqlite", "postgresql", "mariadb")


def services_required() -> bool:
    return os.environ.get("RELAY_REQUIRE_SERVICES", "") not in ("", "0", "false")


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require(name: str, host: str, port: int) -> None:
    if reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if services_required():
        pytest.fail(f"{message} (RELAY_REQUIRE_SERVICES=1)")
    pytest.skip(message)


async def _postgres(statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(host=POSTGRES_HOST, port=POSTGRES_PORT, user=POSTGRES_USER, database="postgres")
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def _mariadb(statement: str) -> None:
    import asyncmy

    connection = await asyncmy.connect(host=MARIADB_HOST, port=MARIADB_PORT, user=MARIADB_USER)
    try:
        async with connection.cursor() as cursor:
            await cursor.execute(statement)
    finally:
        connection.close()


@contextmanager
def fresh_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """A database URL for an empty database of `backend`, removed when the block ends."""
    name = f"relay_t_{uuid.uuid4().hex[:12]}"
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'relay.db'}"
        return
    if backend == "postgresql":
        require("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
        asyncio.run(_postgres(f'CREATE DATABASE "{name}"'))
        try:
            yield f"postgresql://{POSTGRES_USER}@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"
        finally:
            asyncio.run(_postgres(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        return
    if backend == "mariadb":
        require("MariaDB", MARIADB_HOST, MARIADB_PORT)
        asyncio.run(_mariadb(f"CREATE DATABASE `{name}`"))
        try:
            yield f"mysql://{MARIADB_USER}@{MARIADB_HOST}:{MARIADB_PORT}/{name}"
        finally:
            asyncio.run(_mariadb(f"DROP DATABASE IF EXISTS `{name}`"))
        return
    raise ValueError(backend)

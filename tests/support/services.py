"""Real database servers for tests: a fresh, uniquely named database per test, dropped afterwards.

A server that is not reachable skips the test with the reason, or fails it when RELAY_REQUIRE_SERVICES=1
(as CI sets), so a missing service can never pass silently.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class _Server:
    name: str
    host: str
    port: int
    run: Callable[[str], Coroutine[Any, Any, None]]
    create: str
    drop: str
    url: str


_SERVERS = {
    "postgresql": _Server(
        "PostgreSQL",
        POSTGRES_HOST,
        POSTGRES_PORT,
        _postgres,
        'CREATE DATABASE "{name}"',
        'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
        f"postgresql://{POSTGRES_USER}@{POSTGRES_HOST}:{POSTGRES_PORT}/{{name}}",
    ),
    "mariadb": _Server(
        "MariaDB",
        MARIADB_HOST,
        MARIADB_PORT,
        _mariadb,
        "CREATE DATABASE `{name}`",
        "DROP DATABASE IF EXISTS `{name}`",
        f"mysql://{MARIADB_USER}@{MARIADB_HOST}:{MARIADB_PORT}/{{name}}",
    ),
}


@contextmanager
def fresh_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """A database URL for an empty database of `backend`, removed when the block ends."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'relay.db'}"
        return
    server = _SERVERS[backend]
    require(server.name, server.host, server.port)
    name = f"relay_t_{uuid.uuid4().hex[:12]}"
    asyncio.run(server.run(server.create.format(name=name)))
    try:
        yield server.url.format(name=name)
    finally:
        asyncio.run(server.run(server.drop.format(name=name)))


REDIS_URL = os.environ.get("RELAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def require_redis() -> str:
    """The test Redis URL; skips (or fails under RELAY_REQUIRE_SERVICES=1) when Redis is not running."""
    from urllib.parse import urlsplit

    parts = urlsplit(REDIS_URL)
    require("Redis", parts.hostname or "127.0.0.1", parts.port or 6379)
    return REDIS_URL


@contextmanager
def redis_keys(pattern: str) -> Iterator[None]:
    """Delete every key matching `pattern` afterwards: tests share one Redis."""
    import redis

    url = require_redis()
    try:
        yield
    finally:
        with redis.Redis.from_url(url) as client:
            keys = list(client.scan_iter(match=pattern, count=1000))
            if keys:
                client.delete(*keys)

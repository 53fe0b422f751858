"""SIZE never promises more than the database can store: on MariaDB the advertised limit follows
`max_allowed_packet`, so a large message gets 552 at once instead of 451 on every retry."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.relay import config, sandbox_workspace, start_relay
from tests.support.services import fresh_database


def advertised_size(host: str, port: int) -> int:
    with smtplib.SMTP(host, port) as client:
        client.ehlo()
        return int(client.esmtp_features["size"])


@pytest.fixture
def mariadb_url(tmp_path: Path) -> Iterator[str]:
    with fresh_database("mariadb", tmp_path) as url:
        yield url


async def test_size_follows_max_allowed_packet(mariadb_url: str, tmp_path: Path, outbox: Path) -> None:
    data = config(
        mariadb_url, [sandbox_workspace("sb", ["joinmednet.org"], outbox)], smtp={"max_message_size": 1 << 30}
    )
    relay = await start_relay(data, tmp_path)
    try:
        packet = await relay.db.max_packet_bytes()
        assert packet is not None
        assert await asyncio.to_thread(advertised_size, *relay.smtp_address) == packet - (1 << 20)
    finally:
        await relay.stop()


async def test_size_is_kept_when_the_database_has_room(sqlite_url: str, tmp_path: Path, outbox: Path) -> None:
    data = config(sqlite_url, [sandbox_workspace("sb", ["joinmednet.org"], outbox)], smtp={"max_message_size": 1 << 30})
    relay = await start_relay(data, tmp_path)
    try:
        assert await asyncio.to_thread(advertised_size, *relay.smtp_address) == 1 << 30
    finally:
        await relay.stop()

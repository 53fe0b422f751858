"""The Relay most dashboard tests look at: ws-a and ws-b in pool `invite` (weights 3 and 1), with the viewer,
operator and admin keys of tests/support/dashboard.py. A module that needs another setup defines its own `relay`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.runtime import Relay
from tests.support.dashboard import KEYS
from tests.support.pools import pool
from tests.support.relay import config, sandbox_workspace, start_relay


@pytest.fixture
async def relay(sqlite_url: str, tmp_path: Path) -> AsyncIterator[Relay]:
    data = config(
        sqlite_url,
        [
            sandbox_workspace("ws-a", ["a.example"], tmp_path / "a"),
            sandbox_workspace("ws-b", ["b.example"], tmp_path / "b"),
        ],
        http=KEYS,
        load_balancing_pools=[pool("invite", ["invite.com"], [("ws-a", 3.0), ("ws-b", 1.0)])],
    )
    started = await start_relay(data, tmp_path)
    yield started
    await started.stop()

"""Issue 7 acceptance: weights changed through the API while mail flows shift the distribution within a second
in both of two `relay serve` processes sharing PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_pool_reload import MEMBERS, delivered, events, submit, used
from tests.support.net import free_port, wait_for
from tests.support.relay import RelayProcess, config, sandbox_workspace
from tests.support.services import fresh_database

ADMIN = "admin-key-e2e-3f9a"


@pytest.fixture
def processes() -> Iterator[list[RelayProcess]]:
    started: list[RelayProcess] = []
    yield started
    for relay in started:
        relay.stop()


def test_a_weight_changed_through_the_api_moves_mail_in_both_processes(
    tmp_path: Path, processes: list[RelayProcess]
) -> None:
    with fresh_database("postgresql", tmp_path) as url:
        workspaces = [sandbox_workspace(ws, [f"{ws}.test"], tmp_path / f"outbox-{ws}") for ws in MEMBERS]
        pool = {
            "id": "invite",
            "name": "Invite",
            "domain_patterns": ["invite.com"],
            "strategy": "round_robin",
            "workspaces": [{"workspace_id": ws, "weight": 1} for ws in MEMBERS],
        }
        for name in ("relay-a", "relay-b"):
            data = config(
                url,
                workspaces,
                load_balancing_pools=[pool],
                http={"port": free_port(), "api_keys": [{"name": "ops", "key": ADMIN, "role": "admin"}]},
                log_format="json",
                instance_name=name,
            )
            processes.append(RelayProcess(data, tmp_path, name=name).start())
        try:
            ids = [i for relay in processes for i in submit(relay.smtp_port, 6)]
            assert set(used(delivered(tmp_path, ids))) == set(MEMBERS)

            api_port = processes[0].data["http"]["port"]
            wait_for(lambda: _ready(api_port), timeout=10, what="the HTTP API")
            changed_at = time.monotonic()
            answer = httpx.put(
                f"http://127.0.0.1:{api_port}/api/v1/pools/invite/workspaces/ws-b",
                json={"weight": 0},
                headers={"Authorization": f"Bearer {ADMIN}"},
                timeout=10,
            )
            assert answer.status_code == 200, answer.text
            # The writing process routes by it at once; the other re-reads the tables every second.
            wait_for(lambda: events(processes[1], "pools.changed"), timeout=5, what="pools.changed in relay-b")
            assert time.monotonic() - changed_at < 1.5
            ids = [i for relay in processes for i in submit(relay.smtp_port, 8)]
            assert used(delivered(tmp_path, ids)) == {"ws-a": len(ids)}
        finally:
            for relay in processes:  # before the database is dropped
                relay.stop()


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False

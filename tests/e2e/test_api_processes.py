"""Issue 7 acceptance: changes made through the API of one `relay serve` process take effect within a second in
both of two processes sharing PostgreSQL (and Redis, whose notices make the other look at once)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_pool_reload import MEMBERS, delivered, events, submit, try_submit, used
from tests.support.net import free_port, wait_for
from tests.support.relay import RelayProcess, config, sandbox_workspace
from tests.support.services import fresh_database, require_redis

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


@pytest.mark.parametrize("with_redis", [False, True], ids=["poll", "redis-notice"])
def test_a_workspace_created_through_the_api_takes_mail_in_both_processes(
    tmp_path: Path, processes: list[RelayProcess], with_redis: bool
) -> None:
    """The database is the source of truth for workspaces: one created through relay-a's API is adopted by relay-b
    within a second — by its poll, or at once by a Redis notice — and relay-b delivers through it."""
    redis = {"redis_url": require_redis()} if with_redis else {}
    with fresh_database("postgresql", tmp_path) as url:
        workspaces = [sandbox_workspace(ws, [f"{ws}.test"], tmp_path / f"outbox-{ws}") for ws in MEMBERS]
        for name in ("relay-a", "relay-b"):
            data = config(
                url,
                workspaces,
                http={"port": free_port(), "api_keys": [{"name": "ops", "key": ADMIN, "role": "admin"}]},
                log_format="json",
                instance_name=name,
                **redis,
            )
            processes.append(RelayProcess(data, tmp_path, name=name).start())
        try:
            api_port = processes[0].data["http"]["port"]
            wait_for(lambda: _ready(api_port), timeout=10, what="the HTTP API")
            assert try_submit(processes[1].smtp_port, "brian@new.test") is None  # no route yet: 550
            created_at = time.monotonic()
            answer = httpx.post(
                f"http://127.0.0.1:{api_port}/api/v1/workspaces",
                json=sandbox_workspace("ws-new", ["new.test"], tmp_path / "outbox-new"),
                headers={"Authorization": f"Bearer {ADMIN}"},
                timeout=10,
            )
            assert answer.status_code == 201, answer.text
            [applied] = wait_for(lambda: events(processes[1], "config.applied"), timeout=5, what="relay-b follows")
            assert time.monotonic() - created_at < 1.5
            assert applied["trigger"] == ("notice" if with_redis else "poll")
            queued = try_submit(processes[1].smtp_port, "brian@new.test")
            assert queued is not None
            wait_for(lambda: (tmp_path / "outbox-new" / f"{queued}.eml").exists(), timeout=15, what="delivery")
        finally:
            for relay in processes:
                relay.stop()

"""Issue 7 acceptance: changes made through the API of one `relay serve` process take effect within a second in
both of two processes sharing PostgreSQL (and Redis, whose notices make the other look at once)."""

from __future__ import annotations

import threading
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


def test_a_weight_changed_through_the_api_while_mail_flows_moves_it_in_both_processes(
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
            with MailFlow([relay.smtp_port for relay in processes]) as flow:
                wait_for(lambda: len(flow.accepted) >= 10, timeout=15, what="mail flowing")
                answer = httpx.put(
                    f"http://127.0.0.1:{api_port}/api/v1/pools/invite/workspaces/ws-b",
                    json={"weight": 0},
                    headers={"Authorization": f"Bearer {ADMIN}"},
                    timeout=10,
                )
                assert answer.status_code == 200, answer.text
                answered_at = time.monotonic()
                # Keep mail flowing until each process has taken at least 5 messages accepted a second later.
                wait_for(
                    lambda: all(n >= 5 for n in flow.per_port_since(answered_at + 1.0).values()),
                    timeout=20,
                    what="mail accepted after the change",
                )
            before = [i for i, _, at in flow.accepted if at < answered_at]
            after = [i for i, _, at in flow.accepted if at >= answered_at + 1.0]
            placement = delivered(tmp_path, before + after)
            assert set(used({i: placement[i] for i in before})) == set(MEMBERS)  # both took mail before
            # Every message accepted a second or more after the API answered went to ws-a, in both processes.
            assert used({i: placement[i] for i in after}) == {"ws-a": len(after)}
        finally:
            for relay in processes:  # before the database is dropped
                relay.stop()


class MailFlow:
    """Submits messages to each port in turn from a background thread, recording (queue id, port, accepted at)."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.accepted: list[tuple[str, int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MailFlow:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            for port in self.ports:
                [queue_id] = submit(port, 1)
                self.accepted.append((queue_id, port, time.monotonic()))

    def per_port_since(self, since: float) -> dict[int, int]:
        counts = dict.fromkeys(self.ports, 0)
        for _, port, at in list(self.accepted):
            if at >= since:
                counts[port] += 1
        return counts


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

"""`relay serve` posts webhooks from a process of its own: events arrive from it, it is restarted when it dies,
and it does not outlive a `relay serve` killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.e2e.test_pool_reload import submit
from tests.support.net import wait_for
from tests.support.receiver import Receiver
from tests.support.relay import RelayProcess, config, sandbox_workspace


def children(pid: int) -> list[int]:
    """The worker processes `relay serve` spawned (not multiprocessing's resource tracker)."""
    found = subprocess.run(["pgrep", "-P", str(pid), "-f", "spawn_main"], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_webhook_worker_posts_restarts_and_never_outlives_relay(sqlite_url: str, tmp_path: Path) -> None:
    with Receiver() as receiver:
        data = config(
            sqlite_url,
            [sandbox_workspace("ws-a", ["ws-a.test"], tmp_path / "outbox")],
            webhooks=[{"url": receiver.url, "events": ["message.sent"]}],
            log_format="json",
        )
        relay = RelayProcess(data, tmp_path).start()
        try:
            assert relay.process is not None
            [worker] = wait_for(lambda: children(relay.process.pid), timeout=10, what="the webhook worker")
            submit(relay.smtp_port, 1, sender="brian@ws-a.test")
            wait_for(lambda: len(receiver.accepted()) == 1, timeout=15, what="a post from the worker")
            os.kill(worker, signal.SIGKILL)
            wait_for(lambda: [p for p in children(relay.process.pid) if p != worker], timeout=15, what="a new worker")
            submit(relay.smtp_port, 1, sender="brian@ws-a.test")
            wait_for(lambda: len(receiver.accepted()) == 2, timeout=15, what="a post from the new worker")
            assert "webhooks.worker_died" in relay.log()
            [replacement] = children(relay.process.pid)
            relay.kill()
            deadline = time.monotonic() + 10
            while alive(replacement) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not alive(replacement), "the worker outlived relay serve"
        finally:
            relay.stop()

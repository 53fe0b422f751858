"""Structured logs on a message's path: every line logged while one message is accepted and delivered through a
pool names it (`message_id`), and the delivery lines name the pool and the workspace (`pool_id`, `workspace_id`)
— also lines from code that is never told the message, such as the circuit breaker's, through the ids bound to
the delivery's context (`structlog.contextvars`, merged by `relay.logs.configure_logging`)."""

from __future__ import annotations

import random
from pathlib import Path

import structlog

from relay.logs import log_context
from tests.support.health import with_health
from tests.support.pools import pool, submit_many, wait_for_statuses
from tests.support.relay import config, sandbox_workspace, start_relay

# The processor `configure_logging` puts first; capture_logs replaces the configured chain, so it is named here.
MERGED = [structlog.contextvars.merge_contextvars]


async def test_every_line_of_a_pool_delivery_names_the_message_pool_and_workspace(
    sqlite_url: str, tmp_path: Path
) -> None:
    quiet = {"checks_enabled": False}  # no active check may log into the window below
    failing = sandbox_workspace("ws-bad", [], tmp_path / "bad", fail_rate=1.0, fail_with="451 4.3.0 try later")
    data = config(
        sqlite_url,
        [
            with_health(failing, consecutive_failures=1, **quiet),
            with_health(sandbox_workspace("ws-a", [], tmp_path / "a"), **quiet),
        ],
        # ws-bad is chosen first (all but 1 time in 100,000): it fails, its breaker opens, the message fails over.
        load_balancing_pools=[pool("invite", ["invite.com"], [("ws-bad", 999.99), ("ws-a", 0.01)])],
    )
    relay = await start_relay(data, tmp_path, rng=random.Random(3))
    try:
        with structlog.testing.capture_logs(processors=MERGED) as logs:
            [message_id] = (await submit_many(relay, "brian@invite.com", 1, tag="logs")).values()
            await wait_for_statuses(relay, {"sent": 1})
    finally:
        await relay.stop()

    events = [e["event"] for e in logs]
    assert {"smtp.queued", "load_balancing.failover", "workspace.health_changed", "delivery.attempt"} <= set(events)
    for line in logs:  # one message in flight: everything logged meanwhile is on its path
        assert line.get("message_id") == message_id, line
    for line in logs:
        if line["event"] != "smtp.queued":  # accepted before any routing: no pool, no workspace yet
            assert line.get("pool_id") == "invite", line
            assert line.get("workspace_id") in ("ws-bad", "ws-a"), line
    [opened] = [e for e in logs if e["event"] == "workspace.health_changed"]
    assert (opened["workspace_id"], opened["new"]) == ("ws-bad", "open")
    [attempt] = [e for e in logs if e["event"] == "delivery.attempt"]
    assert (attempt["workspace_id"], attempt["result"]) == ("ws-a", "sent")


def test_log_context_restores_what_was_bound_before_and_unbinds_what_was_not() -> None:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(message_id="outer")
    with log_context(message_id="inner", workspace_id="ws-a"):
        assert structlog.contextvars.get_contextvars() == {"message_id": "inner", "workspace_id": "ws-a"}
        with log_context(workspace_id="ws-b"):
            assert structlog.contextvars.get_contextvars() == {"message_id": "inner", "workspace_id": "ws-b"}
        assert structlog.contextvars.get_contextvars() == {"message_id": "inner", "workspace_id": "ws-a"}
    assert structlog.contextvars.get_contextvars() == {"message_id": "outer"}
    structlog.contextvars.clear_contextvars()

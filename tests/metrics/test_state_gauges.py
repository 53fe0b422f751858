"""The gauges `/metrics` reads at scrape time move with what happened: a workspace's capacity drops with its sends,
its health turns `auth_broken` after refused credentials and `open` after failed sends, a pool counts one member
fewer available once one is ejected, and every decision in a pool is timed."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from tests.metrics.scrape import Samples, scrape, total, value
from tests.support.health import with_health
from tests.support.pools import pool, submit_many, wait_for_statuses
from tests.support.relay import config, sandbox_workspace, start_relay

SENDER = "brian@invite.com"


def health_of(found: Samples, workspace: str) -> str:
    """The one state whose series is 1, checking that every other state of the workspace is there with 0."""
    states = {dict(ls)["state"]: v for (n, ls), v in found.items() if n == "relay_workspace_health" and
              dict(ls)["workspace"] == workspace}  # fmt: skip
    current = [s for s, v in states.items() if v == 1]
    assert len(current) == 1 and sum(states.values()) == 1, states
    assert set(states) == {"healthy", "degraded", "throttled", "open", "half_open", "auth_broken"}
    return current[0]


async def test_capacity_drops_with_sends_and_decisions_are_timed(sqlite_url: str, tmp_path: Path) -> None:
    limited = {
        **sandbox_workspace("ws-a", [], tmp_path / "a"),
        "rate_limits": {"workspace_daily": 10, "per_minute": 600},
    }
    data = config(
        sqlite_url,
        [limited, sandbox_workspace("ws-free", ["free.example"], tmp_path / "free")],
        load_balancing_pools=[pool("invite", ["invite.com"], [("ws-a", 1.0)])],
    )
    relay = await start_relay(data, tmp_path)
    try:
        before = await scrape(relay)
        assert value(before, "relay_workspace_capacity_remaining", workspace="ws-a", limit="daily") == 10
        assert value(before, "relay_workspace_capacity_limit", workspace="ws-a", limit="daily") == 10
        assert value(before, "relay_workspace_capacity_limit", workspace="ws-a", limit="per_minute") == 600
        # No workspace-wide limit, no series; and never one per sender.
        assert total(before, "relay_workspace_capacity_limit", workspace="ws-free") == 0
        assert {dict(ls)["limit"] for (n, ls), _ in before.items() if n == "relay_workspace_capacity_limit"} == {
            "daily",
            "per_minute",
        }
        assert value(before, "relay_pool_available_workspaces", pool="invite") == 1
        assert value(before, "relay_pool_workspaces", pool="invite") == 1
        assert not value(before, "relay_selection_duration_seconds_count", pool="invite")  # no decision yet

        await submit_many(relay, SENDER, 3, tag="capacity")
        await wait_for_statuses(relay, {"sent": 3})
        after = await scrape(relay)
        assert value(after, "relay_workspace_capacity_remaining", workspace="ws-a", limit="daily") == 7
        assert value(after, "relay_selection_duration_seconds_count", pool="invite") == 3
        timed = value(after, "relay_selection_duration_seconds_sum", pool="invite")
        assert timed is not None and 0 < timed < 3 * 0.05
        assert value(after, "relay_selection_duration_seconds_bucket", pool="invite", le="+Inf") == 3
    finally:
        await relay.stop()


async def test_refused_credentials_make_a_workspace_auth_broken(sqlite_url: str, tmp_path: Path) -> None:
    refusing = sandbox_workspace("ws-auth", ["auth.example"], tmp_path / "x", fail_rate=1.0, fail_with="535 5.7.8 no")
    data = config(sqlite_url, [with_health(refusing, checks_enabled=False)])
    relay = await start_relay(data, tmp_path)
    try:
        assert health_of(await scrape(relay), "ws-auth") == "healthy"
        await submit_many(relay, "app@auth.example", 1, tag="auth")
        await wait_for_statuses(relay, {"deferred": 1})
        assert health_of(await scrape(relay), "ws-auth") == "auth_broken"
    finally:
        await relay.stop()


async def test_failed_sends_open_a_member_and_its_pool_has_one_fewer_available(sqlite_url: str, tmp_path: Path) -> None:
    health: dict[str, Any] = {"consecutive_failures": 2, "checks_enabled": False, "base_open_seconds": 300}
    failing = sandbox_workspace("ws-bad", [], tmp_path / "bad", fail_rate=1.0, fail_with="451 4.3.0 try later")
    members = [
        with_health(failing, **health),
        with_health(sandbox_workspace("ws-a", [], tmp_path / "a"), **health),
        with_health(sandbox_workspace("ws-b", [], tmp_path / "b"), **health),
    ]
    # ws-bad is nearly always chosen first, fails, and the message fails over to a healthy member.
    weights = [("ws-bad", 100.0), ("ws-a", 1.0), ("ws-b", 1.0)]
    data = config(sqlite_url, members, load_balancing_pools=[pool("invite", ["invite.com"], weights)])
    relay = await start_relay(data, tmp_path, rng=random.Random(9))
    try:
        before = await scrape(relay)
        assert health_of(before, "ws-bad") == "healthy"
        assert value(before, "relay_pool_available_workspaces", pool="invite") == 3
        found = before
        for sent in range(1, 21):  # one at a time until the breaker opens (two failures with these weights)
            await submit_many(relay, SENDER, 1, tag="open", first=sent)
            await wait_for_statuses(relay, {"sent": sent})
            found = await scrape(relay)
            if health_of(found, "ws-bad") == "open":
                break
        assert health_of(found, "ws-bad") == "open"
        assert health_of(found, "ws-a") == "healthy"
        assert value(found, "relay_pool_available_workspaces", pool="invite") == 2
        assert value(found, "relay_pool_workspaces", pool="invite") == 3
        assert value(found, "relay_deliveries_total", workspace="ws-bad", outcome="retry") == 2
    finally:
        await relay.stop()

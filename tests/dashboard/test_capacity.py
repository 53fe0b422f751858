"""The workspaces and capacity pages (issue 9): health with its history, limits used, last errors, the forecast
time to exhaustion, and spend from `cost_per_1000`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from relay.api.pools import MemberStatus
from relay.dashboard.capacity import exhaustion_forecast, spend
from relay.runtime import Relay
from tests.support.dashboard import KEYS, VIEWER_KEY, dashboard_client
from tests.support.net import async_wait_for
from tests.support.pools import pool, submit_many, wait_for_statuses
from tests.support.relay import config, sandbox_workspace, start_relay

NO_CHECKS = {"checks_enabled": False, "consecutive_failures": 2, "base_open_seconds": 600}


def member(ws: str, remaining: int, limit: int, *, enabled: bool = True, excluded: str | None = None,
           next_in: float = 3600.0) -> MemberStatus:  # fmt: skip
    return MemberStatus(
        workspace_id=ws, weight=1.0, enabled=enabled, health="healthy", last_error=None, available_again_at=None,
        sends_as="a@b.c", remaining=remaining, limit=limit, remaining_fraction=remaining / limit if limit else 0,
        next_capacity_in_seconds=next_in, full_reset_in_seconds=86_400, in_flight=0, score=None, excluded=excluded,
    )  # fmt: skip


def test_the_forecast_counts_only_members_that_may_take_mail() -> None:
    members = [member("a", 600, 1000), member("b", 400, 1000), member("c", 900, 1000, excluded="circuit open")]
    forecast = exhaustion_forecast(members, sent_per_minute=20.0)
    assert forecast["remaining"] == 1000 and forecast["limit"] == 2000
    assert forecast["exhausted_in"] == pytest.approx(50 * 60)  # 1000 left at 20 a minute
    assert forecast["back_first"] is False  # the first capacity comes back in an hour, after it ran out
    assert exhaustion_forecast(members, sent_per_minute=10.0)["back_first"] is True  # 100 min > 1 h
    assert exhaustion_forecast(members, sent_per_minute=0.0)["exhausted_in"] is None
    assert forecast["beyond_day"] is False and exhaustion_forecast(members, 0.5)["beyond_day"] is True  # 33 h
    assert exhaustion_forecast([member("a", 600, 1000, next_in=60)], 1.0)["back_first"] is True


@seed(9)
@settings(max_examples=200)
@given(
    st.dictionaries(
        st.tuples(st.sampled_from([None, "p1", "p2"]), st.sampled_from(["w1", "w2", "w3"])),
        st.integers(min_value=0, max_value=10**6),
    ),
    st.dictionaries(st.sampled_from(["w1", "w2", "w3"]), st.none() | st.floats(min_value=0, max_value=1000)),
)
def test_spend_adds_up_the_same_by_workspace_and_by_pool(sent: dict[Any, int], costs: dict[str, Any]) -> None:
    out = spend(sent, costs)
    assert sum(out["workspaces"].values()) == pytest.approx(out["total"])
    assert sum(out["pools"].values()) == pytest.approx(out["total"])
    expected = sum(n * (costs.get(ws) or 0) / 1000 for (_pool, ws), n in sent.items())
    assert out["total"] == pytest.approx(expected)


@pytest.fixture
async def relay(sqlite_url: str, tmp_path: Path) -> Relay:
    broken = sandbox_workspace("ws-a", [], tmp_path / "a", fail_rate=1.0, fail_with="451 4.3.0 try later")
    healthy = sandbox_workspace("ws-b", [], tmp_path / "b")
    data = config(
        sqlite_url,
        [
            {**broken, "health": NO_CHECKS, "cost_per_1000": 4.0},
            {**healthy, "cost_per_1000": 2.5, "rate_limits": {"workspace_daily": 100}},
        ],
        http=KEYS,
        load_balancing_pools=[pool("invite", ["invite.com"], [("ws-a", 1.0), ("ws-b", 1.0)])],
    )
    started = await start_relay(data, tmp_path)
    yield started
    await started.stop()


async def test_workspaces_show_health_history_limits_and_last_errors(relay: Relay) -> None:
    await submit_many(relay, "brian@invite.com", 10, tag="ws")
    await wait_for_statuses(relay, {"sent": 10})
    await async_wait_for(lambda: relay.health.health("ws-a").state == "open", timeout=10)
    async with dashboard_client(relay, VIEWER_KEY) as client:
        listing = (await client.get("/dashboard/workspaces")).text
        assert 'data-workspace="ws-a"' in listing and 'data-workspace="ws-b"' in listing
        assert "health-open" in listing and "health-healthy" in listing
        assert 'data-limit="ws:ws-b"' in listing and "10 of 100 used" in listing

        async def history() -> bool:
            return "data-health-change" in (await client.get("/dashboard/workspaces/ws-a")).text

        await async_wait_for(history, timeout=10)  # the event is written in its own transaction
        page = (await client.get("/dashboard/workspaces/ws-a")).text
        assert 'data-health="open"' in page and "healthy → <strong>open</strong>" in page
        assert page.count("data-failure") >= 2 and "451" in page
        assert (await client.get("/dashboard/workspaces/nope")).status_code == 404


async def test_capacity_forecasts_the_pool_and_prices_the_mail(relay: Relay) -> None:
    await submit_many(relay, "brian@invite.com", 10, tag="cap")
    await wait_for_statuses(relay, {"sent": 10})
    async with dashboard_client(relay, VIEWER_KEY) as client:
        page = (await client.get("/dashboard/capacity")).text
    row = re.search(r'data-pool-forecast="invite">(.*?)</tr>', page, re.S)
    assert row is not None
    # ws-a is open (excluded), so only ws-b's 90 left of 100 count; 10 sent in the last 15 minutes.
    assert "90 of 100 left" in row.group(1)
    assert re.search(r'class="num">0\.7<', row.group(1))  # 10 sends / 15 min
    assert "2 h" in row.group(1)  # 90 at 0.67 a minute: 2 h 15 min
    spend_b = re.search(r'data-spend="ws-b">.*?data-spend-day>([0-9.]+)<', page, re.S)
    assert spend_b is not None and spend_b.group(1) == "0.03"  # 10 sent * 2.5 / 1000 = 0.025
    assert re.search(r"data-spend-total>0\.03<", page)
    assert 'data-pool-spend="invite"' in page

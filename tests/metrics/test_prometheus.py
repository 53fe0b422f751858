"""`/metrics` (issue 9, first step): Prometheus text that prometheus-client's own parser reads, outside `/api/v1`
and without a key, whose counters move when mail is delivered through a pool."""

from __future__ import annotations

from pathlib import Path

from tests.metrics.scrape import samples
from tests.support.api import api_client
from tests.support.pools import pool, submit_many, wait_for_statuses
from tests.support.relay import config, sandbox_workspace, start_relay


async def test_metrics_parse_and_move_with_deliveries(sqlite_url: str, tmp_path: Path) -> None:
    data = config(
        sqlite_url,
        [
            sandbox_workspace("ws-a", ["a.example"], tmp_path / "a"),
            sandbox_workspace("ws-b", ["b.example"], tmp_path / "b"),
        ],
        load_balancing_pools=[pool("invite", ["invite.com"], [("ws-a", 1.0), ("ws-b", 1.0)])],
    )
    relay = await start_relay(data, tmp_path)
    try:
        async with api_client(relay) as api:
            before = samples((await api.get("/metrics")).text)
            assert before[("relay_queue_messages", (("status", "sent"),))] == 0
            await submit_many(relay, "brian@invite.com", 4, tag="metrics")
            await wait_for_statuses(relay, {"sent": 4})
            answer = await api.get("/metrics")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
        after = samples(answer.text)
        assert after[("relay_queue_messages", (("status", "sent"),))] == 4
        delivered = sum(
            v for (name, labels), v in after.items()
            if name == "relay_deliveries_total" and ("outcome", "sent") in labels
        )  # fmt: skip
        selected = sum(v for (name, _), v in after.items() if name == "relay_selections_total")
        assert delivered == 4 and selected == 4
        timed = sum(v for (name, _), v in after.items() if name == "relay_delivery_duration_seconds_count")
        assert timed == 4
    finally:
        await relay.stop()

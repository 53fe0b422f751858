"""Webhook metrics: each post counted by endpoint and outcome, and the backlog read from the outbox at scrape
time — also when the posts come from `relay serve`'s webhook process, which reports them to the process that
serves `/metrics`."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.e2e.test_pool_reload import submit
from tests.metrics.scrape import samples, scrape, value
from tests.support.net import async_wait_for, port_open, wait_for
from tests.support.pools import submit_many, wait_for_statuses
from tests.support.receiver import Receiver
from tests.support.relay import RelayProcess, config, sandbox_workspace, start_relay


async def test_posts_are_counted_by_endpoint_and_outcome(sqlite_url: str, tmp_path: Path) -> None:
    with Receiver() as good, Receiver() as down:
        down.status = 503
        data = config(
            sqlite_url,
            [sandbox_workspace("ws-a", ["a.example"], tmp_path / "a")],
            webhooks=[
                {"id": "good-hook", "url": good.url, "events": ["message.sent"]},
                {"id": "down-hook", "url": down.url, "events": ["message.sent"]},
            ],
        )
        relay = await start_relay(data, tmp_path)
        try:
            before = await scrape(relay)
            assert value(before, "relay_webhook_pending", endpoint="good-hook") == 0
            assert value(before, "relay_webhook_pending", endpoint="down-hook") == 0
            await submit_many(relay, "app@a.example", 1, tag="hooks")
            await wait_for_statuses(relay, {"sent": 1})
            await async_wait_for(lambda: good.accepted() and down.posts, what="a post to each endpoint")

            async def counted() -> bool:
                found = await scrape(relay)
                return bool(value(found, "relay_webhook_deliveries_total", endpoint="down-hook", outcome="retry"))

            await async_wait_for(counted, what="the refused post to be counted")
            after = await scrape(relay)
            assert value(after, "relay_webhook_deliveries_total", endpoint="good-hook", outcome="delivered") == 1
            retries = value(after, "relay_webhook_deliveries_total", endpoint="down-hook", outcome="retry")
            assert retries is not None and retries >= 1  # tried again after 5 s on a slow machine: 2
            assert value(after, "relay_webhook_deliveries_total", endpoint="down-hook", outcome="delivered") is None
            # The refused one waits for its next try: still pending.
            assert value(after, "relay_webhook_pending", endpoint="good-hook") == 0
            assert value(after, "relay_webhook_pending", endpoint="down-hook") == 1
        finally:
            await relay.stop()


def test_posts_from_the_webhook_process_are_counted_where_metrics_are_served(sqlite_url: str, tmp_path: Path) -> None:
    with Receiver() as receiver:
        data = config(
            sqlite_url,
            [sandbox_workspace("ws-a", ["ws-a.test"], tmp_path / "outbox")],
            webhooks=[{"id": "ops-hook", "url": receiver.url, "events": ["message.sent"]}],
        )
        relay = RelayProcess(data, tmp_path).start()
        try:
            url = f"http://127.0.0.1:{data['http']['port']}/metrics"

            def delivered() -> float | None:
                found = samples(httpx.get(url, timeout=5).text)
                return value(found, "relay_webhook_deliveries_total", endpoint="ops-hook", outcome="delivered")

            wait_for(lambda: port_open(data["http"]["port"]), what="the HTTP port")  # it opens after SMTP's
            assert delivered() is None
            submit(relay.smtp_port, 2, sender="brian@ws-a.test")
            wait_for(lambda: len(receiver.accepted()) == 2, timeout=15, what="two posts from the webhook process")
            wait_for(lambda: delivered() == 2, timeout=10, what="the webhook process's posts in /metrics")
        finally:
            relay.stop()

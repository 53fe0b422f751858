"""The Grafana dashboard and the Prometheus alert rules in `docs/` cannot drift from the code: every metric an
expression names is one a running Relay serves (with the suffix its type gives it), every label it selects or
groups by is one that metric carries, and the dashboard shows each thing issue 9 asks for.

The names are checked against a live scrape of a Relay that has done one of everything (a pool delivery, an SMTP
refusal, a webhook post), so the labelled series exist and their label names can be compared too."""

from __future__ import annotations

import asyncio
import json
import re
import smtplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml  # PyYAML: installed with the dev tools (schemathesis depends on it)
from prometheus_client.parser import text_string_to_metric_families

from relay.runtime import Relay
from tests.support.api import api_client
from tests.support.net import async_wait_for
from tests.support.pools import pool, submit_many, wait_for_statuses
from tests.support.receiver import Receiver
from tests.support.relay import config, sandbox_workspace, start_relay

DOCS = Path(__file__).resolve().parents[2] / "docs"
DASHBOARD = DOCS / "grafana" / "relay-dashboard.json"
ALERTS = DOCS / "prometheus" / "relay-alerts.yml"

METRIC = re.compile(r"\brelay_[a-zA-Z0-9_]+")
SELECTOR = re.compile(r"\b(relay_[a-zA-Z0-9_]+)\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"), "gauge": ("",)}


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for item in items:
        yield item
        yield from panels(item.get("panels", []))  # a collapsed row holds its panels


def dashboard_exprs() -> dict[str, str]:
    board = json.loads(DASHBOARD.read_text())
    return {
        f"dashboard: {p['title']} [{t['refId']}]": t["expr"]
        for p in panels(board["panels"])
        for t in p.get("targets", [])
    }


def alert_exprs() -> dict[str, str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return {f"alert {r['alert']}": str(r["expr"]) for g in rules["groups"] for r in g["rules"]}


def served(text: str) -> dict[str, set[str] | None]:
    """Every sample name a scrape can hold -> the label names its series carry (None: no series yet)."""
    names: dict[str, set[str] | None] = {}
    for family in text_string_to_metric_families(text):
        for suffix in SUFFIXES.get(family.type, ("",)):
            names.setdefault(family.name + suffix, None)
        for sample in family.samples:
            names[sample.name] = (names.get(sample.name) or set()) | set(sample.labels)
    return names


async def exercised_scrape(sqlite_url: str, tmp_path: Path, receiver: Receiver) -> str:
    """`/metrics` of a Relay after a pool delivery, an SMTP refusal and a webhook post."""
    limited = {**sandbox_workspace("ws-a", [], tmp_path / "a"), "rate_limits": {"workspace_daily": 100}}
    data = config(
        sqlite_url,
        [limited],
        load_balancing_pools=[pool("invite", ["invite.com"], [("ws-a", 1.0)])],
        webhooks=[{"id": "ops-hook", "url": receiver.url, "events": ["message.sent"]}],
    )
    relay: Relay = await start_relay(data, tmp_path)
    try:
        await submit_many(relay, "brian@invite.com", 1, tag="dashboards")
        await wait_for_statuses(relay, {"sent": 1})

        def refused() -> int:
            with smtplib.SMTP(*relay.smtp_address, timeout=30) as client:
                client.ehlo()
                return client.mail("someone@unserved.example")[0]

        assert await asyncio.to_thread(refused) == 550
        async with api_client(relay) as api:

            async def scraped() -> str | None:
                text = (await api.get("/metrics")).text
                return text if "relay_webhook_deliveries_total{" in text else None

            text = await async_wait_for(scraped, what="the webhook post in /metrics")
        assert isinstance(text, str)
        return text
    finally:
        await relay.stop()


async def test_every_metric_the_docs_use_is_served(sqlite_url: str, tmp_path: Path) -> None:
    exprs = {**dashboard_exprs(), **alert_exprs()}
    assert len(exprs) >= 20
    with Receiver() as receiver:
        names = served(await exercised_scrape(sqlite_url, tmp_path, receiver))
    problems = []
    for where, expr in exprs.items():
        used = METRIC.findall(expr)
        if not used:
            problems.append(f"{where}: names no relay metric")
        problems += [f"{where}: {name} is not served" for name in used if name not in names]
        # Label names are known only from series; a metric that has none after this run (the scrape-error count)
        # is checked by name alone.
        known = {name: names[name] for name in used if names.get(name) is not None}
        labels: set[str] = set().union(*known.values())
        for name, matchers in SELECTOR.findall(expr):
            problems += [
                f"{where}: {name} has no label {label}"
                for label in MATCHER.findall(matchers)
                if name in known and label not in (known[name] or set())
            ]
        for grouping in GROUPING.findall(expr):
            problems += [
                f"{where}: no metric in it has a label {label}"
                for label in (x.strip() for x in grouping.split(","))
                if known and label and label not in labels
            ]
    unexercised = {n for e in exprs.values() for n in METRIC.findall(e) if n in names and names[n] is None}
    assert unexercised <= {"relay_metrics_scrape_errors_total"}, unexercised
    assert not problems, "\n".join(problems)


def test_the_dashboard_shows_what_issue_9_asks_for() -> None:
    shown = set(METRIC.findall(" ".join(dashboard_exprs().values())))
    asked = {
        "relay_selections_total",
        "relay_deliveries_total",
        "relay_delivery_duration_seconds_bucket",
        "relay_selection_duration_seconds_bucket",
        "relay_workspace_capacity_remaining",
        "relay_workspace_health",
        "relay_queue_messages",
        "relay_pool_available_workspaces",
        "relay_smtp_rejections_total",
        "relay_webhook_deliveries_total",
    }
    assert asked <= shown, asked - shown
    board = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in panels(board["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels(board["panels"]):
        for t in p.get("targets", []):
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]


def test_the_alerts_cover_exhaustion_health_and_backlog() -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert {
        "RelayPoolExhausted",
        "RelayPoolNearExhaustion",
        "RelayWorkspaceCapacityLow",
        "RelayWorkspaceOpen",
        "RelayWorkspaceAuthBroken",
        "RelayQueueBacklogGrowing",
        "RelayDeliveryFailureRatioHigh",
    } <= set(alerts)
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"], name
    assert "deriv(" in alerts["RelayQueueBacklogGrowing"]["expr"]
    assert alerts["RelayQueueBacklogGrowing"]["for"] == "15m"

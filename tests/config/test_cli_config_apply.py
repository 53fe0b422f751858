"""`relay config export` and `relay config apply FILE`, run as commands against the database of a running Relay:
export masks literal secrets and applies back unchanged; apply prints the diff, then makes it (audited), a dry run
changes nothing, an invalid file changes nothing and names the JSON path; the running Relay follows."""

from __future__ import annotations

import asyncio
import copy
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.routing import Route
from relay.runtime import Relay
from tests.support.pools import pool
from tests.support.relay import config, sandbox_workspace, start_relay

ADMIN = {"Authorization": "Bearer admin-key-apply-2b7d"}
MAILGUN_KEY = "key-literal-apply-7e1f"


@pytest.fixture
async def relay(sqlite_url: str, tmp_path: Path) -> AsyncIterator[Relay]:
    data = config(
        sqlite_url,
        [
            sandbox_workspace("ws-a", ["joinmednet.org"], tmp_path / "a"),
            sandbox_workspace("ws-b", ["mednet.example"], tmp_path / "b"),
        ],
        load_balancing_pools=[pool("invite", ["invite.com"], [("ws-a", 3.0), ("ws-b", 1.0)])],
        http={"api_keys": [{"name": "ops", "key": "admin-key-apply-2b7d", "role": "admin"}]},
    )
    started = await start_relay(data, tmp_path)
    transport = httpx.ASGITransport(app=started.api_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as api:
        body = {"id": "mg", "domains": ["mg.example"], "mailgun": {"api_key": MAILGUN_KEY}}
        assert (await api.post("/api/v1/workspaces", json=body, headers=ADMIN)).status_code == 201
    yield started
    await started.stop()


async def relay_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "relay.cli", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def cli_config(relay: Relay, tmp_path: Path) -> str:
    path = tmp_path / "cli.json"
    path.write_text(json.dumps({"database_url": relay.settings.database_url}))
    return str(path)


async def export(cli_config: str) -> dict[str, Any]:
    result = await relay_cli("config", "export", "--config", cli_config)
    assert result.returncode == 0, result.stderr
    assert MAILGUN_KEY not in result.stdout
    return dict(json.loads(result.stdout))


async def until(condition: Any, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_export_masks_secrets_and_applies_back_unchanged(relay: Relay, cli_config: str, tmp_path: Path) -> None:
    exported = await export(cli_config)
    assert [w["id"] for w in exported["workspaces"]] == ["mg", "ws-a", "ws-b"]
    assert exported["workspaces"][0]["mailgun"]["api_key"] == "********"
    assert [p["id"] for p in exported["load_balancing_pools"]] == ["invite"]
    path = tmp_path / "exported.json"
    path.write_text(json.dumps(exported))
    result = await relay_cli("config", "apply", str(path), "--config", cli_config)
    assert result.returncode == 0, result.stderr
    assert "no changes" in result.stdout


async def test_apply_prints_the_diff_then_applies_and_audits(relay: Relay, cli_config: str, tmp_path: Path) -> None:
    target = copy.deepcopy(await export(cli_config))
    target["workspaces"] = [w for w in target["workspaces"] if w["id"] != "ws-b"] + [
        sandbox_workspace("news", ["news.example.org"], tmp_path / "news")
    ]
    target["load_balancing_pools"][0]["workspaces"].pop(1)  # ws-b leaves the pool before it is deleted
    target["load_balancing_pools"][0]["workspaces"][0]["weight"] = 2.5
    path = tmp_path / "target.json"
    path.write_text(json.dumps({**target, "smtp": {"port": 2626}}))

    dry = await relay_cli("config", "apply", str(path), "--dry-run", "--config", cli_config)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert "+ workspace news" in lines and "- workspace ws-b" in lines and "~ pool invite" in lines
    assert '    workspaces["ws-a"].weight: 3.0 -> 2.5' in lines and '    workspaces["ws-b"]: removed' in lines
    assert "dry run" in dry.stdout and "not applied (each process's own settings): smtp" in dry.stderr
    assert relay.router.route("x@news.example.org") is None

    applied = await relay_cli("config", "apply", str(path), "--config", cli_config)
    assert applied.returncode == 0, applied.stderr
    assert "3 changes applied" in applied.stdout
    # The running relay follows by itself (its poll), without a reload.
    await until(lambda: relay.router.route("x@news.example.org") == Route("direct", "news"), "news routed")
    await until(lambda: relay.router.route("x@mednet.example") is None, "ws-b gone")
    view = relay.balancer.catalog.get("invite")
    assert view is not None and {m.workspace_id: m.weight for m in view.members} == {"ws-a": 2.5}
    stored = await relay.workspace_tables.get("mg")
    assert stored is not None and stored.document["mailgun"]["api_key"] == MAILGUN_KEY  # the mask kept it
    transport = httpx.ASGITransport(app=relay.api_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as api:
        audit = (await api.get("/api/v1/audit?limit=3", headers=ADMIN)).json()
    assert {(e["target_type"], e["target_id"], e["action"]) for e in audit} == {
        ("workspace", "news", "apply:create"),
        ("pool", "invite", "apply:update"),
        ("workspace", "ws-b", "apply:delete"),
    }
    assert all(e["actor"].startswith("cli:") for e in audit)


async def test_an_invalid_file_changes_nothing_and_names_the_path(
    relay: Relay, cli_config: str, tmp_path: Path
) -> None:
    before = await export(cli_config)
    broken = copy.deepcopy(before)
    broken["load_balancing_pools"][0]["workspaces"][0]["workspace_id"] = "mailgn-1"
    broken["workspaces"][1]["domains"] = ["mednet.example"]
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    result = await relay_cli("config", "apply", str(path), "--config", cli_config)
    assert result.returncode == 1
    assert 'load_balancing_pools[0].workspaces[0].workspace_id: unknown workspace "mailgn-1"' in result.stderr
    assert 'workspaces[2].domains[0]: domain "mednet.example" is already served by workspace "ws-a"' in result.stderr
    assert await export(cli_config) == before

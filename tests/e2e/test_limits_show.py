from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from tests.e2e.test_rate_limits import SENDER, statuses, submit, workspace
from tests.support.net import async_wait_for
from tests.support.relay import config, start_relay


async def relay_cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.cli", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_limits_show_prints_used_and_remaining(sqlite_url: str, tmp_path: Path, outbox: Path) -> None:
    ws = workspace(outbox, 20)
    ws["rate_limits"]["workspace_daily"] = 100
    data = config(sqlite_url, [ws])
    relay = await start_relay(data, tmp_path)
    try:
        await submit(relay, 3)

        async def sent() -> bool:
            return await statuses(relay) == {"sent": 3}

        await async_wait_for(sent, timeout=30, what="3 sent")
    finally:
        await relay.stop()
    path = tmp_path / "show.json"
    path.write_text(json.dumps(data))
    code, out, err = await relay_cli("limits", "show", "--config", str(path))
    assert code == 0, err
    rows = {
        line.split("│")[2].strip(): [c.strip() for c in line.split("│")[1:-1]]
        for line in out.splitlines()
        if line.count("│") >= 8
    }
    assert rows["ws:ws"][2:6] == ["rolling", "100", "3", "97"]
    assert rows[f"user:ws:{SENDER}"][2:6] == ["rolling", "20", "3", "17"]
    code, out, err = await relay_cli("limits", "show", "--config", str(path), "--workspace", "nope")
    assert (code, err.strip()) == (1, 'unknown workspace "nope"')

from __future__ import annotations

import asyncio
import sys
from email import message_from_bytes
from pathlib import Path

from tests.support.net import async_wait_for
from tests.support.relay import config, sandbox_workspace, start_relay


async def test_relay_send_delivers_a_test_message(sqlite_url: str, tmp_path: Path, outbox: Path) -> None:
    data = config(sqlite_url, [sandbox_workspace("sb", ["joinmednet.org"], outbox)])
    relay = await start_relay(data, tmp_path)
    try:
        host, port = relay.smtp_address
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "relay.cli",
            "send",
            "--from",
            "brian@joinmednet.org",
            "--to",
            "a@example.org",
            "--to",
            "b@example.org",
            "--subject",
            "Hello from the CLI",
            "--server",
            f"{host}:{port}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await process.communicate()
        assert process.returncode == 0, stderr.decode()
        assert "to a@example.org, b@example.org" in stdout.decode()
        [eml] = await async_wait_for(lambda: list(outbox.glob("*.eml")), what="the test message in the outbox")
        message = message_from_bytes(eml.read_bytes())
        assert message["Subject"] == "Hello from the CLI"
        assert message["From"] == "brian@joinmednet.org"
    finally:
        await relay.stop()


async def test_relay_send_reports_a_refusal(sqlite_url: str, tmp_path: Path, outbox: Path) -> None:
    relay = await start_relay(config(sqlite_url, [sandbox_workspace("sb", ["joinmednet.org"], outbox)]), tmp_path)
    try:
        host, port = relay.smtp_address
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "relay.cli",
            "send",
            "--from",
            "brian@unserved.example",
            "--to",
            "a@example.org",
            "--server",
            f"{host}:{port}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await process.communicate()
        assert process.returncode == 1
        assert "550" in stderr.decode()
    finally:
        await relay.stop()

from __future__ import annotations

import asyncio
import sys
from email import message_from_bytes
from pathlib import Path

from relay.runtime import Relay
from tests.support.net import async_wait_for
from tests.support.relay import config, sandbox_workspace, start_relay


async def relay_send(relay: Relay, *args: str) -> tuple[int, str, str]:
    host, port = relay.smtp_address
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay.cli",
        "send",
        *args,
        "--server",
        f"{host}:{port}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_relay_send_delivers_a_test_message(sqlite_url: str, tmp_path: Path, outbox: Path) -> None:
    relay = await start_relay(config(sqlite_url, [sandbox_workspace("sb", ["joinmednet.org"], outbox)]), tmp_path)
    try:
        code, stdout, stderr = await relay_send(
            relay,
            "--from",
            "brian@joinmednet.org",
            "--to",
            "a@example.org",
            "--to",
            "b@example.org",
            "--subject",
            "Hello from the CLI",
        )
        assert code == 0, stderr
        assert "to a@example.org, b@example.org" in stdout
        [eml] = await async_wait_for(lambda: list(outbox.glob("*.eml")), what="the test message in the outbox")
        message = message_from_bytes(eml.read_bytes())
        assert message["Subject"] == "Hello from the CLI"
        assert message["From"] == "brian@joinmednet.org"
    finally:
        await relay.stop()


async def test_relay_send_reports_a_refusal(sqlite_url: str, tmp_path: Path, outbox: Path) -> None:
    relay = await start_relay(config(sqlite_url, [sandbox_workspace("sb", ["joinmednet.org"], outbox)]), tmp_path)
    try:
        code, _, stderr = await relay_send(relay, "--from", "brian@unserved.example", "--to", "a@example.org")
        assert code == 1
        assert "550 5.7.1" in stderr
    finally:
        await relay.stop()

"""Header rewrite rules from a workspace's config apply to what that workspace delivers, and only there."""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

from tests.support.net import async_wait_for
from tests.support.relay import config, sandbox_workspace, start_relay

RAW = (
    b"From: app@joinmednet.org\r\nTo: a@example.org\r\n"
    b"List-Unsubscribe: <https://mandrillapp.com/unsub>\r\nX-Mailer: legacy\r\nSubject: hi\r\n\r\nbody\r\n"
)


async def test_workspace_rules_set_replace_and_remove(sqlite_url: str, tmp_path: Path) -> None:
    rules = {
        "enabled": True,
        "rules": [
            {"header_name": "X-Mailer", "new_value": "Relay"},
            {"header_name": "List-Unsubscribe", "new_value": ""},
            {"header_name": "X-Workspace", "new_value": "primary"},
        ],
    }
    primary = sandbox_workspace("primary", ["joinmednet.org"], tmp_path / "primary", header_rewrite=rules)
    plain = sandbox_workspace("plain", ["mednet.example"], tmp_path / "plain")
    relay = await start_relay(config(sqlite_url, [primary, plain]), tmp_path)
    try:
        host, port = relay.smtp_address

        def send() -> None:
            with smtplib.SMTP(host, port) as client:
                client.sendmail("app@joinmednet.org", ["a@example.org"], RAW)
                client.sendmail("app@mednet.example", ["a@example.org"], RAW)

        await asyncio.to_thread(send)
        [rewritten] = await async_wait_for(lambda: list((tmp_path / "primary").glob("*.eml")), what="primary")
        [untouched] = await async_wait_for(lambda: list((tmp_path / "plain").glob("*.eml")), what="plain")
        assert rewritten.read_bytes() == (
            b"From: app@joinmednet.org\r\nTo: a@example.org\r\n"
            b"X-Mailer: Relay\r\nSubject: hi\r\nX-Workspace: primary\r\n\r\nbody\r\n"
        )
        assert untouched.read_bytes() == RAW
    finally:
        await relay.stop()

"""`delivery.enabled: false` makes an ingress-only process: it accepts and queues, and never delivers.

Another process on the same database delivers what it queued — the deployment this mode is for, and how
`bench.smtp` measures accepting alone.
"""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

from relay.store import MessageQueue
from tests.support.net import async_wait_for
from tests.support.relay import config, sandbox_workspace, start_relay

MESSAGE = b"From: app@box.test\r\nTo: someone@dest.test\r\nSubject: ingress only\r\n\r\nbody\r\n"


def send(address: tuple[str, int]) -> None:
    with smtplib.SMTP(*address, timeout=30) as client:
        client.sendmail("app@box.test", ["someone@dest.test"], MESSAGE)


async def test_an_ingress_only_process_queues_and_another_delivers(
    sqlite_url: str, outbox: Path, tmp_path: Path
) -> None:
    workspaces = [sandbox_workspace("box", ["box.test"], outbox)]
    ingress = await start_relay(config(sqlite_url, workspaces, delivery={"enabled": False}), tmp_path)
    try:
        assert "relay-delivery" not in {task.get_name() for task in ingress._tasks}
        for _ in range(3):
            await asyncio.to_thread(send, ingress.smtp_address)
        queue: MessageQueue = ingress.queue
        # Nothing claims them: the worker is built (resend needs it) but never runs. Claiming them here proves
        # they were due and unclaimed; hand them back so the delivering process takes them.
        claimed = await queue.claim(owner="probe", limit=10, lease_seconds=30)
        assert len(claimed) == 3
        assert await queue.release_leases("probe") == 3
        assert not list(outbox.iterdir())
    finally:
        await ingress.stop()

    deliverer = await start_relay(config(sqlite_url, workspaces), tmp_path)
    try:
        await async_wait_for(lambda: len(list(outbox.glob("*.eml"))) == 3, timeout=20, what="3 messages delivered")
    finally:
        await deliverer.stop()

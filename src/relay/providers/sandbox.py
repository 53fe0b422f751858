"""Sandbox provider: writes each message as `<id>.eml` under `outbox_dir`, and fails on request."""

from __future__ import annotations

import asyncio
import json
import os
import random
from pathlib import Path

from ..config import SandboxSettings
from .smtp_replies import classify_reply
from .types import Health, OutboundMessage, Outcome

__all__ = ["SandboxProvider"]


class SandboxProvider:
    """`fail_rate` of sends answer `fail_with` (an SMTP reply such as `451 4.3.0 try later`)."""

    kind = "sandbox"

    def __init__(self, workspace_id: str, settings: SandboxSettings, rng: random.Random | None = None) -> None:
        self.workspace_id = workspace_id
        self.concurrency = 256
        self._settings = settings
        self._outbox = Path(settings.outbox_dir)
        self._rng = rng or random.Random()
        code, _, text = settings.fail_with.partition(" ")
        self._fail_code, self._fail_text = int(code), text or "sandbox failure (fail_rate)"

    async def send(self, message: OutboundMessage) -> Outcome:
        if self._settings.latency_ms:
            await asyncio.sleep(self._settings.latency_ms / 1000)
        if self._settings.fail_rate and self._rng.random() < self._settings.fail_rate:
            kind = classify_reply(self._fail_code, self._fail_text)
            return Outcome(kind, status=str(self._fail_code), response=self._fail_text)
        await asyncio.to_thread(self._write, message)
        return Outcome("sent", status="250", response="written to the sandbox outbox", provider_message_id=message.id)

    async def check(self) -> Health:
        if self._settings.check_fail_with is not None:  # tests and demos: a check that fails as configured
            code, _, text = self._settings.check_fail_with.partition(" ")
            kind = classify_reply(int(code), text)
            return Health(False, self._settings.check_fail_with, auth=kind == "auth")
        try:
            self._outbox.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return Health(False, f"outbox {self._outbox}: {exc.strerror}")
        return Health(os.access(self._outbox, os.W_OK), f"outbox {self._outbox}")

    async def aclose(self) -> None:
        return None

    def _write(self, message: OutboundMessage) -> None:
        self._outbox.mkdir(parents=True, exist_ok=True)
        envelope = {
            "mail_from": message.mail_from,
            "recipients": list(message.recipients),
            "workspace_id": self.workspace_id,
        }
        # Write then rename, so a reader of the outbox never sees half a message.
        for name, data in ((f"{message.id}.json", json.dumps(envelope).encode()), (f"{message.id}.eml", message.data)):
            temporary = self._outbox / f".{name}.tmp"
            temporary.write_bytes(data)
            os.replace(temporary, self._outbox / name)

"""Steady mail and what became of it, for the provider fault matrix.

- `SteadyFlow`: one SMTP session in a thread submitting a message every 1/rate seconds until stopped, keeping
  the queue id of every message Relay accepted (and the reply of any it refused).
- `HealthTimeline`: samples how this process sees one workspace (`HealthView.health`) and keeps each change.
- Readings of the attempts: when mail was first routed away from a member (the decision left it out, its
  connections were all busy, or a send on it failed over), and when it next delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime

from relay.runtime import Relay
from relay.store import AttemptView
from tests.support.pools import plain_message

__all__ = ["HealthTimeline", "SteadyFlow", "first_delivery", "routed_away", "tries_on", "utc_now"]


def utc_now() -> datetime:
    return datetime.now(UTC)


class SteadyFlow:
    def __init__(self, address: tuple[str, int], sender: str, tag: str, rate: float) -> None:
        self._address = address
        self.sender = sender
        self.tag = tag
        self._interval = 1.0 / rate
        self.accepted: dict[int, str] = {}  # message number -> queue id
        self.accepted_at: dict[int, datetime] = {}
        self.refused: dict[int, str] = {}  # message number -> the reply (an SMTP refusal, or the error)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"flow-{tag}", daemon=True)

    def start(self) -> SteadyFlow:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Blocks until the thread ends: call it off the event loop that runs Relay (`asyncio.to_thread`)."""
        self._stop.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the SMTP flow did not stop"

    def since(self, moment: datetime) -> list[str]:
        """Queue ids of the messages accepted at or after `moment`."""
        with self._lock:
            return [self.accepted[n] for n, at in self.accepted_at.items() if at >= moment]

    def _run(self) -> None:
        start = time.monotonic()
        n = 0
        client: smtplib.SMTP | None = None
        try:
            while not self._stop.is_set():
                # Paced by the clock, not by replies: a slow reply is followed by a burst that catches up.
                if self._stop.wait(max(0.0, start + n * self._interval - time.monotonic())):
                    break
                if client is None:
                    client = smtplib.SMTP(*self._address, timeout=30)
                    client.ehlo()
                try:
                    self._submit(client, n)
                except (smtplib.SMTPException, OSError) as exc:
                    self.refused[n] = f"{type(exc).__name__}: {exc}"
                    with contextlib.suppress(Exception):
                        client.close()
                    client = None
                n += 1
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    client.quit()

    def _submit(self, client: smtplib.SMTP, n: int) -> None:
        client.mail(self.sender)
        code, reply = client.rcpt("ann@example.org")
        if code != 250:
            self.refused[n] = f"RCPT {code} {reply.decode(errors='replace')}"
            client.rset()
            return
        code, reply = client.data(plain_message(self.sender, self.tag, n))
        if code != 250:
            self.refused[n] = f"DATA {code} {reply.decode(errors='replace')}"
            return
        with self._lock:
            self.accepted[n] = reply.decode().rsplit(" ", 1)[1]
            self.accepted_at[n] = utc_now()


class HealthTimeline:
    """Every change of one workspace's health state as this process sees it, sampled every `interval` s."""

    def __init__(self, relay: Relay, workspace_id: str, interval: float = 0.02) -> None:
        self._relay = relay
        self._workspace_id = workspace_id
        self._interval = interval
        self.changes: list[tuple[datetime, str]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> HealthTimeline:
        self._task = asyncio.create_task(self._run(), name=f"timeline-{self._workspace_id}")
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            state = self._relay.health.health(self._workspace_id).state
            if not self.changes or self.changes[-1][1] != state:
                self.changes.append((utc_now(), state))
            await asyncio.sleep(self._interval)

    def first(self, states: Iterable[str], since: datetime, until: datetime | None = None) -> datetime | None:
        """When the workspace first entered one of `states` in [since, until), or None."""
        wanted = set(states)
        for at, state in self.changes:
            if at >= since and (until is None or at < until) and state in wanted:
                return at
        return None

    def states(self, since: datetime, until: datetime | None = None) -> list[str]:
        """The states it went through in [since, until), in order (the one it was in at `since` first)."""
        before = [state for at, state in self.changes if at < since]
        during = [state for at, state in self.changes if at >= since and (until is None or at < until)]
        return before[-1:] + during


def routed_away(
    attempts: dict[str, list[AttemptView]], workspace_id: str, since: datetime, until: datetime | None = None
) -> datetime | None:
    """When a message was first sent elsewhere because of `workspace_id` in [since, until): its decision left it
    out (unhealthy), it refused the reservation (ejected, all connections busy), or a send on it failed over."""
    first: datetime | None = None
    for rows in attempts.values():
        for previous, attempt in zip([None, *rows], rows, strict=False):
            if attempt.workspace_id == workspace_id or attempt.started_at < since:
                continue
            if until is not None and attempt.started_at >= until:
                continue
            evidence = attempt.selection or {}
            avoided = workspace_id in evidence.get("excluded", {}) or workspace_id in evidence.get("refused", {})
            failed_over = (
                previous is not None and previous.workspace_id == workspace_id and bool(evidence.get("failover"))
            )
            if (avoided or failed_over) and (first is None or attempt.started_at < first):
                first = attempt.started_at
    return first


def first_delivery(
    attempts: dict[str, list[AttemptView]], workspace_id: str, since: datetime, until: datetime | None = None
) -> datetime | None:
    """When `workspace_id` first took a message whose send started in [since, until)."""
    done = [
        a.finished_at
        for rows in attempts.values()
        for a in rows
        if a.workspace_id == workspace_id
        and a.outcome == "sent"
        and a.started_at >= since
        and (until is None or a.started_at < until)
    ]
    return min(done, default=None)


def tries_on(
    attempts: dict[str, list[AttemptView]], workspace_id: str, since: datetime, until: datetime | None = None
) -> list[AttemptView]:
    """Attempts on `workspace_id` that did not send, started in [since, until)."""
    return [
        a
        for rows in attempts.values()
        for a in rows
        if a.workspace_id == workspace_id
        and a.outcome != "sent"
        and a.started_at >= since
        and (until is None or a.started_at < until)
    ]

"""Load-balancing pools in end-to-end tests: pool config, bulk SMTP submission, and waiting on the queue."""

from __future__ import annotations

import asyncio
import smtplib
from collections import Counter
from typing import Any

from relay.runtime import Relay
from relay.store import AttemptView, Messages, MessageView

from .net import async_wait_for


def pool(pool_id: str, patterns: list[str], members: list[tuple[str, float]], **extra: Any) -> dict[str, Any]:
    """A `load_balancing_pools[]` entry: `members` are (workspace id, weight)."""
    return {
        "id": pool_id,
        "name": pool_id.replace("-", " "),
        "domain_patterns": patterns,
        "workspaces": [{"workspace_id": ws, "weight": weight} for ws, weight in members],
        **extra,
    }


def plain_message(sender: str, tag: str, n: int, recipient: str = "ann@example.org") -> bytes:
    """A small message whose Message-ID (`<tag-n@sender domain>`) identifies it at the upstream."""
    domain = sender.rpartition("@")[2]
    return (
        f"From: Brian <{sender}>\r\nTo: {recipient}\r\nSubject: {tag} {n}\r\n"
        f"Message-ID: <{tag}-{n}@{domain}>\r\n\r\nbody {n}\r\n"
    ).encode()


def message_id_header(sender: str, tag: str, n: int) -> str:
    return f"<{tag}-{n}@{sender.rpartition('@')[2]}>"


async def submit_many(
    relay: Relay,
    sender: str,
    count: int,
    *,
    tag: str,
    sessions: int = 1,
    first: int = 0,
    recipient: str = "ann@example.org",
) -> dict[int, str]:
    """Submit messages `first`..`first + count - 1` over `sessions` concurrent SMTP connections, each reused
    for its share of the messages. Returns message number -> Relay's queue id."""
    host, port = relay.smtp_address
    numbers = list(range(first, first + count))
    shares = [numbers[i::sessions] for i in range(sessions)]

    def session(share: list[int]) -> dict[int, str]:
        ids = {}
        with smtplib.SMTP(host, port, timeout=30) as client:
            client.ehlo()
            for n in share:
                client.mail(sender)
                code, reply = client.rcpt(recipient)
                assert code == 250, reply
                code, reply = client.data(plain_message(sender, tag, n, recipient))
                assert code == 250, reply
                ids[n] = reply.decode().rsplit(" ", 1)[1]
        return ids

    results = await asyncio.gather(*(asyncio.to_thread(session, share) for share in shares if share))
    return {n: queue_id for ids in results for n, queue_id in ids.items()}


async def wait_for_statuses(relay: Relay, expected: dict[str, int], *, timeout: float = 30.0) -> None:
    """Wait until the queue holds exactly `expected` messages per status."""
    seen: dict[str, int] = {}

    async def reached() -> bool:
        seen.clear()
        seen.update(await relay.queue.status_counts())
        return seen == expected

    try:
        await async_wait_for(reached, timeout=timeout, interval=0.05, what=f"queue statuses {expected}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen {seen}") from None


async def views(relay: Relay, ids: list[str]) -> list[MessageView]:
    messages = Messages(relay.db)
    found = [await messages.get(i) for i in ids]
    assert all(v is not None for v in found)
    return [v for v in found if v is not None]


async def attempts_of(relay: Relay, ids: list[str]) -> dict[str, list[AttemptView]]:
    messages = Messages(relay.db)
    return {i: await messages.attempts(i) for i in ids}


def sent_through(attempts: dict[str, list[AttemptView]]) -> dict[str, str]:
    """Queue id -> the workspace of its (single) `sent` attempt."""
    out = {}
    for message_id, rows in attempts.items():
        sent = [a for a in rows if a.outcome == "sent"]
        assert len(sent) == 1, f"{message_id}: {[(a.workspace_id, a.outcome) for a in rows]}"
        assert sent[0].workspace_id is not None
        out[message_id] = sent[0].workspace_id
    return out


def shares(counts: Counter[str], total: int) -> dict[str, float]:
    return {ws: n / total for ws, n in counts.items()}

"""Pools change while `relay serve` runs: SIGHUP re-reads the file, and the tables are re-read every second.

Each test runs real `relay serve` processes with two sandbox workspaces in one pool, each writing `<id>.eml`
into its own outbox, so where a message went is read from the file system. Round robin over two members
alternates, so a few messages are enough to see both used, and any message in the wrong outbox is a failure.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import signal
import smtplib
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from relay.clock import SystemClock
from relay.store import Database, Messages, SelectionLog
from tests.support.net import wait_for
from tests.support.relay import RelayProcess, config, sandbox_workspace
from tests.support.services import fresh_database

SENDER = "brian@invite.com"
MEMBERS = ("ws-a", "ws-b")
QUEUED_AS = re.compile(r"queued as (\S+)")


def pool_config(url: str, tmp_path: Path, weights: tuple[float, float], **overrides: Any) -> dict[str, Any]:
    """Two sandbox workspaces (`ws-a.test`, `ws-b.test`) and pool `invite` for invite.com, round robin."""
    workspaces = [sandbox_workspace(ws, [f"{ws}.test"], tmp_path / f"outbox-{ws}") for ws in MEMBERS]
    pool = {
        "id": "invite",
        "name": "Invite",
        "domain_patterns": ["invite.com"],
        "strategy": "round_robin",
        "workspaces": [{"workspace_id": ws, "weight": w} for ws, w in zip(MEMBERS, weights, strict=True)],
    }
    return config(url, workspaces, load_balancing_pools=[pool], http={"port": 0}, log_format="json", **overrides)


def with_weights(data: dict[str, Any], *weights: float) -> dict[str, Any]:
    changed = copy.deepcopy(data)
    for member, weight in zip(changed["load_balancing_pools"][0]["workspaces"], weights, strict=True):
        member["weight"] = weight
    return changed


def events(relay: RelayProcess, name: str) -> list[dict[str, Any]]:
    found = []
    for line in relay.log().splitlines():
        if line.startswith("{") and f'"{name}"' in line:
            try:
                event = json.loads(line)
            except ValueError:  # a line still being written (or one the webhook worker's output cut into)
                continue
            if event["event"] == name:
                found.append(event)
    return found


def reload(relay: RelayProcess, data: dict[str, Any], answer: str) -> dict[str, Any]:
    """Write `data` as the config file, send SIGHUP, and wait for the next `answer` event in the log."""
    before = len(events(relay, answer))
    relay.config_path.write_text(json.dumps(data))
    assert relay.process is not None
    relay.process.send_signal(signal.SIGHUP)
    found = wait_for(lambda: events(relay, answer)[before:], timeout=10, what=f"{answer} in the log")
    return found[0]


def submit(port: int, count: int, sender: str = SENDER) -> list[str]:
    """Submit `count` messages over one SMTP session; the queue ids from the 250 replies."""
    ids = []
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.test")
        for number in range(count):
            code, reply = client.mail(sender)
            assert code == 250, f"MAIL FROM:<{sender}> got {code} {reply!r}"
            code, reply = client.rcpt("someone@dest.test")
            assert code == 250, f"RCPT got {code} {reply!r}"
            body = f"From: {sender}\r\nTo: someone@dest.test\r\nSubject: reload {number}\r\n\r\nhello\r\n"
            code, reply = client.data(body.encode())
            match = QUEUED_AS.search(reply.decode())
            assert code == 250 and match, f"DATA got {code} {reply!r}"
            ids.append(match.group(1))
    return ids


def try_submit(port: int, sender: str) -> str | None:
    """One message from `sender`: its queue id, or None when MAIL FROM is refused with 550 (no route)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.test")
        code, reply = client.mail(sender)
        if code == 550:
            return None
        assert code == 250, f"MAIL FROM:<{sender}> got {code} {reply!r}"
        assert client.rcpt("someone@dest.test")[0] == 250
        code, reply = client.data(f"From: {sender}\r\nSubject: try\r\n\r\nhello\r\n".encode())
        match = QUEUED_AS.search(reply.decode())
        assert code == 250 and match, f"DATA got {code} {reply!r}"
        return match.group(1)


def delivered(tmp_path: Path, ids: list[str], timeout: float = 15) -> dict[str, str]:
    """Queue id -> the workspace whose outbox holds it, once every one of `ids` has been written."""

    def where() -> dict[str, str] | None:
        found = {}
        for message_id in ids:
            owners = [ws for ws in MEMBERS if (tmp_path / f"outbox-{ws}" / f"{message_id}.eml").exists()]
            if not owners:
                return None
            assert len(owners) == 1, f"{message_id} was delivered by {owners}"
            found[message_id] = owners[0]
        return found

    return wait_for(where, timeout=timeout, interval=0.05, what=f"{len(ids)} messages in the outboxes")


def used(placement: dict[str, str]) -> Counter[str]:
    return Counter(placement.values())


def run(url: str, *statements: str, **params: Any) -> None:
    """SQL statements in one transaction, as an operator (or another program) would run them."""

    async def main() -> None:
        db = Database(url, pool_size=1)
        try:
            async with db.begin() as connection:
                for statement in statements:
                    await connection.execute(sa.text(statement), params)
        finally:
            await db.dispose()

    asyncio.run(main())


def attempts_and_selections(url: str, message_id: str) -> tuple[list[Any], dict[str, tuple[int, int]]]:
    async def main() -> tuple[list[Any], dict[str, tuple[int, int]]]:
        db = Database(url, pool_size=1)
        try:
            clock = SystemClock()
            since = clock.now() - timedelta(hours=1)
            return await Messages(db).attempts(message_id), await SelectionLog(db, clock).counts("invite", since)
        finally:
            await db.dispose()

    return asyncio.run(main())


def delivery_workspaces(relay: RelayProcess) -> list[str]:
    """The workspace of each pool delivery this process made, in log order."""
    return [e["workspace_id"] for e in events(relay, "delivery.attempt") if e["pool_id"] == "invite"]


@pytest.fixture
def relays() -> Iterator[list[RelayProcess]]:
    started: list[RelayProcess] = []
    yield started
    for relay in started:
        if relay.stop() not in (0, None):
            print(f"--- {relay.name} ---\n{relay.log()[-4000:]}")


def test_sighup_changes_weights_live(sqlite_url: str, tmp_path: Path, relays: list[RelayProcess]) -> None:
    data = pool_config(sqlite_url, tmp_path, (1, 1))
    relay = RelayProcess(data, tmp_path).start()
    relays.append(relay)
    first = delivered(tmp_path, submit(relay.smtp_port, 6))
    assert used(first) == {"ws-a": 3, "ws-b": 3}  # round robin over weights 1:1

    # Each attempt names the pool, the workspace and the decision; the decision log gets one row per pick.
    some_id, some_ws = next(iter(first.items()))
    # The sandbox writes the file before the attempt is recorded: wait for the record.
    [attempt] = wait_for(lambda: attempts_and_selections(sqlite_url, some_id)[0], timeout=5, what="the attempt")
    assert (attempt.workspace_id, attempt.pool_id, attempt.outcome) == (some_ws, "invite", "sent")
    assert attempt.selection["pool"] == "invite"
    assert attempt.selection["strategy"] == "round_robin"
    assert attempt.selection["workspace"] == some_ws
    wait_for(
        lambda: attempts_and_selections(sqlite_url, some_id)[1] == {"ws-a": (3, 3), "ws-b": (3, 3)},
        timeout=5,
        what="6 settled rows in load_balancing_selections",
    )

    reloaded = reload(relay, with_weights(data, 1, 0), "config.reloaded")
    assert reloaded["pools"] == 1
    second = delivered(tmp_path, submit(relay.smtp_port, 8))
    assert used(second) == {"ws-a": 8}
    [attempt] = wait_for(
        lambda: attempts_and_selections(sqlite_url, next(iter(second)))[0], timeout=5, what="the attempt"
    )
    assert attempt.selection["excluded"] == {"ws-b": "zero_weight"}

    # And back: a member switched off with `enabled: false` instead, the other one on again.
    flipped = with_weights(data, 1, 1)
    flipped["load_balancing_pools"][0]["workspaces"][0]["enabled"] = False
    reload(relay, flipped, "config.reloaded")
    assert used(delivered(tmp_path, submit(relay.smtp_port, 6))) == {"ws-b": 6}
    assert not events(relay, "config.reload_refused")
    assert not events(relay, "config.reload_invalid")


def test_sighup_with_an_invalid_or_restart_only_file_changes_nothing(
    sqlite_url: str, tmp_path: Path, relays: list[RelayProcess]
) -> None:
    data = pool_config(sqlite_url, tmp_path, (1, 0))  # only ws-a takes mail
    relay = RelayProcess(data, tmp_path).start()
    relays.append(relay)
    assert used(delivered(tmp_path, submit(relay.smtp_port, 4))) == {"ws-a": 4}

    # Invalid: a negative weight. The problem is logged with its JSON path; nothing else in the file applies.
    invalid = with_weights(data, -1, 1)
    event = reload(relay, invalid, "config.reload_invalid")
    assert event["level"] == "error"
    assert any(p.startswith("load_balancing_pools[0].workspaces[0].weight: ") for p in event["problems"]), event
    assert relay.process is not None and relay.process.poll() is None
    assert used(delivered(tmp_path, submit(relay.smtp_port, 4))) == {"ws-a": 4}

    # Valid, but smtp.port needs a restart: refused as a whole, so the weight change in it does not apply either.
    moved = with_weights(data, 0, 1)
    moved["smtp"]["port"] = relay.smtp_port + 1
    event = reload(relay, moved, "config.reload_refused")
    assert event["restart_required"] == ["smtp"]
    assert relay.process.poll() is None
    assert used(delivered(tmp_path, submit(relay.smtp_port, 4))) == {"ws-a": 4}
    assert not events(relay, "config.reloaded")

    # The same weights without the port change apply: the process still reloads after both refusals.
    reload(relay, with_weights(data, 0, 1), "config.reloaded")
    assert used(delivered(tmp_path, submit(relay.smtp_port, 4))) == {"ws-b": 4}


def test_a_member_disabled_in_the_database_stops_taking_mail(
    sqlite_url: str, tmp_path: Path, relays: list[RelayProcess]
) -> None:
    relay = RelayProcess(pool_config(sqlite_url, tmp_path, (1, 1)), tmp_path).start()
    relays.append(relay)
    assert used(delivered(tmp_path, submit(relay.smtp_port, 4))) == {"ws-a": 2, "ws-b": 2}

    changed_at = time.monotonic()
    run(sqlite_url, "UPDATE pool_workspaces SET enabled = false WHERE pool_id = 'invite' AND workspace_id = 'ws-b'")
    wait_for(lambda: events(relay, "pools.changed"), timeout=5, what="pools.changed in the log")
    assert time.monotonic() - changed_at < 3  # re-read every second
    assert used(delivered(tmp_path, submit(relay.smtp_port, 8))) == {"ws-a": 8}

    run(sqlite_url, "UPDATE pool_workspaces SET enabled = true, weight = 0 WHERE workspace_id = 'ws-b'")
    wait_for(lambda: len(events(relay, "pools.changed")) == 2, timeout=5, what="a second pools.changed")
    assert used(delivered(tmp_path, submit(relay.smtp_port, 4))) == {"ws-a": 4}


def test_two_processes_on_postgresql_both_follow_the_database(tmp_path: Path, relays: list[RelayProcess]) -> None:
    with fresh_database("postgresql", tmp_path) as url:
        processes = [
            RelayProcess(pool_config(url, tmp_path, (1, 1), instance_name=name), tmp_path, name=name)
            for name in ("relay-a", "relay-b")
        ]
        try:
            for relay in processes:
                relays.append(relay.start())
            ids = [i for relay in processes for i in submit(relay.smtp_port, 6)]
            assert set(used(delivered(tmp_path, ids))) == set(MEMBERS)

            run(url, "UPDATE pool_workspaces SET enabled = false WHERE pool_id = 'invite' AND workspace_id = 'ws-b'")
            for relay in processes:
                wait_for(lambda r=relay: events(r, "pools.changed"), timeout=5, what=f"pools.changed in {relay.name}")
            before = {relay.name: len(delivery_workspaces(relay)) for relay in processes}
            ids = [i for relay in processes for _ in range(3) for i in submit(relay.smtp_port, 4)]
            assert used(delivered(tmp_path, ids)) == {"ws-a": len(ids)}

            # Both processes delivered some of that mail (either may claim any message), all through ws-a.
            wait_for(
                lambda: sum(len(delivery_workspaces(r)) - before[r.name] for r in processes) == len(ids),
                timeout=5,
                what="a delivery.attempt line for every message",
            )
            after = {relay.name: delivery_workspaces(relay)[before[relay.name] :] for relay in processes}
            assert all(after.values()), {name: len(seen) for name, seen in after.items()}
            assert {ws for seen in after.values() for ws in seen} == {"ws-a"}
        finally:
            for relay in processes:  # before the database is dropped
                assert relay.stop() in (0, None), relay.log()[-3000:]


def test_a_pool_added_in_the_database_starts_taking_mail(
    sqlite_url: str, tmp_path: Path, relays: list[RelayProcess]
) -> None:
    relay = RelayProcess(pool_config(sqlite_url, tmp_path, (1, 1)), tmp_path).start()
    relays.append(relay)
    assert try_submit(relay.smtp_port, "news@news.test") is None  # 550: no route serves news.test yet

    run(
        sqlite_url,
        "INSERT INTO load_balancing_pools (id, name, domain_patterns, strategy, enabled, created_at, updated_at) "
        "VALUES ('news', 'News', :patterns, 'round_robin', true, :now, :now)",
        "INSERT INTO pool_workspaces (pool_id, workspace_id, weight, enabled) VALUES ('news', 'ws-b', 2, true)",
        patterns=json.dumps(["news.test", "*.news.test"]),
        now="2025-01-01 00:00:00.000000",
    )
    inserted = time.monotonic()

    first = wait_for(
        lambda: try_submit(relay.smtp_port, "news@news.test"), timeout=5, interval=0.1, what="news.test accepted"
    )
    assert time.monotonic() - inserted < 3
    ids = [first, *submit(relay.smtp_port, 3, "letters@mail.news.test")]
    assert used(delivered(tmp_path, ids)) == {"ws-b": 4}
    [attempt] = wait_for(lambda: attempts_and_selections(sqlite_url, first)[0], timeout=5, what="the attempt")
    assert (attempt.workspace_id, attempt.pool_id) == ("ws-b", "news")
    # The file's pool is untouched by the table-only pool.
    assert set(used(delivered(tmp_path, submit(relay.smtp_port, 2)))) == set(MEMBERS)

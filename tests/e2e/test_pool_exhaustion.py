"""A pool with no member able to take mail (issue 5, scope 2): the message waits — it never fails — until the
earliest member's capacity returns, and `pool_exhausted` is recorded; with `fallback_workspace` set it goes
there instead. A member whose credentials are refused is marked broken and later decisions skip it.

Time is a ManualClock: the daily limits' reset is reached by moving it, not by waiting.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import structlog

from relay.clock import ManualClock
from tests.support.pools import attempts_of, pool, sent_through, submit_many, views, wait_for_statuses
from tests.support.relay import config, sandbox_workspace, smtp_workspace, start_relay
from tests.support.sink import SmtpSink

SENDER = "brian@invite.com"
POOL_ID = "invite-domain-pool"
MEMBERS = ("sandbox-a", "sandbox-b")
DAILY = 2  # each member's workspace_daily
# Rolling 24 h windows count in 5-minute buckets: capacity used now returns when its bucket leaves the window.
RESET = 86_400 + 300
SEED = 5
SPLIT_SEED = 3  # capacity_weighted's first four draws between two equal members: a, b, a, b


def limited_member(tmp_path: Path, workspace_id: str) -> dict[str, Any]:
    outbox = tmp_path / f"outbox-{workspace_id}"
    outbox.mkdir()
    data = sandbox_workspace(workspace_id, [], outbox)
    data["rate_limits"] = {"workspace_daily": DAILY, "window": "rolling_24h"}
    return data


def delivered(tmp_path: Path, workspace_id: str) -> int:
    return len(list((tmp_path / f"outbox-{workspace_id}").glob("*.eml")))


def exhausted_pool_config(database_url: str, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    workspaces = [limited_member(tmp_path, ws) for ws in MEMBERS]
    return config(
        database_url,
        workspaces + overrides.pop("extra_workspaces", []),
        load_balancing_pools=[pool(POOL_ID, ["invite.com"], [(ws, 1.0) for ws in MEMBERS])],
        **overrides,
    )


async def test_an_exhausted_pool_defers_until_the_earliest_reset_then_sends(database_url: str, tmp_path: Path) -> None:
    clock = ManualClock()
    # Seeded so that the first four picks split two and two, none refused. Message 5 then learns that both
    # members are spent from their refused reservations, message 6 from the capacity snapshot: both must wait
    # for the reset either way.
    relay = await start_relay(
        exhausted_pool_config(database_url, tmp_path), tmp_path, clock=clock, rng=random.Random(SPLIT_SEED)
    )
    try:
        first_sends = clock.now()
        with structlog.testing.capture_logs() as logs:
            ids = list((await submit_many(relay, SENDER, 4, tag="exhausted")).values())
            await wait_for_statuses(relay, {"sent": 4})
            # Then two more, one at a time, so each decision is made alone against the spent members.
            for n in (4, 5):
                ids += (await submit_many(relay, SENDER, 1, tag="exhausted", first=n)).values()
                await wait_for_statuses(relay, {"sent": 4, "deferred": n - 3})

        assert [delivered(tmp_path, ws) for ws in MEMBERS] == [DAILY, DAILY]
        waiting = [v for v in await views(relay, ids) if v.status == "deferred"]
        assert [v.id for v in waiting] == ids[4:]
        attempts = await attempts_of(relay, ids[4:])
        for view in waiting:
            assert view.last_error is not None and view.last_error.startswith("pool_exhausted"), view.last_error
            assert view.attempts == 0 and attempts[view.id] == []  # waiting for capacity is not an attempt
        exhausted = [e for e in logs if e["event"] == "load_balancing.pool_exhausted"]
        assert len(exhausted) == 2
        assert {(e["pool_id"], e["fallback_action"], e["available_workspaces"]) for e in exhausted} == {
            (POOL_ID, "wait", 0)
        }
        status = await relay.balancer.get_pool_status(POOL_ID)
        assert status is not None
        assert status.available == 0 and status.exhausted == 2
        assert {m.workspace_id: m.excluded for m in status.members} == dict.fromkeys(MEMBERS, "no_capacity")
        # When they are due again; checked last, so that the rest of the scenario runs whatever they say.
        due_after = {v.id: (v.next_attempt_at - first_sends).total_seconds() for v in waiting if v.next_attempt_at}
        assert len(due_after) == 2

        clock.advance(RESET + 1)
        assert relay.worker is not None
        relay.worker.notify()
        await wait_for_statuses(relay, {"sent": 6})
        assert sum(delivered(tmp_path, ws) for ws in MEMBERS) == 6
        for message_id, rows in (await attempts_of(relay, ids[4:])).items():
            [attempt] = rows
            assert (attempt.outcome, attempt.pool_id) == ("sent", POOL_ID), message_id
            assert attempt.workspace_id in MEMBERS

        # They waited for the earliest reset: the first sends leave the window a day (and a bucket) later.
        for message_id, wait in due_after.items():
            assert 86_400 <= wait <= RESET, (
                f"message {ids.index(message_id) + 1} of 6 was due again after {wait:.0f} s, "
                f"but no member has capacity before {RESET} s"
            )
    finally:
        await relay.stop()


async def test_an_exhausted_pool_sends_to_the_fallback_workspace(database_url: str, tmp_path: Path) -> None:
    clock = ManualClock()
    fallback_outbox = tmp_path / "outbox-fallback"
    fallback_outbox.mkdir()
    data = exhausted_pool_config(
        database_url,
        tmp_path,
        extra_workspaces=[sandbox_workspace("fallback-ws", [], fallback_outbox)],
        fallback_workspace="fallback-ws",
    )
    relay = await start_relay(data, tmp_path, clock=clock)
    try:
        with structlog.testing.capture_logs() as logs:
            pooled = await submit_many(relay, SENDER, 6, tag="fallback")
            await wait_for_statuses(relay, {"sent": 6})

        attempts = await attempts_of(relay, list(pooled.values()))
        through = sent_through(attempts)
        assert Counter(through.values()) == {"sandbox-a": DAILY, "sandbox-b": DAILY, "fallback-ws": 2}
        assert [delivered(tmp_path, ws) for ws in MEMBERS] == [DAILY, DAILY]
        assert len(list(fallback_outbox.glob("*.eml"))) == 2
        for rows in attempts.values():
            [attempt] = rows
            assert attempt.pool_id == POOL_ID and attempt.selection is not None
            if attempt.workspace_id == "fallback-ws":
                assert attempt.selection["fallback_action"] == "fallback_workspace"
                assert attempt.selection["workspace"] is None  # no member was chosen
            else:
                assert "fallback_action" not in attempt.selection
        assert {
            (e["pool_id"], e["fallback_action"]) for e in logs if e["event"] == "load_balancing.pool_exhausted"
        } == {(POOL_ID, "fallback_workspace")}
        status = await relay.balancer.get_pool_status(POOL_ID)
        assert status is not None and status.exhausted >= 2
    finally:
        await relay.stop()


async def test_a_member_with_refused_credentials_is_skipped_and_no_message_fails(
    database_url: str, tmp_path: Path
) -> None:
    clock = ManualClock()
    with SmtpSink(users={"relay": "right-password"}) as guarded:
        broken = smtp_workspace("broken-ws", [], guarded.port, username="relay", password="wrong-password")
        healthy = [sandbox_workspace(ws, [], tmp_path / f"outbox-{ws}") for ws in MEMBERS]
        data = config(
            database_url,
            [broken, *healthy],
            load_balancing_pools=[pool(POOL_ID, ["invite.com"], [("broken-ws", 1.0), *((ws, 1.0) for ws in MEMBERS)])],
        )
        relay = await start_relay(data, tmp_path, clock=clock, rng=random.Random(SEED))
        try:
            # One message at a time until one was offered to the broken member (a third of the picks).
            first_ids: list[str] = []
            for n in range(30):
                [message_id] = (await submit_many(relay, SENDER, 1, tag="auth", first=n)).values()
                first_ids.append(message_id)
                await wait_for_statuses(relay, {"sent": len(first_ids)})
                rows = (await attempts_of(relay, [message_id]))[message_id]
                if rows[0].workspace_id == "broken-ws":
                    break
            else:
                raise AssertionError("30 picks and the broken member was never chosen")
            refused, sent = rows  # refused credentials fail over to a healthy member in the same pass
            assert (refused.workspace_id, refused.outcome, refused.provider_status) == ("broken-ws", "auth", "535")
            assert sent.outcome == "sent" and sent.workspace_id in MEMBERS
            assert sent.selection is not None and sent.selection["excluded"] == {"broken-ws": "already_tried"}
            assert guarded.received() == []
            state = (await relay.states.all())["broken-ws"]
            assert state.state == "broken"

            # Later messages skip it, and say why.
            later = list((await submit_many(relay, SENDER, 20, tag="auth", first=100)).values())
            await wait_for_statuses(relay, {"sent": len(first_ids) + len(later)})
            for message_id, rows in (await attempts_of(relay, later)).items():
                [attempt] = rows
                assert attempt.outcome == "sent" and attempt.workspace_id in MEMBERS, message_id
                assert attempt.selection is not None
                assert attempt.selection["excluded"] == {"broken-ws": "unhealthy"}
                assert set(attempt.selection["scores"]) == set(MEMBERS)
            assert guarded.received() == []
            assert await relay.queue.status_counts() == {"sent": len(first_ids) + len(later)}  # none failed
            status = await relay.balancer.get_pool_status(POOL_ID)
            assert status is not None and status.available == 2
            member = {m.workspace_id: m for m in status.members}["broken-ws"]
            assert (member.health, member.excluded) == ("auth_broken", "unhealthy")
        finally:
            await relay.stop()


async def test_a_message_waiting_on_a_pool_that_never_returns_expires_at_max_age(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Every member disabled: nothing says when capacity returns, so the message looks again every minute —
    until max_age_seconds, when it fails instead of waiting for ever."""
    clock = ManualClock()
    workspaces = [limited_member(tmp_path, ws) for ws in MEMBERS]
    members = [{"workspace_id": ws, "enabled": False} for ws in MEMBERS]
    data = config(
        sqlite_url,
        workspaces,
        load_balancing_pools=[{**pool(POOL_ID, ["invite.com"], []), "workspaces": members}],
        delivery={"retry": {"max_age_seconds": 3600}},
    )
    relay = await start_relay(data, tmp_path, clock=clock)
    try:
        [waiting] = (await submit_many(relay, SENDER, 1, tag="aging")).values()
        await wait_for_statuses(relay, {"deferred": 1})
        [view] = await views(relay, [waiting])
        assert view.last_error is not None and view.last_error.startswith("pool_exhausted")
        assert view.next_attempt_at is not None and 59 <= (view.next_attempt_at - clock.now()).total_seconds() <= 61
        clock.advance(3601)
        relay.worker.notify()  # type: ignore[union-attr]
        await wait_for_statuses(relay, {"failed": 1})
        [view] = await views(relay, [waiting])
        assert view.last_error is not None and view.last_error.startswith("gave up after 1.0 hours"), view.last_error
        assert view.attempts == 0
    finally:
        await relay.stop()


async def test_a_failing_selection_degrades_to_the_fallback_and_is_counted(sqlite_url: str, tmp_path: Path) -> None:
    """PRD risk mitigation: a bug or backend error in selection never loses or bounces the message."""
    fallback_outbox = tmp_path / "outbox-fallback"
    fallback_outbox.mkdir()
    data = exhausted_pool_config(
        sqlite_url,
        tmp_path,
        extra_workspaces=[sandbox_workspace("fallback", ["fallback.example"], fallback_outbox)],
        fallback_workspace="fallback",
    )
    relay = await start_relay(data, tmp_path)

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the balancer")

    relay.balancer.decide = broken  # type: ignore[method-assign]
    try:
        with structlog.testing.capture_logs() as logs:
            ids = list((await submit_many(relay, SENDER, 3, tag="broken-selection")).values())
            await wait_for_statuses(relay, {"sent": 3})
        assert len(list(fallback_outbox.glob("*.eml"))) == 3
        assert relay.balancer.selection_failures == 3
        attempts = await attempts_of(relay, ids)
        for message_id in ids:
            [attempt] = attempts[message_id]
            assert attempt.workspace_id == "fallback" and attempt.pool_id == POOL_ID
            assert attempt.selection is not None and attempt.selection["fallback_action"] == "fallback_workspace"
        events = Counter(e["event"] for e in logs)
        assert events["load_balancing.selection_failed"] == 3 and events["load_balancing.pool_exhausted"] == 3
    finally:
        await relay.stop()


async def test_a_workspace_state_that_cannot_be_written_never_costs_the_attempts_record(
    sqlite_url: str, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox-refusing"
    outbox.mkdir()
    refusing = sandbox_workspace("refusing", ["joinmednet.org"], outbox, fail_rate=1.0, fail_with="535 5.7.8 bad key")
    relay = await start_relay(config(sqlite_url, [refusing]), tmp_path)

    async def database_away(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("database away for a moment")

    relay.states.mark_broken = database_away  # type: ignore[method-assign]
    try:
        with structlog.testing.capture_logs() as logs:
            [message_id] = (await submit_many(relay, "app@joinmednet.org", 1, tag="state-write")).values()
            await wait_for_statuses(relay, {"deferred": 1})
        [view] = await views(relay, [message_id])
        assert view.attempts == 1  # the send happened and is on record, so it is not repeated when a lease runs out
        [attempt] = (await attempts_of(relay, [message_id]))[message_id]
        assert attempt.outcome == "auth" and attempt.provider_status == "535"
        assert any(e["event"] == "workspace.state_write_failed" for e in logs)
        assert relay.health.state("refusing") is not None  # this process still knows and keeps mail away
    finally:
        await relay.stop()

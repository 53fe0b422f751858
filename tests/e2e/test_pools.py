"""Load-balancing pools end to end (issue 5): SMTP in, a pool spreads a generic domain's mail over emulated
workspaces by weight, a directly mapped domain bypasses the pool, and a member that answers HTTP 503 to every
send is failed over within the same delivery pass.

Shares are checked against what each upstream received *and* what the attempts record, and the two must agree
message by message (by Message-ID). The Relay's rng is seeded so a run is reproducible (see SEED).
"""

from __future__ import annotations

import email
import email.policy
import json
import random
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.emulators import gmail as gmail_emulator
from tests.emulators import mailgun as mailgun_emulator
from tests.emulators import mandrill as mandrill_emulator
from tests.emulators.server import ServedApp
from tests.support.pools import (
    attempts_of,
    message_id_header,
    pool,
    sent_through,
    submit_many,
    views,
    wait_for_statuses,
)
from tests.support.relay import config, sandbox_workspace, smtp_workspace, start_relay
from tests.support.sink import SmtpSink

SENDER = "brian@invite.com"
DIRECT_SENDER = "app@joinmednet.org"
POOL_ID = "invite-domain-pool"
GMAIL_DEFAULT_SENDER = "relay@mednetmail.org"  # a Gmail user: Gmail cannot send as brian@invite.com
MAILGUN_KEY = "key-pool-e2e-5f1c0a9b7d3e4f2a"
MANDRILL_KEY = "md-pool-e2e-0123456789"
WEIGHTS = {"gmail-ws": 2.0, "mailgun-ws": 1.5, "mandrill-ws": 1.0}
TOLERANCE = 0.03  # ±3 percentage points (issue 5, acceptance)
# A fair weighted draw of 900 lands within ±3 points of 2/4.5 only about 93% of the time (1.8 standard
# deviations), so the seed is fixed. With this one, 900 plain `random()` draws split 406/300/194, and so does
# Relay (seed 20260105 would split 364/330/206, outside the tolerance, for the same fair draw).
SEED = 3


def expected_shares(weights: dict[str, float]) -> dict[str, float]:
    total = sum(weights.values())
    return {ws: w / total for ws, w in weights.items()}


def assert_shares(counts: Counter[str], weights: dict[str, float], total: int) -> None:
    assert sum(counts.values()) == total, counts
    for ws, expected in expected_shares(weights).items():
        share = counts[ws] / total
        assert abs(share - expected) <= TOLERANCE, f"{ws}: {share:.3f} of {total}, expected {expected:.3f} ± 0.03"


def header(raw: bytes, name: str) -> list[str]:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    return [str(v) for v in parsed.get_all(name, [])]


# -- (a) three emulated providers, weights 2 : 1.5 : 1 ----------------------------------------------------------


@pytest.fixture(scope="module")
def account() -> gmail_emulator.ServiceAccount:
    return gmail_emulator.ServiceAccount.generate()


@pytest.fixture
def emulators(account: gmail_emulator.ServiceAccount) -> Iterator[dict[str, Any]]:
    gmail = gmail_emulator.GmailState([account], domains=["mednetmail.org"])
    mailgun = mailgun_emulator.MailgunState(api_key=MAILGUN_KEY, domains={"joinmednet.org": "active"})
    mandrill = mandrill_emulator.MandrillState(keys={MANDRILL_KEY})
    with (
        ServedApp(gmail_emulator.create_app(gmail)) as gmail_app,
        ServedApp(mailgun_emulator.create_app(mailgun)) as mailgun_app,
        ServedApp(mandrill_emulator.create_app(mandrill)) as mandrill_app,
    ):
        yield {
            "gmail": gmail,
            "mailgun": mailgun,
            "mandrill": mandrill,
            "gmail_url": gmail_app.url,
            "mailgun_url": mailgun_app.url,
            "mandrill_url": mandrill_app.url,
        }


def provider_workspaces(
    tmp_path: Path, account: gmail_emulator.ServiceAccount, emulators: dict[str, Any]
) -> list[dict[str, Any]]:
    key_file = tmp_path / "service-account.json"
    key_file.write_text(json.dumps(account.key_file(f"{emulators['gmail_url']}/token")))
    return [
        {
            "id": "gmail-ws",
            "domains": ["mednetmail.org"],
            "gmail": {
                "service_account_file": str(key_file),
                "base_url": emulators["gmail_url"],
                "default_sender": GMAIL_DEFAULT_SENDER,
            },
            "load_balancing": {"sender_rewrite": "default_sender"},
            "rate_limits": {"per_user_daily": 1_000_000},
        },
        {
            "id": "mailgun-ws",
            "domains": ["joinmednet.org"],  # the directly mapped domain; also Mailgun's sending domain
            "mailgun": {"api_key": MAILGUN_KEY, "base_url": emulators["mailgun_url"]},
            "rate_limits": {"per_user_daily": 1_000_000},
        },
        {
            "id": "mandrill-ws",
            "mandrill": {"api_key": MANDRILL_KEY, "base_url": f"{emulators['mandrill_url']}/api/1.0"},
            "rate_limits": {"per_user_daily": 1_000_000},
        },
    ]


async def test_900_messages_spread_by_weight_over_gmail_mailgun_and_mandrill(
    sqlite_url: str, tmp_path: Path, account: gmail_emulator.ServiceAccount, emulators: dict[str, Any]
) -> None:
    total, direct_total = 900, 20
    data = config(
        sqlite_url,
        provider_workspaces(tmp_path, account, emulators),
        load_balancing_pools=[pool(POOL_ID, ["invite.com"], list(WEIGHTS.items()))],
    )
    relay = await start_relay(data, tmp_path, rng=random.Random(SEED))
    gmail: gmail_emulator.GmailState = emulators["gmail"]
    mailgun: mailgun_emulator.MailgunState = emulators["mailgun"]
    mandrill: mandrill_emulator.MandrillState = emulators["mandrill"]
    try:
        since = relay.clock.now() - timedelta(minutes=1)
        pooled = await submit_many(relay, SENDER, total, tag="pool", sessions=4)
        direct = await submit_many(relay, DIRECT_SENDER, direct_total, tag="direct", sessions=1)
        await wait_for_statuses(relay, {"sent": total + direct_total}, timeout=60)

        # What each upstream received, by Message-ID.
        received = {
            "gmail-ws": [m.raw for m in gmail.messages],
            "mailgun-ws": [d.mime for d in mailgun.deliveries],
            "mandrill-ws": [d.raw for d in mandrill.deliveries],
        }
        upstream = {ws: {header(raw, "Message-ID")[0] for raw in raws} for ws, raws in received.items()}
        assert sum(len(raws) for raws in received.values()) == total + direct_total  # nothing sent twice
        direct_ids = {message_id_header(DIRECT_SENDER, "direct", n) for n in direct}
        assert upstream["mailgun-ws"] >= direct_ids  # the directly mapped domain: only its own workspace
        assert not direct_ids & (upstream["gmail-ws"] | upstream["mandrill-ws"])

        # What the attempts record, which must agree with the upstreams message by message.
        attempts = await attempts_of(relay, list(pooled.values()))
        through = sent_through(attempts)
        recorded: dict[str, set[str]] = {ws: set() for ws in WEIGHTS}
        for n, queue_id in pooled.items():
            recorded[through[queue_id]].add(message_id_header(SENDER, "pool", n))
        for ws in WEIGHTS:
            assert recorded[ws] == upstream[ws] - direct_ids, ws
        counts = Counter(through.values())
        assert_shares(counts, WEIGHTS, total)

        for queue_id, rows in attempts.items():
            [attempt] = rows  # no failures here: one attempt each
            selection = attempt.selection
            assert attempt.pool_id == POOL_ID
            assert selection is not None
            assert (selection["pool"], selection["strategy"], selection["workspace"]) == (
                POOL_ID,
                "capacity_weighted",
                attempt.workspace_id,
            ), queue_id
            assert set(selection["scores"]) == set(WEIGHTS)
            assert all(score > 0 for score in selection["scores"].values())
            assert selection["score"] == selection["scores"][attempt.workspace_id]
            assert 0 < selection["capacity"] <= 1
            assert "failover" not in selection and "excluded" not in selection
            assert attempt.sent_as == (GMAIL_DEFAULT_SENDER if attempt.workspace_id == "gmail-ws" else None)

        # Gmail: From is the workspace's default sender, Reply-To the original From; the user Gmail sent as.
        assert len(gmail.messages) == counts["gmail-ws"]
        for stored in gmail.messages:
            assert header(stored.raw, "From") == [f"Brian <{GMAIL_DEFAULT_SENDER}>"]
            assert header(stored.raw, "Reply-To") == [f"Brian <{SENDER}>"]
            assert stored.user == GMAIL_DEFAULT_SENDER
            assert not stored.from_rewritten  # Relay presented the sender; Gmail had nothing to rewrite
        # Mailgun and Mandrill keep brian@invite.com (sender_rewrite defaults to keep).
        for raw in received["mailgun-ws"] + received["mandrill-ws"]:
            [from_] = header(raw, "From")
            assert from_ in (f"Brian <{SENDER}>", f"Brian <{DIRECT_SENDER}>")
            assert header(raw, "Reply-To") == []
        assert {d.from_email for d in mandrill.deliveries} == {SENDER}

        # Directly mapped mail: no pool, no selection, only the Mailgun workspace.
        for rows in (await attempts_of(relay, list(direct.values()))).values():
            assert [(a.workspace_id, a.outcome, a.pool_id, a.selection, a.sent_as) for a in rows] == [
                ("mailgun-ws", "sent", None, None, None)
            ]

        # The decision log: one row per pooled message, each a success, agreeing with the attempts.
        await relay.selections.flush()
        logged = await relay.selections.recent(POOL_ID, limit=2 * total)
        assert len(logged) == total
        assert all(r.success is True and r.sender_email == SENDER for r in logged)
        assert Counter(r.workspace_id for r in logged) == counts
        assert await relay.selections.counts(POOL_ID, since) == {ws: (n, n) for ws, n in counts.items()}
        status = await relay.balancer.get_pool_status(POOL_ID)
        assert status is not None
        assert (status.available, status.exhausted) == (3, 0)
        assert status.successes == dict(counts)
    finally:
        await relay.stop()


# -- (b) the other weighted strategies, on sandbox workspaces ---------------------------------------------------


def sandbox_members(tmp_path: Path, weights: dict[str, float]) -> list[dict[str, Any]]:
    workspaces = []
    for ws in weights:
        outbox = tmp_path / f"outbox-{ws}"
        outbox.mkdir()
        workspaces.append(sandbox_workspace(ws, [], outbox))
    return workspaces


def outbox_ids(tmp_path: Path, ws: str) -> set[str]:
    return {path.stem for path in (tmp_path / f"outbox-{ws}").glob("*.eml")}


@pytest.mark.parametrize("strategy", ["random_weighted", "round_robin"])
async def test_random_weighted_and_round_robin_follow_the_weights(
    sqlite_url: str, tmp_path: Path, strategy: str
) -> None:
    total = 450  # 50 round-robin cycles; half of (a)'s volume keeps this cheap
    weights = {"sandbox-a": 2.0, "sandbox-b": 1.5, "sandbox-c": 1.0}
    data = config(
        sqlite_url,
        sandbox_members(tmp_path, weights),
        load_balancing_pools=[pool(POOL_ID, ["invite.com"], list(weights.items()), strategy=strategy)],
    )
    relay = await start_relay(data, tmp_path, rng=random.Random(SEED))
    try:
        pooled = await submit_many(relay, SENDER, total, tag=strategy, sessions=4)
        await wait_for_statuses(relay, {"sent": total}, timeout=60)

        attempts = await attempts_of(relay, list(pooled.values()))
        through = sent_through(attempts)
        for ws in weights:  # the outboxes and the attempts agree message by message
            assert outbox_ids(tmp_path, ws) == {i for i, w in through.items() if w == ws}, ws
        counts = Counter(through.values())
        if strategy == "round_robin":
            # Smooth weighted round robin: 2 : 1.5 : 1 is a cycle of 9 picks (4, 3, 2); 450 picks are 50 cycles
            # whatever the random starting offset.
            assert counts == {"sandbox-a": 200, "sandbox-b": 150, "sandbox-c": 100}
        else:
            assert_shares(counts, weights, total)
        for rows in attempts.values():
            [attempt] = rows
            assert attempt.pool_id == POOL_ID
            assert attempt.selection is not None
            assert (attempt.selection["strategy"], attempt.selection["workspace"]) == (strategy, attempt.workspace_id)
            assert set(attempt.selection["scores"]) == set(weights)
            if strategy == "random_weighted":
                assert attempt.selection["scores"] == weights  # the score is the configured weight
    finally:
        await relay.stop()


# -- (c) failover: a member answering HTTP 503 to every send ---------------------------------------------------


@pytest.fixture
def failing_mailgun() -> Iterator[tuple[mailgun_emulator.MailgunState, str]]:
    state = mailgun_emulator.MailgunState(api_key=MAILGUN_KEY, domains={"mg.invite.com": "active"})
    state.inject(503, "<html>Service unavailable</html>", times=100_000)  # every send, for the whole test
    with ServedApp(mailgun_emulator.create_app(state)) as served:
        yield state, served.url


async def test_a_member_answering_503_is_failed_over_in_the_same_pass(
    database_url: str, tmp_path: Path, failing_mailgun: tuple[mailgun_emulator.MailgunState, str]
) -> None:
    total, max_attempts = 60, 2
    mailgun, url = failing_mailgun
    with SmtpSink() as sink_a, SmtpSink() as sink_b:
        sinks = {"sink-a": sink_a, "sink-b": sink_b}
        workspaces = [
            {"id": "mailgun-503", "mailgun": {"api_key": MAILGUN_KEY, "base_url": url, "domain": "mg.invite.com"}},
            smtp_workspace("sink-a", [], sink_a.port),
            smtp_workspace("sink-b", [], sink_b.port),
        ]
        members = [("mailgun-503", 1.0), ("sink-a", 1.0), ("sink-b", 1.0)]
        data = config(
            database_url,
            workspaces,
            load_balancing_pools=[pool(POOL_ID, ["invite.com"], members)],
            delivery={"retry": {"max_attempts": max_attempts}},
        )
        relay = await start_relay(data, tmp_path, rng=random.Random(SEED))
        try:
            pooled = await submit_many(relay, SENDER, total, tag="failover", sessions=2)
            await wait_for_statuses(relay, {"sent": total}, timeout=60)  # none failed, none waiting

            attempts = await attempts_of(relay, list(pooled.values()))
            through = sent_through(attempts)
            assert set(through.values()) <= {"sink-a", "sink-b"}  # nothing was delivered by the failing member
            assert mailgun.deliveries == []
            for ws, sink in sinks.items():
                got = {m.message_id for m in sink.received()}
                assert got == {message_id_header(SENDER, "failover", n) for n, i in pooled.items() if through[i] == ws}

            failed_over = 0
            for message_id, rows in attempts.items():
                assert len(rows) <= max_attempts, message_id
                assert [a.attempt_number for a in rows] == list(range(1, len(rows) + 1)), message_id
                assert all(a.pool_id == POOL_ID and a.selection is not None for a in rows)
                if rows[0].workspace_id != "mailgun-503":
                    [only] = rows
                    assert only.outcome == "sent" and only.selection is not None
                    assert "failover" not in only.selection
                    continue
                first, second = rows  # the failing member first, then another one in the same pass
                assert (first.workspace_id, first.outcome, first.provider_status) == ("mailgun-503", "retry", "503")
                assert second.outcome == "sent" and second.workspace_id in sinks
                assert second.started_at >= first.finished_at
                assert second.selection is not None
                assert second.selection["failover"] == 1
                assert second.selection["excluded"] == {"mailgun-503": "already_tried"}
                assert set(second.selection["scores"]) == set(sinks)  # only the untried members were scored
                failed_over += 1
            assert failed_over >= 1
            # Every send it got was a failed-over first try (the active health check's GET of the domain is not one).
            sends = [r for r in mailgun.requests if r.method == "POST"]
            assert len(sends) == failed_over
            assert {r.status for r in sends} == {503}
            for view in await views(relay, list(pooled.values())):
                assert view.status == "sent"
                assert view.attempts == len(attempts[view.id]) <= max_attempts
        finally:
            await relay.stop()


async def test_one_pass_never_makes_more_attempts_than_max_attempts(sqlite_url: str, tmp_path: Path) -> None:
    """Every member answers a temporary failure and `retry.max_attempts` is 2: failover may not carry one pass
    past the message's attempt limit (the failed-over retries count towards it, `transition_for`)."""
    members = {"sandbox-a": 1.0, "sandbox-b": 1.0, "sandbox-c": 1.0}
    workspaces = sandbox_members(tmp_path, members)
    for workspace in workspaces:
        workspace["sandbox"].update(fail_rate=1.0, fail_with="451 4.3.0 try later")
    data = config(
        sqlite_url,
        workspaces,
        load_balancing_pools=[pool(POOL_ID, ["invite.com"], list(members.items()))],
        delivery={"retry": {"max_attempts": 2}},
    )
    relay = await start_relay(data, tmp_path, rng=random.Random(SEED))
    try:
        [message_id] = (await submit_many(relay, SENDER, 1, tag="limit")).values()
        await wait_for_statuses(relay, {"failed": 1}, timeout=30)
        rows = (await attempts_of(relay, [message_id]))[message_id]
        [view] = await views(relay, [message_id])
        assert [a.outcome for a in rows] == ["retry"] * len(rows)
        assert len(rows) <= 2, (
            f"one delivery pass made {len(rows)} attempts with retry.max_attempts 2: "
            f"{[(a.attempt_number, a.workspace_id, a.outcome) for a in rows]}; last_error {view.last_error!r}"
        )
    finally:
        await relay.stop()

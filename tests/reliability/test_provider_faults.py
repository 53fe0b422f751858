"""Provider fault matrix (issue 10, scope 3): one member of a three-member pool fails while mail flows steadily.

A pool spreads brian@invite.com's mail over Gmail, Mailgun and Mandrill emulators (real ports, real HTTP). Mail
is submitted over SMTP at a steady rate; once the Mailgun member has taken some, one fault is injected into it
(`faults_upstream.py`: the emulators themselves are never loosened), held, and cleared:

- down: its port refuses connections (the server stopped);
- 429 storm: every call answers Mailgun's 429 with `Retry-After` (Mailgun: "retry as defined in the response");
- 5-second responses (1.5 s in the bounded run) beyond Relay's send timeout (set to 2/5 of the delay) and, in
  the full run, within it (the test config's 10 s; 120 s by default); in the full run also a provider that takes
  each message before answering late, beyond the timeout: the one fault where a failover delivers a second copy,
  so those copies are counted (exactly the timed-out sends), not forbidden;
- flapping: failing (503) and healthy in turn, every 10 s (every second in the bounded run);
- wrong credentials: the key Mailgun accepts is rotated, so the emulator answers 401 to sends and checks.

For each: Relay accepts every message (the SMTP path never sees a provider), every accepted message is delivered
exactly once (counted by Message-ID at the three upstreams, and agreeing with the attempts), the faulty member is
left out while faulty and takes mail again once the fault is gone, and mail through the other members keeps its
pace. Failover time (fault injected → first message sent elsewhere because of it) and recovery time (fault cleared
→ first message it delivers) are recorded in the reliability report. Breaker and check periods are config knobs,
scaled down in the bounded run (`Timings`; `RELAY_RELIABILITY=full` for the full one).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import random
import statistics
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from relay.runtime import Relay
from tests.emulators import gmail as gmail_emulator
from tests.emulators import mailgun as mailgun_emulator
from tests.emulators import mandrill as mandrill_emulator
from tests.reliability import report
from tests.reliability.faults_flow import (
    HealthTimeline,
    SteadyFlow,
    first_delivery,
    routed_away,
    tries_on,
    utc_now,
)
from tests.reliability.faults_report import Measured, figures, render
from tests.reliability.faults_upstream import Fault, FaultyUpstream, mailgun_rate_limited, mailgun_unavailable
from tests.support.health import with_health
from tests.support.net import async_wait_for
from tests.support.pools import attempts_of, message_id_header, pool, sent_through, wait_for_statuses
from tests.support.relay import config, start_relay

pytestmark = [pytest.mark.slow, pytest.mark.reliability]

SENDER = "brian@invite.com"
POOL_ID = "invite-domain-pool"
FAULTY = "mailgun-ws"
MEMBERS = ("gmail-ws", FAULTY, "mandrill-ws")
GMAIL_SENDER = "relay@mednetmail.org"  # Gmail cannot send as brian@invite.com: the pool rewrites to this user
MAILGUN_KEY = "key-faults-3b9e0c7d1a24f6e8"
MAILGUN_DOMAIN = "mg.invite.com"
MANDRILL_KEY = "md-faults-0123456789"
SEED = 10
SECTION = "Provider faults"
OUT = ("open", "half_open", "throttled", "auth_broken")  # out of rotation
IN = ("healthy", "degraded")


@dataclass(frozen=True)
class Timings:
    rate: float  # messages submitted per second
    fault_seconds: float  # how long a fault lasts after the member left the rotation (or at all, if it never does)
    slow_delay: float  # the slow member's answer time
    check_interval: float
    base_open: float
    max_open: float
    consecutive: int
    retry_after: int
    auth_recheck: float
    flap_period: float
    flap_cycles: int
    recovery_deadline: float


# fmt: off
BOUNDED = Timings(rate=16, fault_seconds=0.6, slow_delay=1.5, check_interval=1.0, base_open=1.0, max_open=2.0,
                  consecutive=3, retry_after=1, auth_recheck=2.0, flap_period=1.0, flap_cycles=2, recovery_deadline=15)
FULL = Timings(rate=20, fault_seconds=20.0, slow_delay=5.0, check_interval=10.0, base_open=10.0, max_open=60.0,
               consecutive=5, retry_after=5, auth_recheck=60.0, flap_period=10.0, flap_cycles=4, recovery_deadline=120)
# fmt: on
T = FULL if report.full() else BOUNDED
SETUP = (
    f"A pool of three members (Gmail, Mailgun and Mandrill emulators on real ports, weights equal) takes {T.rate:g} "
    "messages/s over SMTP throughout. A fault is injected into the Mailgun member, held until Relay takes the member "
    f"out of rotation and then {T.fault_seconds:g} s more ({T.fault_seconds:g} s in all when it takes none out; "
    f"flapping: {T.flap_cycles} cycles of {T.flap_period:g} s failing, {T.flap_period:g} s healthy), then cleared. "
    f"Breaker: {T.consecutive} consecutive failures, open {T.base_open:g} s doubling up to {T.max_open:g} s; active "
    f"checks every {T.check_interval:g} s; auth recheck {T.auth_recheck:g} s."
)


@dataclass
class Env:
    gmail: gmail_emulator.GmailState
    mailgun: mailgun_emulator.MailgunState
    mandrill: mandrill_emulator.MandrillState
    upstreams: dict[str, FaultyUpstream]
    key_file: Path

    @property
    def faulty(self) -> FaultyUpstream:
        return self.upstreams[FAULTY]

    def received(self) -> dict[str, list[bytes]]:
        with self.gmail.lock, self.mandrill.lock:
            return {
                "gmail-ws": [m.raw for m in self.gmail.messages],
                FAULTY: [d.mime for d in self.mailgun.deliveries],
                "mandrill-ws": [d.raw for d in self.mandrill.deliveries],
            }


@dataclass(frozen=True)
class Case:
    id: str
    title: str
    inject: Callable[[Env], None]
    clear: Callable[[Env], None]
    out_of_rotation: bool = True  # whether Relay should take the member out while faulty
    send_timeout: float = 10.0  # the test config's; Relay's default is 120 s
    note: str = ""
    late: bool = False  # the provider takes each message before its late answer: a timeout leaves a copy there
    full_only: bool = False  # left out of the bounded run (`make test`)


_rows: list[Measured] = []


@pytest.fixture(scope="module", autouse=True)
def matrix_report() -> Iterator[None]:
    yield
    if _rows:
        title = f"Fault matrix ({'full' if report.full() else 'bounded'} run)"
        report.record(SECTION, title, render(_rows, SETUP), cases={m.case_id: figures(m) for m in _rows})


@pytest.fixture(scope="module")
def account() -> gmail_emulator.ServiceAccount:
    return gmail_emulator.ServiceAccount.generate()


@pytest.fixture
def env(tmp_path: Path, account: gmail_emulator.ServiceAccount) -> Iterator[Env]:
    gmail = gmail_emulator.GmailState([account], domains=["mednetmail.org"])
    mailgun = mailgun_emulator.MailgunState(api_key=MAILGUN_KEY, domains={MAILGUN_DOMAIN: "active"})
    mandrill = mandrill_emulator.MandrillState(keys={MANDRILL_KEY})
    apps = {
        "gmail-ws": gmail_emulator.create_app(gmail),
        FAULTY: mailgun_emulator.create_app(mailgun),
        "mandrill-ws": mandrill_emulator.create_app(mandrill),
    }
    upstreams: dict[str, FaultyUpstream] = {}
    try:
        for workspace_id, app in apps.items():
            upstreams[workspace_id] = FaultyUpstream(app).__enter__()
        key_file = tmp_path / "service-account.json"
        key_file.write_text(json.dumps(account.key_file(f"{upstreams['gmail-ws'].url}/token")))
        yield Env(gmail, mailgun, mandrill, upstreams, key_file)
    finally:
        FaultyUpstream.close_all(list(upstreams.values()))


def relay_config(database_url: str, env: Env, send_timeout: float) -> dict[str, Any]:
    health = {
        "check_interval_seconds": T.check_interval,
        "check_timeout_seconds": send_timeout,
        "consecutive_failures": T.consecutive,
        "base_open_seconds": T.base_open,
        "max_open_seconds": T.max_open,
    }
    limits = {"rate_limits": {"per_user_daily": 1_000_000}}
    gmail = {
        "service_account_file": str(env.key_file),
        "base_url": env.upstreams["gmail-ws"].url,
        "default_sender": GMAIL_SENDER,
    }
    workspaces = [
        {
            "id": "gmail-ws",
            "domains": ["mednetmail.org"],
            "gmail": gmail,
            "load_balancing": {"sender_rewrite": "default_sender"},
            **limits,
        },
        {
            "id": FAULTY,
            "mailgun": {"api_key": MAILGUN_KEY, "base_url": env.faulty.url, "domain": MAILGUN_DOMAIN},
            **limits,
        },
        {
            "id": "mandrill-ws",
            "mandrill": {"api_key": MANDRILL_KEY, "base_url": f"{env.upstreams['mandrill-ws'].url}/api/1.0"},
            **limits,
        },
    ]
    return config(
        database_url,
        [with_health(ws, **health) for ws in workspaces],
        load_balancing_pools=[pool(POOL_ID, ["invite.com"], [(ws, 1.0) for ws in MEMBERS])],
        delivery={
            "send_timeout_seconds": send_timeout,
            "lease_seconds": max(30.0, 3 * send_timeout),
            "retry": {"auth_recheck_seconds": T.auth_recheck},
        },
    )


@pytest.fixture
async def running(sqlite_url: str, tmp_path: Path, env: Env, case: Case) -> AsyncIterator[Relay]:
    relay = await start_relay(relay_config(sqlite_url, env, case.send_timeout), tmp_path, rng=random.Random(SEED))
    try:
        yield relay
    finally:
        await relay.stop()


def layer(fault: Fault) -> dict[str, Callable[[Env], None]]:
    """A fault of the layer in front of the member's emulator: on, then off."""
    return {"inject": lambda e: e.faulty.set(fault), "clear": lambda e: e.faulty.set(None)}


def _rotate_key(env: Env) -> None:
    env.mailgun.api_key = "key-rotated-00000000"


def _restore_key(env: Env) -> None:
    env.mailgun.api_key = MAILGUN_KEY


CASES = [
    Case("down", "Down (connections refused)", lambda e: e.faulty.stop_listening(), lambda e: e.faulty.listen_again()),
    Case(
        "429",
        f"429 storm, Retry-After: {T.retry_after}",
        **layer(Fault.answering(mailgun_rate_limited(T.retry_after))),
    ),
    Case(
        "slow",
        f"{T.slow_delay:g} s responses, send timeout 10 s",
        **layer(Fault.slow(T.slow_delay)),
        out_of_rotation=False,
        full_only=True,
        note="slowness within the send timeout is not a failure: the member is never ejected, "
        "its messages take the delay, and a message finding all its connections busy goes to another member",
    ),
    Case(
        "slow-timeout",
        f"{T.slow_delay:g} s responses, send timeout {T.slow_delay / 2.5:g} s",
        **layer(Fault.slow(T.slow_delay)),
        send_timeout=T.slow_delay / 2.5,
        note="the provider drops a request whose client has gone, so a timed-out send leaves no copy there",
    ),
    Case(
        "late",
        f"{T.slow_delay:g} s answers after taking the message, send timeout {T.slow_delay / 2.5:g} s",
        **layer(Fault.late(T.slow_delay)),
        send_timeout=T.slow_delay / 2.5,
        late=True,
        full_only=True,
        note="the provider took each message before its late answer: every send that timed out left a copy there, "
        "and its failover delivered a second one. Relay cannot tell such a timeout from one that sent nothing; "
        "these duplicates are counted, and there are no others",
    ),
    Case("auth", "Wrong credentials (key rotated: 401)", _rotate_key, _restore_key),
]
RUN = [c for c in CASES if report.full() or not c.full_only]
FLAPPING = Case(
    "flapping",
    f"Flapping: 503 / healthy every {T.flap_period:g} s",
    lambda e: e.faulty.set(Fault.answering(mailgun_unavailable)),
    lambda e: e.faulty.set(None),
)


@pytest.mark.parametrize("case", RUN, ids=[c.id for c in RUN])
async def test_one_faulty_member(running: Relay, env: Env, case: Case) -> None:
    measured = await exercise(running, env, case, [T.fault_seconds], until_out=case.out_of_rotation)
    if case.out_of_rotation:
        assert measured.failover[0] is not None, f"nothing was routed away from {FAULTY}: {measured.states}"
    else:
        assert not set(measured.states) & set(OUT), measured.states  # slow is not a failure
        # ... nor does it hold up the others' mail: messages pass over a member whose connections are all busy
        assert measured.others_p99 < T.slow_delay, measured.others_p99
    assert measured.states[-1] in IN, measured.states
    _rows.append(measured)


@pytest.mark.parametrize("case", [FLAPPING], ids=["flapping"])
async def test_a_flapping_member(running: Relay, env: Env, case: Case) -> None:
    measured = await exercise(running, env, FLAPPING, [T.flap_period] * T.flap_cycles, until_out=False)
    # The first failing send fails over; the breaker opens in some failing period (how many sends a short one sees
    # depends on the machine's pace), and a later one may find the member still out.
    assert measured.failover[0] is not None, measured.states
    assert any(seconds is not None for seconds in measured.out_after), measured.states
    assert measured.states[-1] in IN, measured.states
    _rows.append(measured)


async def exercise(relay: Relay, env: Env, case: Case, periods: list[float], *, until_out: bool) -> Measured:
    """Steady mail; the fault held for each of `periods` in turn (`until_out`: after the member left the rotation),
    the member healthy for as long between them; then wait for the member to deliver again, drain, and check that
    every accepted message went out once."""
    flow = SteadyFlow(relay.smtp_address, SENDER, case.id, T.rate)
    timeline = HealthTimeline(relay, FAULTY).start()
    windows: list[tuple[datetime, datetime]] = []
    try:
        flow.start()
        await async_wait_for(lambda: len(env.mailgun.deliveries) >= 2, timeout=30, what=f"mail through {FAULTY}")
        for n, seconds in enumerate(periods):
            if n:
                await asyncio.sleep(seconds)  # healthy between failing periods: traffic, not a wait for a condition
            injected = utc_now()
            case.inject(env)
            if until_out:
                await wait_until_out(relay, flow, timeline, injected)
            await asyncio.sleep(seconds)  # the fault lasts this long while mail flows
            cleared = utc_now()
            case.clear(env)
            windows.append((injected, cleared))
        await wait_for_delivery(relay, flow, windows[-1][1])
    finally:
        await asyncio.to_thread(flow.stop)  # Relay answers the flow's last command on this loop
        await timeline.stop()
    assert flow.refused == {}, f"Relay refused mail while a provider was failing: {flow.refused}"
    await wait_for_statuses(relay, {"sent": len(flow.accepted)}, timeout=T.recovery_deadline)
    return await measure(relay, env, case, flow, timeline, windows)


async def wait_until_out(relay: Relay, flow: SteadyFlow, timeline: HealthTimeline, since: datetime) -> None:
    """Until the member is out of rotation and a send on it has failed over: an active check may take it out
    first, and the send path must be exercised too."""

    async def out() -> bool:
        if timeline.first(OUT, since) is None:
            return False
        return bool(tries_on(await attempts_of(relay, flow.since(since)), FAULTY, since))

    await async_wait_for(out, timeout=T.recovery_deadline, interval=0.1, what=f"{FAULTY} to leave the rotation")


async def wait_for_delivery(relay: Relay, flow: SteadyFlow, since: datetime) -> None:
    async def delivered_again() -> bool:
        attempts = await attempts_of(relay, flow.since(since))
        return first_delivery(attempts, FAULTY, since) is not None

    await async_wait_for(delivered_again, timeout=T.recovery_deadline, interval=0.1, what=f"{FAULTY} to deliver again")


async def measure(
    relay: Relay, env: Env, case: Case, flow: SteadyFlow, timeline: HealthTimeline, windows: list[Any]
) -> Measured:
    ids = {n: flow.accepted[n] for n in sorted(flow.accepted)}
    attempts = await attempts_of(relay, list(ids.values()))
    through = sent_through(attempts)  # exactly one `sent` attempt per message
    # What the upstreams hold, by Message-ID: every accepted message once, nothing else, and where the attempts say.
    received = {ws: Counter(_message_id(raw) for raw in raws) for ws, raws in env.received().items()}
    everywhere = sum(received.values(), Counter[str]())
    twice = {mid: count for mid, count in everywhere.items() if count > 1}
    expected = {message_id_header(SENDER, case.id, n): queue_id for n, queue_id in ids.items()}
    if case.late:  # a second copy exactly where a send on the faulty member timed out after the provider took it
        timed_out = {mid for mid, q in expected.items() if any(a.workspace_id == FAULTY for a in attempts[q][:-1])}
        assert set(twice) == timed_out and set(twice.values()) == {2}, (twice, timed_out)
    else:
        assert not twice, f"delivered more than once: {twice}"
    assert set(everywhere) == set(expected), f"lost: {set(expected) - set(everywhere)}"
    for mid, queue_id in expected.items():
        assert received[through[queue_id]][mid] == 1, f"{mid} is not where its attempt says ({through[queue_id]})"

    bounds = [
        (start, end, windows[i + 1][0] if i + 1 < len(windows) else None) for i, (start, end) in enumerate(windows)
    ]
    out_after = [timeline.first(OUT, start, nxt) for start, _end, nxt in bounds]
    failover = [routed_away(attempts, FAULTY, start, nxt) for start, _end, nxt in bounds]
    recovery = [first_delivery(attempts, FAULTY, end, nxt) for _start, end, nxt in bounds]
    latency = {n: (attempts[q][-1].finished_at - flow.accepted_at[n]).total_seconds() for n, q in ids.items()}
    latencies = list(latency.values())
    others = sorted(latency[n] for n, queue_id in ids.items() if through[queue_id] != FAULTY)
    return Measured(
        case_id=case.id,
        title=case.title,
        note=case.note,
        late=case.late,
        accepted=len(ids),
        windows=windows,
        failover=[_since(start, at) for (start, _e, _n), at in zip(bounds, failover, strict=True)],
        out_after=[_since(start, at) for (start, _e, _n), at in zip(bounds, out_after, strict=True)],
        recovery=[_since(end, at) for (_s, end, _n), at in zip(bounds, recovery, strict=True)],
        tries=len(tries_on(attempts, FAULTY, windows[0][0])),
        failed_over=sum(1 for rows in attempts.values() if len(rows) > 1 and rows[0].workspace_id == FAULTY),
        duplicates=len(twice),
        latency_p50=statistics.median(latencies),
        latency_max=max(latencies),
        others_p99=others[min(len(others) - 1, int(len(others) * 0.99))],
        states=timeline.states(windows[0][0]),
        layer=dict(env.faulty.layer.counts),
    )


def _message_id(raw: bytes) -> str:
    return str(email.message_from_bytes(raw, policy=email.policy.default)["Message-ID"])


def _since(start: datetime, at: datetime | None) -> float | None:
    return None if at is None else round((at - start).total_seconds(), 3)

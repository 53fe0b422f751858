"""Workspace health as delivery sees it: the breaker and the shared `workspaces` table folded into one state,
send outcomes classified for the breaker, the pools' ejection cap, and the active checker's verdicts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from relay.clock import ManualClock
from relay.config import Settings
from relay.health import Breakers, BreakerSettings, MemoryBreakerStore
from relay.pools import HealthChecker, HealthView, PoolCatalog
from relay.providers import Health, Outcome, ProviderContext, build_provider
from relay.store import Database, WorkspaceState, WorkspaceStates

FAST = BreakerSettings(consecutive_failures=2, base_open_seconds=30.0)


class World:
    def __init__(self, db: Database | None = None, settings: Settings | None = None) -> None:
        self.clock = ManualClock()
        self.store = MemoryBreakerStore()
        self.breakers = Breakers(self.store, FAST, self.clock, "me", cache_seconds=1.0)
        self.states = WorkspaceStates(db, self.clock) if db is not None else None
        self.health = HealthView(self.states, self.clock, breakers=self.breakers)
        self.health.track(["a", "b", "c"])
        if settings is not None:
            self.health.ejection_groups = PoolCatalog(settings).ejection_groups


RETRY = Outcome("retry", response="ConnectionRefusedError: [Errno 111]")


async def test_failed_sends_open_the_breaker_and_the_view_says_until_when() -> None:
    w = World()
    await w.health.observe("a", RETRY, "refused")
    assert w.health.health("a").state == "degraded"
    assert w.health.available("a")
    await w.health.observe("a", RETRY, "refused")
    health = w.health.health("a")
    assert health.state == "open" and health.last_error == "refused"
    assert health.until == w.clock.now() + timedelta(seconds=30)
    assert w.health.blocked_until("a") == health.until
    assert await w.health.admit("a") == (False, None)
    w.clock.advance(30)
    admitted, probe = await w.health.admit("a")
    assert admitted and probe is not None  # this send is the probe
    assert w.health.health("a").state == "half_open"
    # While the probe is out nobody else sends, and they look again in 2 s rather than at the probe's timeout.
    assert w.health.blocked_until("a") == w.clock.now() + timedelta(seconds=2)
    assert await w.health.admit("a") == (False, None)
    await w.health.observe("a", Outcome("sent", status="250"), "", probe)
    assert w.health.health("a").state == "healthy"


async def test_a_late_answer_of_a_send_admitted_before_the_opening_is_not_the_probes() -> None:
    w = World()
    for _ in range(2):
        await w.health.observe("a", RETRY, "refused")
    w.clock.advance(30)
    _, probe = await w.health.admit("a")
    await w.health.observe("a", RETRY, "late timeout of an old send")  # no probe token: changes nothing
    assert w.health.health("a").state == "half_open"
    await w.health.observe("a", Outcome("sent", status="250"), "")  # nor does a late success close it
    assert w.health.health("a").state == "half_open"
    await w.health.observe("a", RETRY, "the probe failed", probe)
    state = w.health.health("a")
    assert state.state == "open" and state.until == w.clock.now() + timedelta(seconds=60)  # k + 1: twice as long


async def test_a_probe_whose_answer_says_nothing_about_health_is_given_back() -> None:
    w = World()
    for _ in range(2):
        await w.health.observe("a", RETRY, "refused")
    w.clock.advance(30)
    _, probe = await w.health.admit("a")
    await w.health.observe("a", Outcome("quota", status="429"), "429", probe)
    admitted, again = await w.health.admit("a")  # the next send may probe at once
    assert admitted and again is not None and again != probe


async def test_another_process_probing_blocks_this_one_briefly() -> None:
    w = World()
    other = Breakers(w.store, FAST, w.clock, "other", cache_seconds=0.0)
    for _ in range(2):
        await other.failure("a", "refused")
    w.clock.advance(30)
    assert await other.admit("a")  # the other process takes the probe
    await w.health.refresh(force=True)
    assert w.health.health("a").state == "half_open"
    assert w.health.blocked_until("a") == w.clock.now() + timedelta(seconds=2)
    assert await w.health.admit("a") == (False, None)


@pytest.mark.parametrize(
    ("outcome", "counts"),
    [
        (Outcome("sent", status="250"), False),
        (Outcome("permanent", status="550", response="no such user"), False),
        (Outcome("quota", status="429"), False),
        (Outcome("auth", status="401"), False),
        (Outcome("retry", status="451", retry_recipients=("b@example.org",)), False),  # a recipient's trouble
        (Outcome("retry", status="503"), True),
        (Outcome("retry", response="no answer within 10 s"), True),
    ],
)
async def test_only_whole_message_temporary_failures_feed_the_breaker(outcome: Outcome, counts: bool) -> None:
    w = World()
    for _ in range(2):
        await w.health.observe("a", outcome, "x")
    assert (w.health.health("a").state == "open") is counts


def pool_settings(members: list[str], percent: float = 50.0) -> Settings:
    return Settings.model_validate(
        {
            "workspaces": [{"id": ws, "domains": [f"{ws}.example"], "sandbox": {}} for ws in members],
            "load_balancing_pools": [
                {
                    "id": "p",
                    "name": "P",
                    "domain_patterns": ["invite.com"],
                    "max_ejection_percent": percent,
                    "workspaces": [{"workspace_id": ws} for ws in members],
                }
            ],
        }
    )


async def test_the_ejection_cap_keeps_the_last_member_of_a_pool_of_two_in() -> None:
    w = World(settings=pool_settings(["a", "b"]))
    for _ in range(2):
        await w.health.observe("a", RETRY, "refused")
        await w.health.observe("b", RETRY, "refused")
    states = {ws: w.health.health(ws).state for ws in ("a", "b")}
    assert sorted(states.values()) == ["degraded", "open"]  # half of two may go, not both


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'relay.db'}")
    await database.upgrade()
    yield database
    await database.dispose()


def checker(w: World, **sandbox: Any) -> HealthChecker:
    settings = Settings.model_validate(
        {"workspaces": [{"id": "a", "domains": ["a.example"], "sandbox": {"outbox_dir": "/tmp", **sandbox}}]}
    )
    provider = build_provider(settings.workspaces[0], ProviderContext())
    assert w.states is not None
    return HealthChecker(
        {"a": provider}, lambda ws: settings.workspaces[0].health, w.health, w.states, w.breakers, w.clock
    )


async def test_a_check_refusing_credentials_makes_the_workspace_auth_broken(db: Database) -> None:
    w = World(db)
    checks = checker(w, check_fail_with="535 5.7.8 Authentication credentials invalid")
    checks.check_soon("a")
    await checks.wait_idle()
    health = w.health.health("a")
    assert health.state == "auth_broken" and health.last_error is not None and "535" in health.last_error
    assert health.until == w.clock.now() + timedelta(seconds=60)  # rechecked at the next interval
    stored = (await WorkspaceStates(db, w.clock).all())["a"]
    assert stored.state == "broken"  # shared with every process through the table


async def test_a_passing_check_readmits_an_ejected_workspace_and_clears_auth_broken(db: Database) -> None:
    w = World(db)
    for _ in range(2):
        await w.health.observe("a", RETRY, "refused")
    assert w.states is not None
    now = w.clock.now()
    await w.states.mark_broken("a", "535 earlier", now + timedelta(hours=1))
    w.health.note(WorkspaceState("a", "broken", "535 earlier", now, now + timedelta(hours=1)))
    checks = checker(w)
    checks.check_soon("a")
    await checks.wait_idle()
    # Credentials cleared at once; the ejection ends now, and the next send is the probe that closes it.
    assert (await WorkspaceStates(db, w.clock).all())["a"].state == "active"
    assert w.health.available("a")
    admitted, probe = await w.health.admit("a")
    assert admitted and probe is not None
    await w.health.observe("a", Outcome("sent", status="250"), "", probe)
    assert w.health.health("a").state == "healthy"


async def test_an_unreachable_check_counts_as_a_failure(db: Database) -> None:
    w = World(db)
    checks = checker(w, check_fail_with="421 4.3.2 service not available")
    for _ in range(2):
        checks.check_soon("a")
        await checks.wait_idle()
    assert w.health.health("a").state == "open"


async def test_checks_come_due_on_the_injectable_clock(db: Database) -> None:
    w = World(db)
    checks = checker(w, check_fail_with="535 bad key")
    checks.start_due()  # schedules the first check within the first 10 % of the interval
    await checks.wait_idle()
    w.clock.advance(6.0)  # past any jitter (60 s x 10 %)
    checks.start_due()
    await checks.wait_idle()
    assert w.health.health("a").state == "auth_broken"


async def test_a_passing_check_ends_an_ejection_another_process_started_after_our_last_read(db: Database) -> None:
    w = World(db)
    await w.health.refresh(force=True)  # our view: closed
    other = Breakers(w.store, FAST, w.clock, "other", cache_seconds=0.0)
    for _ in range(2):
        await other.failure("a", "refused")
    checks = checker(w)
    checks.check_soon("a")
    await checks.wait_idle()
    state = (await other.states(["a"], fresh=True))["a"]
    assert state.state == "open" and state.open_until == w.clock.now().timestamp()  # the probe may go now


class SlowCheck:
    """A provider whose check waits until released, to let a reload replace it mid-check."""

    kind = "sandbox"
    concurrency = 1

    def __init__(self, ok: bool) -> None:
        self.ok = ok
        self.release = asyncio.Event()
        self.checks = 0

    async def check(self) -> Health:
        self.checks += 1
        await self.release.wait()
        return Health(self.ok, "slow", auth=not self.ok)


async def test_a_check_that_raced_a_reload_is_discarded_and_the_new_provider_checked(db: Database) -> None:
    w = World(db)
    settings = Settings.model_validate({"workspaces": [{"id": "a", "domains": ["a.example"], "sandbox": {}}]})
    old, new = SlowCheck(ok=False), SlowCheck(ok=True)
    providers: dict[str, Any] = {"a": old}
    assert w.states is not None
    checks = HealthChecker(providers, lambda ws: settings.workspaces[0].health, w.health, w.states, w.breakers, w.clock)
    checks.check_soon("a")
    await asyncio.sleep(0)  # the old provider's check is under way
    providers["a"] = new  # a reload swapped in new credentials ...
    checks.check_soon("a")  # ... and asked for a check
    new.release.set()
    old.release.set()
    await checks.wait_idle()
    assert (old.checks, new.checks) == (1, 1)
    assert w.health.health("a").state == "healthy"  # the old credentials' 401 did not count

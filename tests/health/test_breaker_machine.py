"""A hypothesis state machine: two instances (`Breakers` "a" and "b") share one MemoryBreakerStore and one fake
clock and drive a pool of four workspaces with a 50 % ejection cap.

Rules: an instance reports a success or failure (maybe a late one), tries to admit (and, holding the probe,
later reports its result), reads the states, or time advances. After every step the true state is read from
the store and checked:
- never more than one outstanding probe per workspace, and a half-open breaker's probe is the one handed out;
- nothing is admitted while open before `open_until` — with a local cache, only within `cache_seconds` of the
  opening (the bound the cache promises);
- each ejection lasts exactly base * 2^k capped, so it is never shorter than the previous one while k grows and
  never longer than `max_open_seconds`;
- the ejected members of the pool never exceed the cap that `eject_allowed` enforces.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any, TypeVar

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from relay.clock import ManualClock
from relay.health import (
    Breakers,
    BreakerSettings,
    BreakerState,
    MemoryBreakerStore,
    current,
    eject_allowed,
    open_duration,
)

T = TypeVar("T")
POOL = ("ws-0", "ws-1", "ws-2", "ws-3")
INSTANCES = ("a", "b")
MAX_EJECTION_PERCENT = 50.0
SETTINGS = BreakerSettings(consecutive_failures=3, min_requests=6, max_open_seconds=100.0)  # capped from k = 2
STEPS = [0.25, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]
RUN = settings(max_examples=200, stateful_step_count=60, derandomize=True, deadline=None)


class BreakerMachine(RuleBasedStateMachine):
    cache_seconds = 0.0

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = ManualClock()
        self.store = MemoryBreakerStore()
        self.breakers = {
            name: Breakers(self.store, SETTINGS, self.clock, name, cache_seconds=self.cache_seconds)
            for name in INSTANCES
        }
        self.probes: dict[str, tuple[str, float]] = {}  # workspace -> (holder, probe_until), as handed out
        self.ejections: dict[str, tuple[float | None, int, float]] = {}  # workspace -> (opened_at, k, duration)
        self.closed_since_ejection: set[str] = set()

    def teardown(self) -> None:
        self.loop.close()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def truth(self, workspace: str) -> BreakerState:
        return self.run(self.store.get_many([workspace]))[workspace]

    def now(self) -> float:
        return self.clock.now().timestamp()

    def forget_resolved_probes(self) -> None:
        for workspace in list(self.probes):
            if self.truth(workspace).state != "half_open":
                del self.probes[workspace]

    # --- rules -------------------------------------------------------------------------------------------------

    @rule(instance=st.sampled_from(INSTANCES), workspace=st.sampled_from(POOL))
    def admit(self, instance: str, workspace: str) -> None:
        before, now = self.truth(workspace), self.now()
        admitted = self.run(self.breakers[instance].admit(workspace))
        after = self.truth(workspace)
        if not admitted:
            return
        if after != before and after.state == "half_open":  # this admit handed out the probe
            assert after.probe_owner == instance
            assert after.probe_until == now + SETTINGS.probe_timeout_seconds
            held = self.probes.get(workspace)
            assert held is None or now >= held[1], f"second probe for {workspace} while {held[0]} holds one"
            self.probes[workspace] = (instance, after.probe_until)
            event("probe handed out" if held is None else "timed-out probe handed on")
            return
        assert after == before, "an admit changed the state without handing out a probe"
        if before.state != "closed":  # only a stale cache entry can admit past an opening, and not for long
            assert before.opened_at is not None
            assert now - before.opened_at < self.cache_seconds, f"admitted while {before.state}: {before}"
            event("admitted from a stale cache entry")

    @rule(instance=st.sampled_from(INSTANCES))
    def admit_each(self, instance: str) -> None:
        """A delivery pass: the instance asks for every member of the pool."""
        for workspace in POOL:
            self.admit(instance, workspace)

    @rule(instance=st.sampled_from(INSTANCES), workspace=st.sampled_from(POOL), ok=st.booleans())
    def report(self, instance: str, workspace: str, ok: bool) -> None:
        """A result, possibly of a send admitted long ago; from the probe's holder it counts as the probe's."""
        self.send_result(instance, workspace, ok)

    @rule(instance=st.sampled_from(INSTANCES), workspace=st.sampled_from(POOL), times=st.integers(2, 4))
    def failures(self, instance: str, workspace: str, times: int) -> None:
        """A run of failures: a workspace that went down."""
        for _ in range(times):
            self.send_result(instance, workspace, ok=False)

    @precondition(lambda self: bool(self.probes))
    @rule(data=st.data(), ok=st.booleans())
    def probe_result(self, data: st.DataObject, ok: bool) -> None:
        workspace = data.draw(st.sampled_from(sorted(self.probes)))
        self.send_result(self.probes[workspace][0], workspace, ok)

    @rule(instance=st.sampled_from(INSTANCES))
    def read(self, instance: str) -> None:
        seen = self.run(self.breakers[instance].states(POOL))
        if self.cache_seconds == 0:
            assert seen == {ws: current(self.truth(ws), SETTINGS, self.now()) for ws in POOL}

    @rule(seconds=st.sampled_from(STEPS))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def send_result(self, instance: str, workspace: str, ok: bool) -> None:
        breakers, before = self.breakers[instance], self.truth(workspace)
        if ok:
            self.run(breakers.success(workspace))
        else:
            others = sum(self.truth(ws).ejected for ws in POOL if ws != workspace)
            may_eject = eject_allowed(len(POOL), others, MAX_EJECTION_PERCENT)
            if not may_eject:
                event("the cap kept a member in")
            self.run(breakers.failure(workspace, "connection refused", may_eject))
        after = self.truth(workspace)
        if before.ejected and before.probe_owner != instance:  # a late result: it changes nothing but last_error
            assert replace(after, last_error=before.last_error) == before
        self.forget_resolved_probes()

    # --- invariants --------------------------------------------------------------------------------------------

    @invariant()
    def one_probe_and_it_is_the_one_handed_out(self) -> None:
        for workspace in POOL:
            state = self.truth(workspace)
            if state.state == "half_open":
                assert (state.probe_owner, state.probe_until) == self.probes[workspace]
            else:
                assert workspace not in self.probes and state.probe_owner is None

    @invariant()
    def ejections_grow_with_k_and_are_capped(self) -> None:
        for workspace in POOL:
            state = self.truth(workspace)
            if state.state == "closed":
                self.closed_since_ejection.add(workspace)
            previous = self.ejections.get(workspace)
            if state.state != "open" or (previous is not None and previous[0] == state.opened_at):
                continue
            assert state.open_until is not None and state.opened_at is not None
            k, duration = state.ejections - 1, state.open_until - state.opened_at
            assert duration == open_duration(SETTINGS, k) <= SETTINGS.max_open_seconds
            if previous is not None and k > previous[1]:
                assert duration >= previous[2]
            if previous is not None and workspace not in self.closed_since_ejection:  # a failed probe reopened it
                assert (k, duration) == (previous[1] + 1, min(2 * previous[2], SETTINGS.max_open_seconds))
            event(f"ejection with k={min(k, 4)}{'+' if k >= 4 else ''}")
            self.ejections[workspace] = (state.opened_at, k, duration)
            self.closed_since_ejection.discard(workspace)

    @invariant()
    def the_pool_keeps_its_members_within_the_cap(self) -> None:
        ejected = sum(self.truth(ws).ejected for ws in POOL)
        assert ejected * 100 <= MAX_EJECTION_PERCENT * len(POOL)


class CachedBreakerMachine(BreakerMachine):
    cache_seconds = 1.0


TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = RUN
TestCachedBreakerMachine = CachedBreakerMachine.TestCase
TestCachedBreakerMachine.settings = RUN

"""The PRD's LoadBalancer over real parts: config pools, the memory limit backend with a manual clock, the
workspace health cache. Each test builds its own pool and asserts a decision or its evidence."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from random import Random
from typing import Any

import pytest

from relay.clock import ManualClock
from relay.config import Settings
from relay.limits import Limit, MemoryLimits
from relay.limits.policy import cost_of, limits_for
from relay.pools import ALREADY_TRIED, CapacityView, HealthView, LoadBalancer, PoolCatalog
from relay.store import WorkspaceState

SENDER = "brian@invite.com"
POOL = "invite"


def ws(workspace_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": workspace_id, "domains": [f"{workspace_id}.example"], "sandbox": {}, **extra}


def settings(*workspaces: dict[str, Any], members: list[dict[str, Any]], **pool: Any) -> Settings:
    return Settings.model_validate(
        {
            "workspaces": list(workspaces),
            "load_balancing_pools": [
                {"id": POOL, "name": "Invite", "domain_patterns": ["invite.com"], "workspaces": members, **pool}
            ],
        }
    )


class Harness:
    def __init__(self, config: Settings, seed: int = 7) -> None:
        self.clock = ManualClock()
        self.limits = MemoryLimits(self.clock)
        self.settings = config
        self.health = HealthView(None, self.clock)
        self.catalog = PoolCatalog(config)
        self.balancer = LoadBalancer(
            self.catalog,
            CapacityView(self.limits, self.policy, self.clock, ttl=0.0),
            self.health,
            clock=self.clock,
            rng=Random(seed),
        )

    def policy(self, workspace_id: str, sender: str, recipients: int) -> tuple[list[Limit], int]:
        workspace = self.settings.workspace(workspace_id)
        assert workspace is not None
        cost = cost_of(workspace.rate_limits, recipients)
        return limits_for(workspace_id, workspace.rate_limits, sender, 2000, cost), cost

    async def use(self, workspace_id: str, sends: int, sender: str = SENDER) -> None:
        limits, _ = self.policy(workspace_id, sender, 1)
        for _ in range(sends):
            assert (await self.limits.reserve(limits)).ok


def member(workspace_id: str, weight: float = 1.0, enabled: bool = True) -> dict[str, Any]:
    return {"workspace_id": workspace_id, "weight": weight, "enabled": enabled}


async def test_a_decision_carries_every_members_score_and_the_evidence_for_the_attempt() -> None:
    h = Harness(settings(ws("a"), ws("b"), members=[member("a", 2), member("b", 1)]))
    decision = await h.balancer.decide(SENDER, POOL)
    assert decision.workspace_id in {"a", "b"}
    assert decision.strategy == "capacity_weighted"
    assert {m.workspace_id: m.score for m in decision.members} == {"a": 4.0, "b": 2.0}  # weight x 1.0 x urgency 2
    evidence = decision.evidence()
    assert evidence["pool"] == POOL and evidence["workspace"] == decision.workspace_id
    assert evidence["scores"] == {"a": 4.0, "b": 2.0}
    assert evidence["capacity"] == 1.0


async def test_weights_decide_the_shares_when_capacity_is_ample() -> None:
    h = Harness(settings(ws("a"), ws("b"), ws("c"), members=[member("a", 2), member("b", 1.5), member("c", 1)]))
    picks = Counter([(await h.balancer.decide(SENDER, POOL)).workspace_id for _ in range(9000)])
    for workspace_id, weight in (("a", 2), ("b", 1.5), ("c", 1)):
        assert abs(picks[workspace_id] / 9000 - weight / 4.5) < 0.02


async def test_disabled_unhealthy_and_already_tried_members_are_excluded_with_their_reason() -> None:
    h = Harness(
        settings(
            ws("a"),
            ws("b"),
            ws("c"),
            ws("d"),
            members=[member("a"), member("b", enabled=False), member("c"), member("d")],
        )
    )
    now = h.clock.now()
    h.health.note(WorkspaceState("c", "broken", "535 bad credentials", now, now + timedelta(minutes=5)))
    decision = await h.balancer.decide(SENDER, POOL, exclude={"d"})
    assert decision.workspace_id == "a"
    assert {m.workspace_id: m.excluded for m in decision.members} == {
        "a": None,
        "b": "disabled",
        "c": "unhealthy",
        "d": ALREADY_TRIED,
    }
    assert decision.member("c") is not None and decision.member("c").health == "auth_broken"  # type: ignore[union-attr]


async def test_a_broken_workspace_is_offered_again_once_its_recheck_time_has_passed() -> None:
    h = Harness(settings(ws("a"), members=[member("a")]))
    now = h.clock.now()
    h.health.note(WorkspaceState("a", "broken", "535", now, now + timedelta(minutes=5)))
    assert (await h.balancer.decide(SENDER, POOL)).workspace_id is None
    h.clock.advance(301)
    assert (await h.balancer.decide(SENDER, POOL)).workspace_id == "a"


async def test_an_exhausted_pool_says_when_the_first_member_comes_back() -> None:
    limited = {"rate_limits": {"workspace_daily": 3}}
    h = Harness(settings(ws("a", **limited), ws("b", **limited), members=[member("a"), member("b")]))
    await h.use("a", 3)
    h.clock.advance(3600)
    await h.use("b", 3)
    decision = await h.balancer.decide(SENDER, POOL)
    assert decision.workspace_id is None
    assert {m.excluded for m in decision.members} == {"no_capacity"}
    wait = decision.earliest_capacity_in(h.clock.now())
    # a's sends leave the rolling day first, at the end of their 5-minute bucket (conservative, never early)
    assert 23 * 3600 <= wait <= 23 * 3600 + 300


async def test_the_threshold_orders_members_but_never_strands_the_last_capacity() -> None:
    low = {"rate_limits": {"workspace_daily": 10}, "load_balancing": {"min_capacity_threshold": 0.5}}
    h = Harness(settings(ws("a", **low), ws("b", **low), members=[member("a"), member("b")]))
    await h.use("a", 8)
    await h.use("b", 6)
    decision = await h.balancer.decide(SENDER, POOL)
    assert decision.workspace_id in {"a", "b"}  # both under 50 %: the threshold is set aside
    assert decision.spilled and decision.evidence()["spilled"] is True
    await h.use("b", 1)
    h_fresh = await h.balancer.decide(SENDER, POOL)
    assert h_fresh.workspace_id in {"a", "b"}
    status = await h.balancer.get_pool_status(POOL)
    assert status is not None and status.available == 2  # under the threshold, yet taking mail: available


async def test_a_dry_run_leaves_the_round_robin_where_it_was() -> None:
    h = Harness(settings(ws("a"), ws("b"), members=[member("a"), member("b")], strategy="round_robin"))
    real = [(await h.balancer.decide(SENDER, POOL)).workspace_id for _ in range(2)]
    simulation = h.balancer.simulation()
    simulated = [(await h.balancer.decide(SENDER, POOL, simulation=simulation)).workspace_id for _ in range(3)]
    after = [(await h.balancer.decide(SENDER, POOL)).workspace_id for _ in range(3)]
    assert after == simulated  # the dry run showed the next real picks, and did not take them
    assert sorted(real) == ["a", "b"]


async def test_a_member_over_its_threshold_is_preferred_to_one_under_it() -> None:
    low = {"rate_limits": {"workspace_daily": 10}, "load_balancing": {"min_capacity_threshold": 0.5}}
    h = Harness(settings(ws("a", **low), ws("b", **low), members=[member("a"), member("b")]))
    await h.use("a", 8)
    picks = {(await h.balancer.decide(SENDER, POOL)).workspace_id for _ in range(200)}
    assert picks == {"b"}


async def test_capacity_is_read_for_the_sender_the_workspace_presents() -> None:
    rewriting = {
        "domains": ["relay-a.example"],
        "load_balancing": {"sender_rewrite": "default_sender", "default_sender": "relay@relay-a.example"},
        "rate_limits": {"custom_user_limits": {"relay@relay-a.example": 1}},
    }
    h = Harness(settings(ws("a", **rewriting), ws("b"), members=[member("a"), member("b")]))
    first = await h.balancer.decide(SENDER, POOL)
    assert first.member("a").sender == "relay@relay-a.example"  # type: ignore[union-attr]
    await h.use("a", 1, sender="relay@relay-a.example")  # the presented sender's limit of 1 is used
    decision = await h.balancer.decide(SENDER, POOL)
    assert decision.workspace_id == "b"
    assert decision.member("a").excluded == "no_capacity"  # type: ignore[union-attr]


async def test_least_used_counts_sends_in_flight_until_they_are_recorded() -> None:
    limited = {"rate_limits": {"workspace_daily": 100}}
    h = Harness(
        settings(ws("a", **limited), ws("b", **limited), members=[member("a"), member("b")], strategy="least_used")
    )
    first = await h.balancer.decide(SENDER, POOL)
    assert first.workspace_id is not None
    other = "b" if first.workspace_id == "a" else "a"
    h.balancer.placed(first)  # one send in flight on the first choice
    assert (await h.balancer.decide(SENDER, POOL)).workspace_id == other
    h.balancer.record_selection(first.workspace_id, True, pool_id=POOL)
    status = await h.balancer.get_pool_status(POOL)
    assert status is not None
    assert status.selections == {first.workspace_id: 1} and status.successes == {first.workspace_id: 1}
    assert all(m.in_flight == 0 for m in status.members)


async def test_round_robin_follows_the_weights_exactly_per_cycle() -> None:
    h = Harness(settings(ws("a"), ws("b"), members=[member("a", 3), member("b", 1)], strategy="round_robin"))
    picks = Counter([(await h.balancer.decide(SENDER, POOL)).workspace_id for _ in range(400)])
    assert picks == {"a": 300, "b": 100}


async def test_pool_status_reports_members_availability_and_exhaustion() -> None:
    limited = {"rate_limits": {"workspace_daily": 1}}
    h = Harness(settings(ws("a", **limited), ws("b"), members=[member("a"), member("b", enabled=False)]))
    await h.use("a", 1)
    decision = await h.balancer.decide(SENDER, POOL)
    assert decision.workspace_id is None
    h.balancer.exhausted(decision, "wait")
    status = await h.balancer.get_pool_status(POOL, SENDER)
    assert status is not None
    assert status.available == 0 and status.exhausted == 1 and status.last_exhausted_at == h.clock.now()
    assert [(m.workspace_id, m.remaining, m.limit) for m in status.members] == [("a", 0, 1), ("b", 2000, 2000)]
    assert await h.balancer.get_pool_status("nope") is None


async def test_select_workspace_takes_the_first_pool_with_an_available_member() -> None:
    h = Harness(settings(ws("a"), members=[member("a", enabled=False)]))
    assert await h.balancer.select_workspace(SENDER, [POOL]) is None
    assert await h.balancer.select_workspace(SENDER, ["unknown-pool"]) is None


@pytest.mark.parametrize("strategy", ["capacity_weighted", "round_robin", "least_used", "random_weighted"])
async def test_no_strategy_picks_an_excluded_member(strategy: str) -> None:
    h = Harness(
        settings(
            ws("a"), ws("b"), ws("c"), members=[member("a"), member("b", enabled=False), member("c")], strategy=strategy
        )
    )
    picks = {(await h.balancer.decide(SENDER, POOL, exclude={"c"})).workspace_id for _ in range(50)}
    assert picks == {"a"}

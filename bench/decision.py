"""Latency of one whole routing decision: `relay.pools.LoadBalancer.decide` on a 50-member pool, 20 pools configured.

    python -m bench.decision                      # 20,000 timed decisions per strategy after 2,000 warm-up
    python -m bench.decision --iterations 50000

Unlike `bench.balancer` (the pure strategy on prebuilt candidates), this times what delivery pays per message
before the reservation: reading the pool from the catalog, the sender each member presents, the capacity
snapshot (the memory backend behind the 0.5 s cache, warm: the steady state under load), the health view, the
candidates, eligibility and the strategy. 1,000 workspaces (20 pools x 50), each with a workspace and a per-user
daily limit, some members disabled and some with counters partly used. Timed with `time.perf_counter_ns` per
decision; written to bench/results/decision-<timestamp>.json.
"""

from __future__ import annotations

import asyncio
import time
from random import Random
from typing import Any, get_args

from bench.balancer import MEMBERS, POOLS, parse_args, publish
from bench.limits import summarise
from relay.clock import SystemClock
from relay.config import Settings, Strategy
from relay.limits import Limit, MemoryLimits
from relay.limits.policy import cost_of, limits_for
from relay.pools import CapacityView, HealthView, LoadBalancer, PoolCatalog

SEED = 20261204
SENDER = "brian@invite.com"


def build_settings(strategy: Strategy, rng: Random) -> Settings:
    workspaces = []
    pools = []
    for p in range(POOLS):
        members = []
        for m in range(MEMBERS):
            workspace_id = f"p{p:02d}-ws{m:02d}"
            workspaces.append(
                {
                    "id": workspace_id,
                    "domains": [f"{workspace_id}.example"],
                    "rate_limits": {"workspace_daily": rng.choice([500, 2000, 10_000]), "per_user_daily": 100_000},
                    "sandbox": {},
                }
            )
            members.append({"workspace_id": workspace_id, "weight": rng.choice([0.5, 1, 2, 3]), "enabled": m != 5})
        pools.append(
            {
                "id": f"pool{p:02d}",
                "name": f"Pool {p}",
                "domain_patterns": [f"pool{p:02d}.example"],
                "strategy": strategy,
                "workspaces": members,
            }
        )
    return Settings.model_validate({"workspaces": workspaces, "load_balancing_pools": pools})


async def bench_strategy(strategy: Strategy, iterations: int, warmup: int) -> dict[str, Any]:
    rng = Random(SEED)
    settings = build_settings(strategy, rng)
    clock = SystemClock()
    limits = MemoryLimits(clock)
    by_id = {w.id: w for w in settings.workspaces}

    def policy(workspace_id: str, sender: str, recipients: int) -> tuple[list[Limit], int]:
        rate_limits = by_id[workspace_id].rate_limits
        cost = cost_of(rate_limits, recipients)
        return limits_for(workspace_id, rate_limits, sender, 2000, cost), cost

    for workspace in settings.workspaces:  # some counters partly used
        for _ in range(rng.randrange(50)):
            await limits.reserve(policy(workspace.id, SENDER, 1)[0])
    balancer = LoadBalancer(
        PoolCatalog(settings), CapacityView(limits, policy, clock), HealthView(None, clock), clock=clock, rng=rng
    )
    samples: list[int] = []
    now = time.perf_counter_ns
    for i in range(warmup + iterations):
        pool_id = f"pool{i % POOLS:02d}"
        started = now()
        decision = await balancer.decide(SENDER, pool_id)
        elapsed = now() - started
        if decision.workspace_id is None:
            raise SystemExit(f"{strategy}: no member selected in {pool_id}")
        if i >= warmup:
            samples.append(elapsed)
    return {"strategy": strategy, "latency": summarise(samples)}


def main() -> None:
    args = parse_args(__doc__)
    cases = [asyncio.run(bench_strategy(s, args.iterations, args.warmup)) for s in get_args(Strategy)]
    title = f"whole decision (LoadBalancer.decide), {POOLS} pools x {MEMBERS} members, warm capacity cache"
    publish("decision", title, args, cases)


if __name__ == "__main__":
    main()

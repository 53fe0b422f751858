"""One routing decision on a 50-member pool with 20 pools configured: in-process, and with the Redis reservation.

    python -m bench.decision                      # per strategy: 2.5 s of decisions in-process, 5 s with the
                                                  # Redis reservation (at least 20,000 and 3,000 of them)
    python -m bench.decision --seconds 10 --redis-seconds 20 --redis-url redis://127.0.0.1:6379/0
    python -m bench.decision --no-redis

Setup: 1,000 workspaces (20 pools x 50 members), each with a workspace daily limit (500, 2,000 or 10,000) and a
per-user daily limit, counters partly used (0-49 sends each), weights 0.5-3, one member per pool disabled. One
`relay.pools.LoadBalancer` as `Relay` builds it (the `PoolCatalog` from the config, a `CapacityView` with its
cache, a `HealthView`, `Metrics`), one sender, the decisions rotating through the 20 pools.

- **in-process**: one `await LoadBalancer.decide(sender, pool)` on the memory limits backend, timed with
  `time.perf_counter_ns`, for `--seconds` per strategy (then again for 20,000 decisions in this thread's CPU time,
  a diagnostic for a shared machine). After each decision the chosen member is `placed` and the decision 64 places
  back is settled (`record_selection`), outside the timed region, so 64 sends are always in flight as under the
  default delivery concurrency and `least_used` reads live in-flight counts; then the event loop runs once, where
  the balancer's background refreshes of the counters run, as they would between a delivery's steps.
- **with the Redis reservation**: the same decision on a `CapacityView` over `RedisLimits`, plus the reservation
  delivery takes next (`CapacityGate.admit`: one EVALSHA of `lua/limits.lua` for the workspace and user limits),
  timed together for `--redis-seconds`: the per-message cost of choosing and reserving, with the refreshes of the
  counters (Redis calls of their own) interleaved as in production. Keys live under a unique hash-tagged prefix
  and are deleted afterwards; skipped with a message when Redis is unreachable.
- **rebuild** (`capacity_weighted`, no target): the decision when the kept snapshot is stale: rebuilt from the
  warm capacity cache (the health view's version bumped before each decision), and rebuilt with every counter
  re-read in line (capacity cache TTL 0: 100 limits, memory and Redis).

Writes the "decision" section (bench/results/latest/decision.json) through `bench.common.Section`.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from random import Random
from typing import Any, get_args

import redis
from redis.asyncio import Redis

from bench.common import Row, Section
from bench.limits import summarise
from relay.clock import SystemClock
from relay.config import Settings, Strategy
from relay.delivery import CapacityGate
from relay.limits import Limit, LimitBackend, MemoryLimits, RedisLimits
from relay.limits.policy import cost_of, limits_for
from relay.metrics import Metrics
from relay.pools import CapacityView, Decision, HealthView, LoadBalancer, PoolCatalog

POOLS = 20
MEMBERS = 50
IN_FLIGHT = 64  # the default delivery concurrency
SEED = 20261204
SENDER = "brian@invite.com"
IN_PROCESS_TARGET_US = 20.0
REDIS_TARGET_US = 1000.0


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


class Bench:
    """One strategy's parts: the settings, the policy `Relay` uses, and a balancer over a given limits backend."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy
        self.rng = Random(SEED)
        self.settings = build_settings(strategy, self.rng)
        self.clock = SystemClock()
        self._rate_limits = {w.id: w.rate_limits for w in self.settings.workspaces}

    def policy(self, workspace_id: str, sender: str, recipients: int) -> tuple[list[Limit], int]:
        rate_limits = self._rate_limits[workspace_id]
        cost = cost_of(rate_limits, recipients)
        return limits_for(workspace_id, rate_limits, sender, 2000, cost), cost

    async def use_some(self, limits: LimitBackend) -> None:
        """Count 0-49 sends on every workspace (one reservation of that cost each)."""
        rng = Random(SEED + 1)
        for workspace in self.settings.workspaces:
            used = rng.randrange(50)
            if used:
                await limits.reserve(self.policy(workspace.id, SENDER, 1)[0], used)

    def balancer(self, limits: LimitBackend, *, ttl: float = 0.5) -> tuple[LoadBalancer, HealthView]:
        health = HealthView(None, self.clock)
        capacity = CapacityView(limits, self.policy, self.clock, ttl=ttl)
        catalog = PoolCatalog(self.settings)
        return LoadBalancer(catalog, capacity, health, clock=self.clock, rng=self.rng, metrics=Metrics()), health


async def timed(
    balancer: LoadBalancer,
    iterations: int,
    warmup: int,
    after: Callable[[Decision], Awaitable[Any]] | None = None,
    before: Callable[[], None] | None = None,
    clock: Callable[[], int] = time.perf_counter_ns,
    seconds: float = 0.0,
) -> list[int]:
    """`iterations` decisions (plus `after`, timed with it), and more until `seconds` have passed, rotating through
    the pools, 64 sends kept in flight. The duration makes the sample cover the capacity cache's refreshes at their
    steady rate (a read every 0.5-2 s per pool), which a burst of a few thousand decisions would miss.
    Between decisions the event loop runs once, as it does between a delivery's steps (the balancer's background
    refreshes run there)."""
    flying: deque[Decision] = deque()
    samples: list[int] = []
    now = clock
    deadline = float("inf")
    i = 0
    while i < warmup + iterations or time.monotonic() < deadline:
        if i == warmup:
            deadline = time.monotonic() + seconds
        pool_id = f"pool{i % POOLS:02d}"
        if before is not None:
            before()
        started = now()
        decision = await balancer.decide(SENDER, pool_id)
        if after is not None:
            await after(decision)
        elapsed = now() - started
        if decision.workspace_id is None:
            raise SystemExit(f"{balancer.catalog.get(pool_id)}: no member selected")
        balancer.placed(decision)
        flying.append(decision)
        if len(flying) > IN_FLIGHT:
            done = flying.popleft()
            assert done.workspace_id is not None
            balancer.record_selection(done.workspace_id, True, pool_id=done.pool_id)
        if i >= warmup:
            samples.append(elapsed)
        i += 1
        await asyncio.sleep(0)
    return samples


async def in_process(strategy: Strategy, iterations: int, warmup: int, seconds: float) -> dict[str, Any]:
    """Wall-clock latency; then the same decisions timed in this thread's CPU time, which leaves out the time
    other processes had the core (a diagnostic for a shared machine: the target is on the wall clock)."""
    bench = Bench(strategy)
    limits = MemoryLimits(bench.clock)
    await bench.use_some(limits)
    balancer, _ = bench.balancer(limits)
    wall = summarise(await timed(balancer, iterations, warmup, seconds=seconds))
    cpu = summarise(await timed(balancer, iterations, 0, clock=time.thread_time_ns))
    return {"strategy": strategy, "latency": wall, "cpu": cpu}


async def rebuilds(iterations: int, warmup: int, redis_backend: RedisLimits | None) -> dict[str, Any]:
    """capacity_weighted decisions whose kept snapshot is stale: rebuilt from the warm capacity cache, and with
    every counter re-read (memory, and Redis when there is a backend, already filled)."""
    bench = Bench("capacity_weighted")
    limits = MemoryLimits(bench.clock)
    await bench.use_some(limits)
    balancer, health = bench.balancer(limits)
    out = {"snapshot_rebuilt": summarise(await timed(balancer, iterations, warmup, before=health.changed))}
    balancer, _ = bench.balancer(limits, ttl=0.0)
    out["counters_reread_memory"] = summarise(await timed(balancer, iterations, warmup))
    if redis_backend is not None:
        balancer, _ = bench.balancer(redis_backend, ttl=0.0)
        out["counters_reread_redis"] = summarise(await timed(balancer, iterations // 4, warmup // 4))
    return out


async def with_redis(
    strategy: Strategy, backend: RedisLimits, iterations: int, warmup: int, seconds: float
) -> dict[str, Any]:
    bench = Bench(strategy)
    balancer, _ = bench.balancer(backend)
    gate = CapacityGate(backend, bench.policy)
    refused = 0

    async def reserve(decision: Decision) -> None:
        nonlocal refused
        assert decision.workspace_id is not None
        admission = await gate.admit(decision.workspace_id, decision.sent_as, 1)
        refused += not admission.ok

    decide_only = await timed(balancer, iterations, warmup)
    samples = await timed(balancer, iterations, warmup, after=reserve, seconds=seconds)
    if refused:
        raise SystemExit(f"{strategy}: {refused} reservations refused; the limits are meant to admit every one")
    return {"strategy": strategy, "decide": summarise(decide_only), "latency": summarise(samples)}


async def delete_prefix(client: Redis, prefix: str) -> None:
    keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
    for start in range(0, len(keys), 1000):
        await client.delete(*keys[start : start + 1000])


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Every case on one event loop; the Redis ones share one key prefix, filled once and deleted at the end."""
    local = [await in_process(s, args.iterations, args.warmup, args.seconds) for s in get_args(Strategy)]
    rebuild_iterations, rebuild_warmup = max(args.iterations // 10, 100), args.warmup // 10
    if args.no_redis:
        return {"local": local, "rebuilt": await rebuilds(rebuild_iterations, rebuild_warmup, None)}
    client = Redis.from_url(args.redis_url)
    try:
        await client.ping()
    except (redis.RedisError, OSError) as exc:
        print(f"bench.decision: Redis at {args.redis_url} unreachable ({type(exc).__name__}): Redis cases skipped")
        await client.aclose()
        return {"local": local, "rebuilt": await rebuilds(rebuild_iterations, rebuild_warmup, None)}
    prefix = f"bench:{{{uuid.uuid4().hex}}}:"
    backend = RedisLimits(client, key_prefix=prefix)
    try:
        info = await client.info("server")
        await Bench("capacity_weighted").use_some(backend)  # the same workspaces in every strategy's config
        remote = [
            await with_redis(s, backend, args.redis_iterations, args.warmup, args.redis_seconds)
            for s in get_args(Strategy)
        ]
        rebuilt = await rebuilds(rebuild_iterations, rebuild_warmup, backend)
        return {"local": local, "remote": remote, "redis_version": info.get("redis_version"), "rebuilt": rebuilt}
    finally:
        await delete_prefix(client, prefix)
        await client.aclose()


def strategy_rows(cases: list[dict[str, Any]], where: str, target_us: float) -> list[Row]:
    rows = []
    for case in cases:
        stats = case["latency"]
        note = f"p50 {stats['p50_us']:.2f} µs, p95 {stats['p95_us']:.2f} µs, p99 {stats['p99_us']:.2f} µs"
        if "cpu" in case:
            note += f"; on-CPU time p50 {case['cpu']['p50_us']:.2f} µs, p99 {case['cpu']['p99_us']:.2f} µs"
        if "decide" in case:
            note += f"; the decision alone on the Redis backend: p50 {case['decide']['p50_us']:.2f} µs"
        rows.append(
            Row(
                measure=f"decision {where}, `{case['strategy']}`, p99",
                value=stats["p99_us"],
                unit="µs",
                target=f"≤ {target_us:g} µs",
                met=stats["p99_us"] <= target_us,
                note=note,
            )
        )
    return rows


def headline(cases: list[dict[str, Any]], measure: str, target_us: float) -> Row:
    worst = max(cases, key=lambda c: c["latency"]["p99_us"])
    p99 = worst["latency"]["p99_us"]
    p50 = max(c["latency"]["p50_us"] for c in cases)
    return Row(
        measure=measure,
        value=p99,
        unit="µs",
        target=f"≤ {target_us:g} µs",
        met=p99 <= target_us,
        note=f"worst strategy `{worst['strategy']}`; highest p50 {p50:.2f} µs",
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=20_000, help="timed in-process decisions per strategy")
    parser.add_argument("--warmup", type=int, default=2_000, help="untimed decisions before each case")
    parser.add_argument("--redis-iterations", type=int, default=3_000, help="timed decisions + reservations")
    parser.add_argument("--seconds", type=float, default=2.5, help="in-process: time decisions for at least this")
    parser.add_argument("--redis-seconds", type=float, default=5.0, help="with Redis: at least this long")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis cases")
    args = parser.parse_args()
    if args.iterations < 1 or args.redis_iterations < 4 or args.warmup < 0:
        parser.error("--iterations must be >= 1, --redis-iterations >= 4 and --warmup >= 0")
    return args


def main() -> None:
    args = parse_args()
    command = "python -m bench.decision" + (
        f" --seconds {args.seconds:g} --redis-seconds {args.redis_seconds:g}"
        if (args.seconds, args.redis_seconds) != (2.5, 5.0)
        else ""
    )
    results = asyncio.run(run_all(args))
    local, remote, rebuilt = results["local"], results.get("remote"), results["rebuilt"]
    rows = [
        headline(
            local, "routing decision p99, in-process (`LoadBalancer.decide`, memory backend)", IN_PROCESS_TARGET_US
        )
    ]
    if remote is not None:
        rows.append(headline(remote, "routing decision + Redis reservation p99", REDIS_TARGET_US))
    else:
        rows.append(
            Row("routing decision + Redis reservation p99", None, "µs", target="≤ 1000 µs", note="Redis unreachable")
        )
    rows += strategy_rows(local, "in-process", IN_PROCESS_TARGET_US)
    if remote is not None:
        rows += strategy_rows(remote, "+ Redis reservation", REDIS_TARGET_US)
    for key, label in (
        ("snapshot_rebuilt", "decision with its snapshot rebuilt (capacity cache warm), p50"),
        ("counters_reread_memory", "decision re-reading the counters (memory backend), p50"),
        ("counters_reread_redis", "decision re-reading the counters (Redis backend), p50"),
    ):
        if key in rebuilt:
            stats = rebuilt[key]
            rows.append(Row(label, stats["p50_us"], "µs", note=f"`capacity_weighted`; p99 {stats['p99_us']:.2f} µs"))
    section = Section(
        section="decision",
        title="Routing decision latency: 50-member pool, 20 pools",
        command=command,
        rows=rows,
        notes=NOTES,
        details={
            "python": platform.python_version(),
            "pools": POOLS,
            "members": MEMBERS,
            "in_flight": IN_FLIGHT,
            "iterations": args.iterations,
            "redis_iterations": args.redis_iterations,
            "seconds": args.seconds,
            "redis_seconds": args.redis_seconds,
            "warmup": args.warmup,
            "in_process": local,
            "redis": remote,
            "redis_server": results.get("redis_version"),
            "rebuilds": rebuilt,
        },
    )
    for row in rows:
        value = "-" if row.value is None else f"{row.value:.2f} {row.unit}"
        print(f"{row.measure:<78} {value:>14}  {row.target or ''} {'' if row.met is None else row.met}")
    section.write()


NOTES = """\
Setup: 1,000 workspaces in 20 pools of 50 members, each with a workspace and a per-user daily limit, counters
partly used, one member per pool disabled; one `LoadBalancer` built as `Relay` builds it (catalog, capacity view,
health view, metrics); one sender; decisions rotate through the pools; after each one the chosen member is placed
and the decision 64 places back settled, so 64 sends are in flight throughout, and the event loop runs once
between decisions. Each case runs for a few seconds so that the capacity cache's refreshes happen at their steady
rate inside the sample. *In-process* times `await LoadBalancer.decide(...)` on the memory backend; *+ Redis
reservation* times the decision on a capacity view over `RedisLimits` plus `CapacityGate.admit` (one EVALSHA for
the workspace and user limits): what delivery pays per message before the send.

How a decision got from ≈ 50 µs to ≈ 5 µs (p50): the balancer used to build 50 `Candidate`s, look up 50 health
states and run the strategy's O(n) pass on every decision (profiled with cProfile: 80 % of the time). Now, for
each (pool, sender), it keeps the snapshot and its `relay.balancer.Plan` — eligibility and the strategy's O(n)
preparation (scores, cumulative sums) — while their inputs stand: the pool's definition, the capacity entries,
the health view's version (it moves only when a refresh or a send finds a workspace's health changed) and the
moment the first blocked member comes back. A decision is then one pick: a
bisection (`capacity_weighted`, `random_weighted`); two samples read against the live in-flight counts
(`least_used`); the smooth weighted round robin's vector add and max over lists, in C (`round_robin`, the dearest).
Per-member scores that change with every pick are handed out as lazy views: the attempt's evidence reads them
once when it is recorded (`Decision.evidence()`, 15-27 µs per attempt, outside the decision). The picks are
identical to the previous code's for the same seed (checked over 5,000 random pools, every strategy).

The counters are read off the decision path: the first decision near a snapshot's expiry starts reading, in the
background, only the entries about to go stale (refresh ahead); a pair with at least a quarter of its limit left
is read every 2 s, the others every 0.5 s (the reservation is authoritative: a stale count only weighs a choice
and a refused reservation drops the entry at once); and a read goes to the backend 10 members at a time, letting
other tasks run in between. That last part is what the Redis tail depends on: reading 50 members' counters is
one EVALSHA of 500 arguments answered with 400 integers, which redis-py packs and parses in pure Python — about
3-4 ms of event-loop time (the *re-reading the counters* row: a decision that waits for it) — and every
reservation in flight while it is parsed waits with it. In one piece, every 0.5 s, it put the p99 of decision +
reservation at 1.8-2.8 ms; in slices of 10 members, read at the rates above (roomy pairs' expiries spread over
1.5-2 s so that a pool is re-read a few members at a time), at 0.4-1.3 ms from run to run. The floor on this
machine, with the counters never re-read (a TTL of 1,000 s), was p50 0.31 ms, p99 0.73 ms in the same conditions:
what is left above it is the re-reads' parsing. Installing `hiredis` (redis-py uses it when present) cut a
100-limit read from 1.7 to 1.0 ms in a separate test; it is not a dependency yet.

What a decision costs when its snapshot is stale is in the *rebuild* rows (`capacity_weighted`, no target):
rebuilt from the warm capacity cache (≈ 90 µs), or with every counter re-read in line (memory ≈ 1 ms, Redis
≈ 3-4 ms). Under steady traffic refresh ahead keeps these off the decision path; they are paid by the first
decision for a (pool, sender) after a quiet spell, after a refused reservation for that sender, and for senders
seen rarely (per-user limits make every (pool, sender) a snapshot of its own). Tails (p99) move by several µs
between identical runs on the shared 2-core machine; the on-CPU-time percentiles in the notes of each row leave
out time the process was not running, and the p50s are the stable figures.
"""


if __name__ == "__main__":
    main()

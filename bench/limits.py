"""Latency of the limits layer: a capacity snapshot, one reservation (memory and Redis), and a Redis PING.

    python -m bench.limits                       # defaults below
    python -m bench.limits --iterations 5000 --warmup 500
    python -m bench.limits --redis-url redis://127.0.0.1:6379/0

Each case is timed with `time.perf_counter_ns` per iteration after a warm-up, and reported as p50/p95/p99
in microseconds. The cases:

  snapshot   50 workspaces x 1 sender: per workspace, `limits_for(...)` then `MemoryLimits.usage(...)`;
             one iteration covers all 50 workspaces (also reported per workspace).
  memory     one `MemoryLimits.reserve` of a workspace limit and a user limit.
  redis      the same reservation on `RedisLimits` (one EVALSHA) against the local Redis.
  ping       one Redis PING over the same client, the network floor for the Redis reservation.

Reservations use limits large enough that every one is accepted (the full path: check, count, token).
Redis keys live under a unique hash-tagged prefix (`bench:{<uuid>}:`) and are deleted afterwards. When
Redis is unreachable the Redis cases are skipped with a message. Results are printed and written to
bench/results/limits-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from relay.config import RateLimits
from relay.limits import Limit, MemoryLimits, RedisLimits
from relay.limits.policy import cost_of, limits_for

RESULTS = Path(__file__).parent / "results"
WORKSPACES = 50
DEFAULT_PER_USER_DAILY = 2000
SENDER = "sender@bench.example"
# Large enough that every timed reservation is accepted: a refused one would skip the counting and the token.
RESERVE_RATE_LIMITS = RateLimits(workspace_daily=1_000_000_000, per_user_daily=1_000_000_000)


def percentile(ordered_ns: list[float], p: float) -> float:
    """Nearest-rank percentile of sorted nanosecond samples, in microseconds."""
    index = min(len(ordered_ns), max(1, math.ceil(p / 100 * len(ordered_ns)))) - 1
    return ordered_ns[index] / 1000


def summarise(samples_ns: list[int], divide: int = 1) -> dict[str, float]:
    """p50/p95/p99, mean and min in microseconds; `divide` turns a batch's time into a per-item time."""
    ordered = sorted(s / divide for s in samples_ns)
    return {
        "p50_us": round(percentile(ordered, 50), 2),
        "p95_us": round(percentile(ordered, 95), 2),
        "p99_us": round(percentile(ordered, 99), 2),
        "mean_us": round(statistics.fmean(ordered) / 1000, 2),
        "min_us": round(ordered[0] / 1000, 2),
        "samples": len(ordered),
    }


async def measure(step: Callable[[], Awaitable[Any]], iterations: int, warmup: int) -> list[int]:
    for _ in range(warmup):
        await step()
    samples: list[int] = []
    clock = time.perf_counter_ns
    for _ in range(iterations):
        started = clock()
        await step()
        samples.append(clock() - started)
    return samples


async def bench_snapshot(iterations: int, warmup: int) -> dict[str, Any]:
    rate_limits = RateLimits(workspace_daily=2000, per_user_daily=100)
    workspaces = [f"ws-{i:02d}" for i in range(WORKSPACES)]
    backend = MemoryLimits()
    # Some sends already counted, so the snapshot reads live buckets rather than empty dictionaries.
    for workspace in workspaces:
        limits = limits_for(workspace, rate_limits, SENDER, DEFAULT_PER_USER_DAILY)
        for _ in range(10):
            assert (await backend.reserve(limits, cost_of(rate_limits, 1))).ok

    async def snapshot() -> None:
        for workspace in workspaces:
            await backend.usage(limits_for(workspace, rate_limits, SENDER, DEFAULT_PER_USER_DAILY))

    samples = await measure(snapshot, iterations, warmup)
    usage = await backend.usage(limits_for(workspaces[0], rate_limits, SENDER, DEFAULT_PER_USER_DAILY))
    return {
        "case": "snapshot",
        "description": f"{WORKSPACES} workspaces x 1 sender: limits_for + MemoryLimits.usage (2 limits each)",
        "total": summarise(samples),
        "per_workspace": summarise(samples, WORKSPACES),
        "check": {u.key: {"used": u.used, "remaining": u.remaining} for u in usage},
    }


def reservation_limits() -> list[Limit]:
    return limits_for("bench-ws", RESERVE_RATE_LIMITS, SENDER, DEFAULT_PER_USER_DAILY)


async def bench_reserve(name: str, backend: MemoryLimits | RedisLimits, iterations: int, warmup: int) -> dict[str, Any]:
    limits = reservation_limits()
    refused = 0

    async def reserve() -> None:
        nonlocal refused
        if not (await backend.reserve(limits)).ok:
            refused += 1

    samples = await measure(reserve, iterations, warmup)
    if refused:
        raise SystemExit(f"{name}: {refused} reservations were refused; the figures would not be comparable")
    described = ", ".join(f"{lim.key} ({lim.kind})" for lim in limits)
    return {
        "case": name,
        "description": f"one {type(backend).__name__}.reserve of {described}",
        "latency": summarise(samples),
    }


async def bench_redis(url: str, iterations: int, warmup: int) -> list[dict[str, Any]] | str:
    client = Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=2.0)
    try:
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            return f"Redis at {url} is unreachable ({type(exc).__name__}: {exc}); Redis cases skipped"
        info = await client.info("server")
        prefix = f"bench:{{{uuid.uuid4().hex}}}:"
        backend = RedisLimits(client, key_prefix=prefix)
        try:
            reserve = await bench_reserve("redis", backend, iterations, warmup)
            ping = {"case": "ping", "description": "one PING on the same client", "latency": {}}
            ping["latency"] = summarise(await measure(client.ping, iterations, warmup))
        finally:
            keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
            if keys:
                await client.delete(*keys)
            await backend.aclose()
        reserve["redis_version"] = info.get("redis_version")
        reserve["key_prefix"] = prefix
        reserve["keys_deleted"] = len(keys)
        return [reserve, ping]
    finally:
        await client.aclose()


def ratio(a: dict[str, Any], b: dict[str, Any], field: str) -> float:
    return round(a["latency"][field] / b["latency"][field], 2)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    snapshot = await bench_snapshot(args.snapshot_iterations or args.iterations, args.warmup)
    memory = await bench_reserve("memory", MemoryLimits(), args.iterations, args.warmup)
    cases: list[dict[str, Any]] = [snapshot, memory]
    redis_cases = None if args.no_redis else await bench_redis(args.redis_url, args.iterations, args.warmup)
    ratios: dict[str, float] = {}
    skipped = None
    if isinstance(redis_cases, str):
        skipped = redis_cases
    elif redis_cases:
        redis, ping = redis_cases
        cases += redis_cases
        for field in ("p50_us", "p95_us", "p99_us"):
            ratios[f"redis_reserve/ping {field[:3]}"] = ratio(redis, ping, field)
            ratios[f"redis_reserve/memory_reserve {field[:3]}"] = ratio(redis, memory, field)
            ratios[f"redis_reserve-ping {field[:3]} (us)"] = round(redis["latency"][field] - ping["latency"][field], 2)
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "iterations": args.iterations,
        "warmup": args.warmup,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "cases": cases,
        "ratios": ratios,
        "skipped": skipped,
    }


def report(result: dict[str, Any]) -> None:
    def line(label: str, stats: dict[str, float]) -> None:
        print(
            f"{label:<34} p50 {stats['p50_us']:>9.2f}  p95 {stats['p95_us']:>9.2f}  p99 {stats['p99_us']:>9.2f}"
            f"  (µs, n={stats['samples']})"
        )

    print(f"limits latency, {result['iterations']} iterations after {result['warmup']} warm-up")
    for case in result["cases"]:
        if case["case"] == "snapshot":
            line(f"snapshot, {WORKSPACES} workspaces", case["total"])
            line("snapshot, per workspace", case["per_workspace"])
        else:
            line(f"reserve, {case['case']}" if case["case"] != "ping" else "redis PING", case["latency"])
    for name, value in result["ratios"].items():
        print(f"{name:<34} {value}")
    if result["skipped"]:
        print(result["skipped"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=5000, help="timed iterations per case")
    parser.add_argument("--warmup", type=int, default=500, help="untimed iterations before each case")
    parser.add_argument(
        "--snapshot-iterations", type=int, default=None, help="timed snapshot iterations (default: --iterations)"
    )
    parser.add_argument("--redis-url", default=os.environ.get("RELAY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis cases")
    args = parser.parse_args()
    if args.iterations < 1 or args.warmup < 0:
        parser.error("--iterations must be >= 1 and --warmup >= 0")
    result = asyncio.run(run(args))
    report(result)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"limits-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()

"""Latency of one load-balancing decision: `relay.balancer.select` on a 50-member pool, 20 pools configured.

    python -m bench.balancer                          # 20,000 timed decisions per strategy after 2,000 warm-up
    python -m bench.balancer --iterations 50000 --warmup 5000

Candidates for 20 pools of 50 members are built once (varied weights, remaining fractions, reset times,
utilisation and in-flight counts, and a few members excluded per pool: disabled, unhealthy, empty, under the
threshold). Each timed decision is one `select(strategy, candidates_of_one_pool, rng, state)` call —
eligibility over all 50 members, then the strategy — rotating through the 20 pools; `round_robin` keeps one
`RoundRobin` per pool, with its random start offset taken during the warm-up. Timed with `time.perf_counter_ns`
per decision, reported as p50/p95/p99 in microseconds, and written to bench/results/balancer-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from random import Random
from typing import Any, get_args

from bench.limits import summarise
from relay.balancer import Candidate, RoundRobin, select
from relay.config import Strategy

RESULTS = Path(__file__).parent / "results"
POOLS = 20
MEMBERS = 50
SEED = 20261204


def build_pools(rng: Random) -> list[list[Candidate]]:
    pools: list[list[Candidate]] = []
    for p in range(POOLS):
        members: list[Candidate] = []
        for m in range(MEMBERS):
            limit = rng.choice([500, 2000, 10_000])
            used = rng.randrange(limit)
            members.append(
                Candidate(
                    workspace_id=f"pool{p:02d}-ws{m:02d}",
                    weight=rng.choice([0.5, 1.0, 1.0, 2.0, 3.0, 5.0]),
                    remaining_fraction=0.0 if m == 7 else (limit - used) / limit,
                    next_capacity_in=0.0,
                    utilisation=used / limit,
                    in_flight=rng.randrange(5),
                    healthy=m != 3,
                    min_capacity_threshold=0.5 if m == 11 else 0.1,
                    full_reset_in=rng.uniform(0, 86_400),
                    limit=limit,
                    enabled=m != 5,
                )
            )
        pools.append(members)
    return pools


def bench_strategy(strategy: Strategy, pools: list[list[Candidate]], iterations: int, warmup: int) -> dict[str, Any]:
    rng = Random(SEED)
    states = [RoundRobin() for _ in pools]
    clock = time.perf_counter_ns
    samples: list[int] = []
    excluded = 0
    for i in range(warmup + iterations):
        p = i % POOLS
        started = clock()
        selection = select(strategy, pools[p], rng, states[p])
        elapsed = clock() - started
        if selection is None:
            raise SystemExit(f"{strategy}: no member selected in pool {p}")
        if i >= warmup:
            samples.append(elapsed)
            excluded += len(selection.excluded)
    eligible = round(MEMBERS - excluded / iterations, 1)
    return {"strategy": strategy, "mean_eligible": eligible, "latency": summarise(samples)}


def parse_args(doc: str | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=20_000, help="timed decisions per strategy")
    parser.add_argument("--warmup", type=int, default=2_000, help="untimed decisions before each strategy")
    args = parser.parse_args()
    if args.iterations < 1 or args.warmup < 0:
        parser.error("--iterations must be >= 1 and --warmup >= 0")
    return args


def publish(name: str, title: str, args: argparse.Namespace, cases: list[dict[str, Any]]) -> None:
    """Print one p50/p95/p99 line per strategy and write bench/results/<name>-<timestamp>.json."""
    result = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "iterations": args.iterations,
        "warmup": args.warmup,
        "pools": POOLS,
        "members": MEMBERS,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "cases": cases,
    }
    print(title)
    for case in cases:
        stats = case["latency"]
        extra = f", eligible {case['mean_eligible']}" if "mean_eligible" in case else ""
        print(
            f"{case['strategy']:<18} p50 {stats['p50_us']:>7.2f}  p95 {stats['p95_us']:>7.2f}"
            f"  p99 {stats['p99_us']:>7.2f}  (µs, n={stats['samples']}{extra})"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"written to {out}")


def main() -> None:
    args = parse_args(__doc__)
    pools = build_pools(Random(SEED))
    cases = [bench_strategy(s, pools, args.iterations, args.warmup) for s in get_args(Strategy)]
    title = f"balancer decision latency, {POOLS} pools x {MEMBERS} members, {args.iterations} decisions per strategy"
    publish("balancer", title, args, cases)


if __name__ == "__main__":
    main()

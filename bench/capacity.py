"""Capacity use: messages into a pool whose members' daily limits sum to the capacity, through the real pool path.

    python -m bench.capacity                 # every strategy; memory backend at a capacity of 100,000, Redis at
                                             # 20,000; 1 % overflow; 64 deliveries in flight; 2 cases at a time
    python -m bench.capacity --redis-capacity 100000            # the Redis cases at full size too (minutes)
    python -m bench.capacity --capacity 20000 --strategies round_robin --backends memory --jobs 1
    python -m bench.capacity --senders 1 --no-user-limits       # the workspace limits alone

The pool: 16 members with uneven workspace daily limits summing to the capacity (20 % of it down to 0.5 %),
uneven weights (0.5-5, not proportional to the limits), the default `min_capacity_threshold` (0.1), and on four
members a per-user daily limit (1.25x an even share of the member's limit across the senders); the global
`default_per_user_daily` is set high enough not to bind elsewhere. Messages come from `--senders` senders in turn.

Each message goes through `relay.delivery.pool_path.PoolPath.deliver` of a real `DeliveryWorker`: the
`LoadBalancer` decides, the `CapacityGate` reserves on the limits backend (`MemoryLimits`, or `RedisLimits` under
a unique key prefix, deleted afterwards), the worker sends, fails over or records `pool_exhausted` exactly as in
production. Only the ends are stand-ins: a provider that accepts every message at once (yielding to the event
loop once, as any I/O would, and counting what it got per workspace and per presented sender) and a queue whose
`complete` keeps the outcome in memory (no SMTP, no database). `--concurrency` deliveries run at once as asyncio
tasks, as the worker runs them; each case runs in a process of its own, `--jobs` at a time.

Figures: sends over any limit, counted from what the provider received against each workspace limit and each
(workspace, sender) limit (must be 0); the reservations granted before the first `pool_exhausted` was recorded,
as a share of the capacity (target >= 99.9 %); the sends in all; the messages left waiting (`pool_exhausted`). The
run sends `--overflow-pct` (1 %) more messages than the capacity, so the pool must run dry, and only once its
capacity is used. Writes the "capacity" section (bench/results/latest/capacity.json) through `bench.common.Section`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import multiprocessing
import platform
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from random import Random
from typing import Any, cast, get_args

import redis
import structlog
from redis.asyncio import Redis

from bench.common import Row, Section
from relay.clock import SystemClock
from relay.config import Settings, Strategy
from relay.delivery import CapacityGate, DeliveryWorker, RetryPolicy
from relay.delivery.pool_path import PoolPath
from relay.limits import Limit, LimitBackend, MemoryLimits, RedisLimits, Reservation, Usage
from relay.limits.policy import cost_of, limits_for, user_limit
from relay.pools import CapacityView, HealthView, LoadBalancer, PoolCatalog
from relay.providers import Health, OutboundMessage, Outcome
from relay.routing import Router
from relay.store import MessageQueue, QueuedMessage, WorkspaceStates

POOL = "capacity"
SEED = 20261205
SHARES = (0.20, 0.15, 0.12, 0.10, 0.08, 0.07, 0.06, 0.05, 0.04, 0.035, 0.03, 0.025, 0.015, 0.012, 0.008, 0.005)
WEIGHTS = (1, 3, 0.5, 2, 1, 5, 1, 2, 0.5, 1, 3, 1, 2, 1, 0.5, 1)
USER_LIMITED = (2, 5, 9, 13)  # members with a per-user daily limit
TARGET = 99.9
RAW = b"From: bench@example.com\r\nTo: rcpt@example.net\r\nSubject: capacity\r\n\r\nbody\r\n"


def workspace_limits(capacity: int) -> list[int]:
    """Uneven limits that sum to `capacity` exactly (the rounding goes to the largest)."""
    limits = [max(1, round(capacity * share)) for share in SHARES]
    limits[0] += capacity - sum(limits)
    return limits


def build_settings(strategy: Strategy, capacity: int, senders: int, user_limits: bool) -> Settings:
    workspaces = []
    for i, limit in enumerate(workspace_limits(capacity)):
        rate_limits: dict[str, Any] = {"workspace_daily": limit}
        if user_limits and i in USER_LIMITED:
            rate_limits["per_user_daily"] = math.ceil(limit / senders * 1.25)
        workspaces.append(
            {"id": f"ws{i:02d}", "domains": [f"ws{i:02d}.example"], "rate_limits": rate_limits, "sandbox": {}}
        )
    pool = {
        "id": POOL,
        "name": "Capacity",
        "domain_patterns": ["capacity.example"],
        "strategy": strategy,
        "workspaces": [{"workspace_id": w["id"], "weight": WEIGHTS[i]} for i, w in enumerate(workspaces)],
    }
    return Settings.model_validate(
        {"workspaces": workspaces, "load_balancing_pools": [pool], "default_per_user_daily": 10 * capacity}
    )


class InstantProvider:
    """Accepts every message at once (yielding to the event loop once, as any I/O would) and counts it per
    (workspace, presented sender)."""

    kind = "sandbox"
    concurrency = 1_000

    def __init__(self, workspace_id: str, sent: Counter[tuple[str, str]]) -> None:
        self._workspace_id = workspace_id
        self._sent = sent

    async def send(self, message: OutboundMessage) -> Outcome:
        self._sent[(self._workspace_id, message.mail_from.lower())] += 1
        await asyncio.sleep(0)  # at once, but a send is I/O: the other deliveries run meanwhile
        return Outcome("sent", status="250", provider_message_id=message.id)

    async def check(self) -> Health:
        return Health(True)

    async def aclose(self) -> None:
        return None


class Outcomes:
    """The queue's `complete` (and `release`): what delivery recorded, in memory. Notes the reservations granted
    when the first `pool_exhausted` arrives."""

    def __init__(self, granted: Counter[str], sent: Counter[tuple[str, str]]) -> None:
        self.results: Counter[str] = Counter()
        self.exhausted = 0
        self.granted_at_first_exhaustion: int | None = None
        self.sent_at_first_exhaustion: int | None = None
        self.first_exhausted_sender: str | None = None
        self.sent_by_then: Counter[tuple[str, str]] = Counter()
        self._granted = granted
        self._sent = sent

    async def complete(
        self, message: QueuedMessage, attempt: Any, transition: Any, *, earlier: Sequence[Any] = (), events: Any = ()
    ) -> bool:
        self.results[type(transition).__name__] += 1
        await asyncio.sleep(0)  # a database write, done at once
        if any(event.get("type") == "load_balancing.pool_exhausted" for event in events):
            self.exhausted += 1
            if self.granted_at_first_exhaustion is None:
                self.granted_at_first_exhaustion = self._granted["ok"]
                self.sent_at_first_exhaustion = self.results["Sent"]
                self.first_exhausted_sender = message.mail_from
                self.sent_by_then = Counter(self._sent)
        return True

    async def release(self, message: QueuedMessage) -> None:
        self.results["released"] += 1


class Counting:
    """A `LimitBackend` that counts the reservations its backend grants and refuses (the real backend decides)."""

    def __init__(self, backend: LimitBackend, granted: Counter[str]) -> None:
        self._backend = backend
        self._granted = granted

    async def reserve(self, limits: Sequence[Limit], cost: int = 1) -> Reservation:
        reservation = await self._backend.reserve(limits, cost)
        self._granted["ok" if reservation.ok else "refused"] += 1
        return reservation

    async def release(self, token: str) -> None:
        self._granted["released"] += 1
        await self._backend.release(token)

    async def usage(self, limits: Sequence[Limit]) -> list[Usage]:
        return await self._backend.usage(limits)

    async def aclose(self) -> None:
        await self._backend.aclose()


@dataclass(frozen=True)
class Case:
    strategy: Strategy
    backend: str  # "memory" | "redis"
    capacity: int
    overflow: int
    senders: int
    user_limits: bool
    concurrency: int
    redis_url: str


async def run_case(case: Case) -> dict[str, Any]:
    settings = build_settings(case.strategy, case.capacity, case.senders, case.user_limits)
    clock = SystemClock()
    client = Redis.from_url(case.redis_url) if case.backend == "redis" else None
    prefix = f"bench:{{{uuid.uuid4().hex}}}:"
    real: LimitBackend = MemoryLimits(clock) if client is None else RedisLimits(client, key_prefix=prefix, clock=clock)
    granted: Counter[str] = Counter()
    limits = Counting(real, granted)
    rate_limits = {w.id: w.rate_limits for w in settings.workspaces}

    def policy(workspace_id: str, sender: str, recipients: int) -> tuple[list[Limit], int]:
        cost = cost_of(rate_limits[workspace_id], recipients)
        return limits_for(workspace_id, rate_limits[workspace_id], sender, settings.default_per_user_daily, cost), cost

    sent: Counter[tuple[str, str]] = Counter()
    providers = {w.id: InstantProvider(w.id, sent) for w in settings.workspaces}
    outcomes = Outcomes(granted, sent)
    health = HealthView(None, clock)
    balancer = LoadBalancer(
        PoolCatalog(settings), CapacityView(limits, policy, clock), health, clock=clock, rng=Random(SEED)
    )
    router = Router(settings, pools=())
    worker = DeliveryWorker(
        queue=cast(MessageQueue, outcomes),
        states=cast(WorkspaceStates, None),  # only written when a send changes a workspace's state: never here
        router=router,
        providers=providers,
        policy=RetryPolicy(),
        owner="bench",
        gate=CapacityGate(limits, policy),
        balancer=balancer,
        health=health,
        concurrency=case.concurrency,
        clock=clock,
        rng=Random(SEED),
    )
    path = PoolPath(worker, balancer, router)
    senders = [f"sender{i:03d}@capacity.example" for i in range(case.senders)]
    created = datetime.now(UTC)
    queue = iter(range(case.capacity + case.overflow))

    async def lane() -> None:  # one of `concurrency` deliveries in flight, taking the next message when done
        for n in queue:
            sender = senders[n % len(senders)]
            rcpt = ("rcpt@example.net",)
            await path.deliver(QueuedMessage(f"m{n}", sender, rcpt, rcpt, RAW, 0, 0, created, {}, "bench"), POOL)

    started = time.perf_counter()
    try:
        await asyncio.gather(*(lane() for _ in range(case.concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        if client is not None:
            keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
            if keys:
                await client.delete(*keys)
            await client.aclose()
    return summarise_case(case, settings, sent, outcomes, granted, elapsed)


def summarise_case(
    case: Case,
    settings: Settings,
    sent: Counter[tuple[str, str]],
    outcomes: Outcomes,
    granted: Counter[str],
    elapsed: float,
) -> dict[str, Any]:
    by_workspace: Counter[str] = Counter()
    over = 0
    for (workspace_id, sender), count in sent.items():
        by_workspace[workspace_id] += count
        workspace = settings.workspace(workspace_id)
        assert workspace is not None
        over += max(0, count - user_limit(workspace.rate_limits, sender, settings.default_per_user_daily))
    left = {}
    for workspace in settings.workspaces:
        limit = workspace.rate_limits.workspace_daily or 0
        over += max(0, by_workspace[workspace.id] - limit)
        left[workspace.id] = limit - by_workspace[workspace.id]
    total_sent = sum(by_workspace.values())
    before = outcomes.granted_at_first_exhaustion
    stranded = {}
    who = outcomes.first_exhausted_sender
    if who is not None:  # why that sender found no member: each member's room then, and the sender's own on it
        by_then: Counter[str] = Counter()
        for (workspace_id, _sender), count in outcomes.sent_by_then.items():
            by_then[workspace_id] += count
        for workspace in settings.workspaces:
            room = (workspace.rate_limits.workspace_daily or 0) - by_then[workspace.id]
            if room > 0:
                own = user_limit(workspace.rate_limits, who, settings.default_per_user_daily)
                stranded[workspace.id] = {"room": room, "sender_room": own - outcomes.sent_by_then[(workspace.id, who)]}
    messages = case.capacity + case.overflow
    return {
        "strategy": case.strategy,
        "backend": case.backend,
        "capacity": case.capacity,
        "messages": messages,
        "sent": total_sent,
        "over_limit": over,
        "granted_before_first_exhaustion": before,
        "sent_before_first_exhaustion": outcomes.sent_at_first_exhaustion,
        "used_before_first_exhaustion_pct": round(100 * (total_sent if before is None else before) / case.capacity, 3),
        "used_pct": round(100 * total_sent / case.capacity, 3),
        "exhausted": outcomes.exhausted,
        "outcomes": dict(outcomes.results),
        "reservations": dict(granted),
        "capacity_left": {ws: n for ws, n in left.items() if n},
        "first_exhaustion": {"sender": who, "members_with_room": stranded},
        "seconds": round(elapsed, 2),
        "messages_per_second": round(messages / elapsed),
    }


def one_case(case: Case) -> dict[str, Any]:
    """A case in a process of its own (`--jobs`): quiet logs, its own event loop."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))  # 1 % overflow logs
    return asyncio.run(run_case(case))


def redis_reachable(url: str) -> bool:
    async def ping() -> bool:
        client = Redis.from_url(url)
        try:
            return bool(await client.ping())
        except (redis.RedisError, OSError) as exc:
            print(f"bench.capacity: Redis at {url} unreachable ({type(exc).__name__}): the Redis cases are skipped")
            return False
        finally:
            await client.aclose()

    return asyncio.run(ping())


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capacity", type=int, default=100_000, help="the members' limits sum to this (memory)")
    parser.add_argument("--redis-capacity", type=int, default=20_000, help="the same for the Redis backend's cases")
    parser.add_argument("--overflow-pct", type=float, default=1.0, help="messages beyond the capacity, in %%")
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument("--no-user-limits", action="store_true", help="no per-user limits on any member")
    parser.add_argument("--concurrency", type=int, default=64, help="deliveries in flight")
    parser.add_argument("--strategies", nargs="+", choices=get_args(Strategy), default=list(get_args(Strategy)))
    parser.add_argument("--backends", nargs="+", choices=["memory", "redis"], default=["memory", "redis"])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once, each in a process of its own")
    args = parser.parse_args()
    if min(args.capacity, args.redis_capacity) < len(SHARES) * 10:
        parser.error(f"--capacity and --redis-capacity must be >= {len(SHARES) * 10}")
    if args.senders < 1 or args.concurrency < 1 or args.jobs < 1 or args.overflow_pct <= 0:
        parser.error("--senders, --concurrency and --jobs must be >= 1, --overflow-pct > 0")
    return args


def main() -> None:
    args = parse_args()
    backends = [b for b in args.backends if b != "redis" or redis_reachable(args.redis_url)]
    cases = [
        Case(
            strategy,
            backend,
            capacity,
            max(1, math.ceil(capacity * args.overflow_pct / 100)),
            args.senders,
            not args.no_user_limits,
            args.concurrency,
            args.redis_url,
        )
        for backend in backends
        for capacity in [args.capacity if backend == "memory" else args.redis_capacity]
        for strategy in args.strategies
    ]
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(one_case, cases))
    for r in results:
        print(
            f"{r['backend']:<6} {r['strategy']:<18} sent {r['sent']:>7} of {r['capacity']:>7}  over a limit "
            f"{r['over_limit']}  used before the first pool_exhausted {r['used_before_first_exhaustion_pct']:.3f} %"
            f"  waiting {r['exhausted']}  ({r['seconds']} s, {r['messages_per_second']} msg/s)"
        )
    write_section(args, results)


def write_section(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    flags = []
    for flag, value, default in (
        ("--capacity", args.capacity, 100_000),
        ("--redis-capacity", args.redis_capacity, 20_000),
        ("--senders", args.senders, 20),
        ("--concurrency", args.concurrency, 64),
    ):
        if value != default:
            flags.append(f"{flag} {value}")
    if args.no_user_limits:
        flags.append("--no-user-limits")
    rows = []
    if results:
        worst = min(results, key=lambda r: r["used_before_first_exhaustion_pct"])
        over = sum(r["over_limit"] for r in results)
        rows.append(Row("sends over any limit (every strategy and backend)", over, "sends", target="0", met=over == 0))
        rows.append(
            Row(
                "capacity used before the first pool_exhausted (worst case)",
                worst["used_before_first_exhaustion_pct"],
                "%",
                target=f"≥ {TARGET} %",
                met=worst["used_before_first_exhaustion_pct"] >= TARGET,
                note=f"`{worst['strategy']}`, {worst['backend']} backend",
            )
        )
    for r in results:
        rows.append(
            Row(
                f"capacity used before the first pool_exhausted, `{r['strategy']}`, {r['backend']}",
                r["used_before_first_exhaustion_pct"],
                "%",
                target=f"≥ {TARGET} %",
                met=r["used_before_first_exhaustion_pct"] >= TARGET and r["over_limit"] == 0,
                note=(
                    f"capacity {r['capacity']:,}: {r['sent']:,} sent of {r['messages']:,} messages, {r['over_limit']}"
                    f" over a limit, {r['exhausted']:,} left waiting; {r['messages_per_second']:,} deliveries/s"
                ),
            )
        )
    Section(
        section="capacity",
        title="Capacity use: a pool whose members' limits sum to the capacity",
        command=" ".join(["python -m bench.capacity", *flags]),
        rows=rows,
        notes=NOTES,
        details={"python": platform.python_version(), "args": vars(args), "cases": results},
    ).write()


NOTES = """\
The pool has 16 members with uneven workspace daily limits summing to the capacity (20 % of it down to 0.5 %),
uneven weights not proportional to the limits, the default `min_capacity_threshold` of 0.1, and a per-user daily
limit on four members (1.25x an even share across the 20 senders, so it binds for some senders before the
workspace limit does). Messages from 20 senders in turn go through `PoolPath.deliver` of a real `DeliveryWorker`
— `LoadBalancer` decision, `CapacityGate` reservation, send, failover, `pool_exhausted` — 64 at a time, with an
instant provider and an in-memory `complete` in place of SMTP and the database; each case in a process of its own,
two at a time. The memory backend runs at a capacity of 100,000; the Redis backend at 20,000 by default (the same
path at a third of the speed: `--redis-capacity 100000` runs it at full size in about two minutes). The run sends
1 % more messages than the capacity, so the pool must run dry, and only once its capacity is used. *Over any
limit* is counted from what the provider received against each workspace and each (workspace, sender) limit;
*used before the first `pool_exhausted`* is the reservations granted before that event was recorded, over the
capacity.

Why nothing is stranded: a member under its `min_capacity_threshold` is only passed over while another member is
above it (when none is, the threshold is set aside: `spilled`); a refused reservation drops that member's cached
capacity and the pass asks again without it, so a pass ends in `pool_exhausted` only once every member has been
refused or shows no room; and the cached capacity can only overstate what is left, never hide it (sends only
add to the counters here). What can end a pass early is a per-user limit: with many senders and small per-user
shares, one sender may have used its own limit on the last member with room while others still can use it. With
`--senders 200` (per-user limits of 15 on the smallest limited member) the first `pool_exhausted` came at 99.5 %
(`capacity_weighted`), 99.8 % (`round_robin`), 100 % (`least_used`) and 97.9 % (`random_weighted`) of the capacity
(memory, capacity 20,000): in each case the one member with room was a per-user-limited one whose limit that
sender had used, and every message of the other senders was still sent — 100 % of the capacity in the end. That
is the per-user limit doing its job, not capacity lost; `details.cases[].first_exhaustion` names the sender and
the room each member had.
"""


if __name__ == "__main__":
    main()

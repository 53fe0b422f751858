"""One vs two `relay serve` processes on one PostgreSQL database and one Redis: accept and end-to-end rates.

    .venv/bin/python -m bench.scale_out                     # 4,000 messages of 5,000 B, 20 sessions in all
    .venv/bin/python -m bench.scale_out --messages 10000 --sessions 40

Method: for each process count (1, then 2) a fresh PostgreSQL database, and processes that share it and the
machine's Redis (`redis_url`: rate-limit reservations, health and configuration changes go through it), each with
its own `instance_name` and ports. Three sandbox workspaces (an in-process provider that writes files, so the
provider costs almost nothing and Relay is what is measured) form one `capacity_weighted` pool with a workspace
daily limit, and the sender's domain is the pool's pattern: every send takes a decision and an atomic Redis
reservation. Workspace ids and the pool domain carry a random suffix so Redis keys of earlier runs never count.

Load: Postfix's `smtp-source` (C, cheap), the same total either way: one instance with `--sessions` sessions
against the single process, or one per process with half the sessions and half the messages each, concurrently.
`--warmup` messages per process go first, untimed. Accept rate = messages / time until every `smtp-source` exited
(each 250 follows the commit); end-to-end rate = messages / time until the shared sandbox outbox holds every
message. Both processes claim from the same queue (`FOR UPDATE SKIP LOCKED`), so each delivers mail the other
accepted. CPU seconds per Relay process are recorded to show how the machine's cores were shared.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import Row, Section
from bench.relayproc import (
    Meter,
    RelayServer,
    count_files,
    fresh_postgres,
    postgres_reachable,
    profiled,
    relay_config,
    smtp_source,
    wait_until,
)

REDIS_URL = "redis://127.0.0.1:6379/0"
TWO_CORES = (
    "**What this ratio can show on a 2-core machine.** One Relay process runs its Python work on one event loop "
    "(one core at most, under the GIL), so when one process is CPU-bound (share near 1.0) a second process can put "
    "the second core to work: a ratio above 1 shows that. A ratio near or above 1 also shows that sharing the queue "
    "(`FOR UPDATE SKIP LOCKED` claims), the database and the Redis reservations between processes adds no serial "
    "bottleneck and loses no throughput to coordination; a ratio well below 1 would point at one (lock waits, claim "
    "conflicts), to be confirmed with a profile. **What it cannot show.** How Relay scales with more cores or "
    "machines: here both Relay processes, PostgreSQL, Redis and `smtp-source` share the same two cores, so the "
    "second process mostly takes CPU the first one would have used, and the ceiling is well under 2; a ratio below "
    "2 says nothing about a bottleneck in Relay. Nor does it show contention that only appears with many "
    "processes (claim conflicts, Redis script queueing, connection counts on PostgreSQL). On a machine shared with "
    "other work the figures move from run to run; the waiting-for-a-core column says how much the machine held "
    "Relay back."
)


def relay_data(database_url: str, outbox: Path, suffix: str, instance: str, redis_url: str) -> dict[str, Any]:
    ids = [f"scale-{suffix}-{n}" for n in (1, 2, 3)]
    workspaces = [
        {
            "id": workspace_id,
            "domains": [f"{workspace_id}.scale.bench.org"],
            "rate_limits": {"workspace_daily": 10_000_000},
            "sandbox": {"outbox_dir": str(outbox)},
        }
        for workspace_id in ids
    ]
    pool = {
        "id": f"scale-{suffix}",
        "name": "scale out",
        "domain_patterns": [f"pool-{suffix}.scale.bench.org"],
        "workspaces": [{"workspace_id": workspace_id} for workspace_id in ids],
    }
    return relay_config(
        database_url, workspaces, load_balancing_pools=[pool], redis_url=redis_url, instance_name=instance
    )


def feed(relays: list[RelayServer], messages: int, sessions: int, size: int, sender: str) -> float:
    """Split `messages` and `sessions` evenly over the processes' SMTP ports; seconds until every client is done."""
    started = time.perf_counter()
    clients = [
        smtp_source(r.smtp_port, messages // len(relays), max(1, sessions // len(relays)), size, sender) for r in relays
    ]
    codes = [client.wait() for client in clients]
    if any(codes):
        raise SystemExit(f"smtp-source failed: exit codes {codes}")
    return time.perf_counter() - started


def run(processes: int, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:8]
    sender = f"bench@pool-{suffix}.scale.bench.org"
    outbox = workdir / f"outbox-{processes}"
    with fresh_postgres() as url:
        relays = [
            RelayServer(
                relay_data(url, outbox, suffix, f"bench-{i}", args.redis_url), workdir, name=f"relay-{suffix}-{i}"
            )
            for i in range(processes)
        ]
        try:
            for relay in relays:  # one at a time: the first one migrates the new database
                relay.start()
            feed(relays, args.warmup * processes, args.sessions, args.size, sender)
            warm = args.warmup * processes
            wait_until(lambda: count_files(outbox) >= warm, args.timeout, "the warm-up to be delivered")
            meter = Meter({f"relay {i + 1}": r.pid for i, r in enumerate(relays)})
            started = time.perf_counter()
            with profiled(relays[0].pid, args.profile and args.profile.with_suffix(f".{processes}.txt")):
                accepted = feed(relays, args.messages, args.sessions, args.size, sender)
                total = warm + args.messages
                wait_until(lambda: count_files(outbox) >= total, args.timeout, "every message to be delivered")
            delivered = time.perf_counter() - started
            usage = meter.read()
        finally:
            for relay in relays:
                relay.stop()
    return {
        "processes": processes,
        "messages": args.messages,
        "sessions": args.sessions,
        "size": args.size,
        "accept_seconds": round(accepted, 3),
        "accept_per_second": round(args.messages / accepted, 1),
        "end_to_end_seconds": round(delivered, 3),
        "end_to_end_per_second": round(args.messages / delivered, 1),
        "usage": usage,
    }


def section(one: dict[str, Any], two: dict[str, Any], command: str) -> Section:
    accept_ratio = round(two["accept_per_second"] / one["accept_per_second"], 2)
    e2e_ratio = round(two["end_to_end_per_second"] / one["end_to_end_per_second"], 2)
    setup = f"{one['messages']} messages of {one['size']} B, {one['sessions']} sessions in all"
    rows = [
        Row("Accept rate, one process", one["accept_per_second"], "msg/s", note=setup),
        Row("Accept rate, two processes", two["accept_per_second"], "msg/s", ratio=accept_ratio, note="ratio: two/one"),
        Row("End-to-end rate, one process", one["end_to_end_per_second"], "msg/s"),
        Row("End-to-end rate, two processes", two["end_to_end_per_second"], "msg/s", ratio=e2e_ratio),
    ]
    notes = (
        (__doc__ or "").split("\n\n", 2)[2].strip()
        + "\n\n| processes | accepted, msg/s | end to end, msg/s | each Relay's CPU, share of one core "
        + "| each Relay's event loop runnable but waiting for a core, s |\n|---|---|---|---|---|\n"
        + "\n".join(
            f"| {r['processes']} | {r['accept_per_second']} | {r['end_to_end_per_second']} "
            f"| {', '.join(str(u['cpu_share']) for u in r['usage'].values())} "
            f"| {', '.join(str(u['waiting_for_cpu_s']) for u in r['usage'].values())} |"
            for r in (one, two)
        )
        + f"\n\nRatio two/one: accept {accept_ratio}, end to end {e2e_ratio}. {TWO_CORES}"
    )
    details = {"one": one, "two": two, "accept_ratio": accept_ratio, "end_to_end_ratio": e2e_ratio}
    return Section(
        "scale_out", "One vs two Relay processes on shared PostgreSQL and Redis", command, rows, notes, details
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=4000, help="even; split over the processes")
    parser.add_argument("--sessions", type=int, default=20, help="in all; split over the processes")
    parser.add_argument("--size", type=int, default=5000, help="message size in bytes")
    parser.add_argument("--warmup", type=int, default=100, help="per process, untimed")
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--timeout", type=float, default=180)
    parser.add_argument("--profile", type=Path, help="py-spy the first Relay process to FILE.<processes>.txt")
    args = parser.parse_args(argv)
    if not postgres_reachable():
        raise SystemExit("PostgreSQL is not reachable on 127.0.0.1:5432")
    with tempfile.TemporaryDirectory(prefix="relay-bench-scale-") as tmp:
        one = run(1, Path(tmp), args)
        print(f"bench.scale_out: {json.dumps(one)}")
        two = run(2, Path(tmp), args)
        print(f"bench.scale_out: {json.dumps(two)}")
    command = " ".join([".venv/bin/python -m bench.scale_out", *(argv if argv is not None else sys.argv[1:])])
    section(one, two, command).write()


if __name__ == "__main__":
    main()

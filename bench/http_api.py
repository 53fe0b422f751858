"""`POST /api/v1/messages` rate of one `relay serve` process, on SQLite and on PostgreSQL.

    .venv/bin/python -m bench.http_api                     # 3,000 messages of ~5 KB, 20 connections, both databases
    .venv/bin/python -m bench.http_api --messages 5000 --connections 50 --backends sqlite --raw --client httpx

Method: one `relay serve` process (sandbox workspace, delivery running as in production) with an `operator` API key
generated for the run and passed as `env:RELAY_BENCH_API_KEY`. This process drives it over `--connections`
concurrent keep-alive connections, each posting the next message as soon as its previous answer arrived (a closed
loop). A message is `{"from", "to", "subject", "text"}` with a ~`--size`-byte plain-text body (Relay builds the
MIME), or with `--raw` a prebuilt `--size`-byte message in base64. `202` is answered only after the row is committed
(the same group-commit `Ingest.store()` as SMTP's 250: SQLite WAL with `synchronous=FULL`, PostgreSQL
`synchronous_commit=on`). `--warmup` messages go first, untimed, and are delivered before the clock starts. The
rate is timed messages over the wall time of the timed phase; each request's latency is timed from writing the
request to reading the whole answer; the run then waits until the sandbox outbox holds every message (end-to-end
drain). CPU seconds of Relay and of this client are recorded, because both share the machine's cores.

The client is, by default, a minimal asyncio HTTP/1.1 client (requests encoded up front, answers read by
Content-Length), for the reason Postfix's `smtp-source` is written in C: the load generator must not take the cores
it measures. `--client httpx` uses `httpx.AsyncClient` instead; on this 2-core machine it cost about 2 ms of CPU per
request in the client (20 times the minimal client), and Relay's measured rate fell accordingly.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.common import Row, Section, percentile
from bench.relayproc import (
    Meter,
    RelayServer,
    count_files,
    fresh_postgres,
    postgres_reachable,
    profiled,
    relay_config,
    wait_until,
)

SENDER = "bench@http.bench.org"
RECIPIENT = "sink@example.org"


def body_text(size: int, n: int) -> str:
    """About `size` bytes of short ASCII lines: Relay's MIME stays 7bit, as most API text mail is."""
    line = f"message {n:06d}: the quick brown fox jumps over the lazy dog, again and again.\n"
    return line * max(1, size // len(line))


def raw_message(size: int, n: int) -> str:
    head = (
        f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: bench {n}\r\n"
        f"Message-ID: <http-{n}@http.bench.org>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n"
    )
    return base64.b64encode((head + body_text(size, n).replace("\n", "\r\n")).encode()).decode()


def payload(size: int, n: int, raw: bool) -> dict[str, Any]:
    if raw:
        return {"from": SENDER, "to": [RECIPIENT], "raw": raw_message(size, n)}
    return {"from": SENDER, "to": [RECIPIENT], "subject": f"bench {n}", "text": body_text(size, n)}


async def drive(
    url: str, key: str, bodies: list[dict[str, Any]], connections: int, client: str = "httpx"
) -> tuple[list[float], Counter[int]]:
    """Post every body over `connections` keep-alive connections; return each request's latency (s) and statuses."""
    if client == "raw":
        return await _drive_raw(url, key, bodies, connections)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    pending = iter(bodies)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=120) as http:

        async def connection() -> None:
            for body in pending:
                started = time.perf_counter()
                response = await http.post("/api/v1/messages", json=body)
                latencies.append(time.perf_counter() - started)
                statuses[response.status_code] += 1

        await asyncio.gather(*(connection() for _ in range(connections)))
    return latencies, statuses


async def _drive_raw(
    url: str, key: str, bodies: list[dict[str, Any]], connections: int
) -> tuple[list[float], Counter[int]]:
    """The same load from a minimal HTTP/1.1 client: requests encoded before the clock starts, answers read by
    Content-Length. It costs far less CPU than httpx, which matters when client and server share two cores."""
    host, _, port = url.removeprefix("http://").partition(":")
    requests = [_request(host, key, json.dumps(body).encode()) for body in bodies]
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    pending = iter(requests)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for request in pending:
                started = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
                latencies.append(time.perf_counter() - started)
                statuses[int(head[9:12])] += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    return latencies, statuses


def _request(host: str, key: str, body: bytes) -> bytes:
    head = (
        f"POST /api/v1/messages HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def run(backend: str, database_url: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    outbox = workdir / f"outbox-{backend}"
    key = secrets.token_urlsafe(32)
    workspace = {"id": "sandbox", "domains": ["http.bench.org"], "sandbox": {"outbox_dir": str(outbox)}}
    keys = [{"name": "bench", "key": "env:RELAY_BENCH_API_KEY", "role": "operator"}]
    data = relay_config(database_url, [workspace], http={"api_keys": keys})
    total = args.warmup + args.messages
    bodies = [payload(args.size, n, args.raw) for n in range(total)]
    with RelayServer(data, workdir, name=f"relay-{backend}", env={"RELAY_BENCH_API_KEY": key}) as relay:

        def post(part: list[dict[str, Any]]) -> tuple[list[float], Counter[int]]:
            return asyncio.run(drive(relay.url, key, part, args.connections, args.client))

        _, warm_statuses = post(bodies[: args.warmup])
        warm = warm_statuses[202]
        wait_until(lambda: count_files(outbox) >= warm, args.drain_timeout, "the warm-up to be delivered")
        meter = Meter({"relay": relay.pid, "client": os.getpid()})
        started = time.perf_counter()
        with profiled(relay.pid, args.profile and args.profile.with_suffix(f".{backend}.txt")):
            latencies, statuses = post(bodies[args.warmup :])
        elapsed = time.perf_counter() - started
        usage = meter.read()
        drained = _drain(outbox, warm, statuses[202], started, args.drain_timeout)
    if set(statuses) != {202}:
        print(f"bench.http_api: {backend}: answers other than 202: {dict(statuses)}; see {relay.log_path}")
    return {
        "backend": backend,
        "messages": args.messages,
        "connections": args.connections,
        "size": args.size,
        "raw": args.raw,
        "client": args.client,
        "statuses": {str(k): v for k, v in statuses.items()},
        "seconds": round(elapsed, 3),
        "per_second": round(statuses[202] / elapsed, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "max_ms": round(max(latencies) * 1000, 2),
        "drained": drained[0],
        "drain_per_second": drained[1],
        "usage": usage,
    }


def _drain(outbox: Path, warm: int, timed: int, started: float, timeout: float) -> tuple[int, float | None]:
    """Wait until the sandbox holds every message: (timed messages delivered, per second since the timed start)."""
    deadline = time.monotonic() + timeout
    while (count := count_files(outbox) - warm) < timed and time.monotonic() < deadline:
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    return count, round(count / elapsed, 1) if count >= timed else None


def section(results: list[dict[str, Any]], args: argparse.Namespace, command: str) -> Section:
    rows = []
    for r in results:
        name = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}[r["backend"]]
        note = f"{r['connections']} connections ({r['client']}), {r['size']} B {'raw' if r['raw'] else 'text'}"
        rows += [
            Row(f"HTTP API accept rate, durable (202 after commit), {name}", r["per_second"], "msg/s", note=note),
            Row(f"HTTP API request latency p50, {name}", r["p50_ms"], "ms"),
            Row(f"HTTP API request latency p99, {name}", r["p99_ms"], "ms"),
        ]
    lines = [
        f"| {r['backend']} | {r['per_second']} | {r['p50_ms']} | {r['p99_ms']} | {r['drain_per_second']} "
        f"| {r['usage']['relay']['cpu_share']} | {r['usage']['relay']['waiting_for_cpu_s']} "
        f"| {r['usage']['client']['cpu_s']} |"
        for r in results
    ]
    notes = (
        (__doc__ or "").split("\n\n", 2)[2].strip()
        + "\n\n| database | accepted, msg/s | p50, ms | p99, ms | end to end, msg/s | Relay CPU, share of one core "
        + "| Relay's event loop runnable but waiting for a core, s | client CPU, s |\n"
        + "|---|---|---|---|---|---|---|---|\n"
        + "\n".join(lines)
        + "\n\nNo peer: Postfix has no HTTP submission. The issue sets no target for this figure."
    )
    return Section("http", "HTTP API: POST /api/v1/messages", command, rows, notes, {"results": results})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--size", type=int, default=5000, help="body size in bytes")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--raw", action="store_true", help="post prebuilt messages in base64 instead of text")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw", help="raw: a minimal HTTP/1.1 client")
    parser.add_argument("--drain-timeout", type=float, default=120)
    parser.add_argument("--profile", type=Path, help="py-spy the Relay process during the timed phase to FILE.<db>.txt")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="relay-bench-http-") as tmp:
        workdir = Path(tmp)
        runners: dict[str, Callable[[], dict[str, Any]]] = {
            "sqlite": lambda: run("sqlite", f"sqlite:///{workdir / 'relay.db'}", workdir, args),
            "postgresql": lambda: _on_postgres(workdir, args),
        }
        for backend in args.backends.split(","):
            result = runners[backend]()
            if result:
                results.append(result)
                print(f"bench.http_api: {result}")
    command = ".venv/bin/python -m bench.http_api " + " ".join(argv if argv is not None else _argv())
    section(results, args, command.strip()).write()


def _on_postgres(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    if not postgres_reachable():
        print("bench.http_api: PostgreSQL is not reachable on 127.0.0.1:5432; skipped")
        return {}
    with fresh_postgres() as url:
        return run("postgresql", url, workdir, args)


def _argv() -> list[str]:
    import sys

    return sys.argv[1:]


if __name__ == "__main__":
    main()

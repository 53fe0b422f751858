"""End to end through an HTTP provider: SMTP in, a pool of three Mailgun workspaces out, 10 ms per provider call.

    .venv/bin/python -m bench.e2e_http                      # 3,000 messages of ~5 KB, 20 sessions, SQLite
    .venv/bin/python -m bench.e2e_http --messages 5000 --database postgresql --paced-seconds 20

Method: the Mailgun emulator of the test suite (`tests/emulators/mailgun.py`, strict about the request as the real
API documents it) runs in its own process under uvicorn, wrapped so that every `messages.mime` call waits
`--latency-ms` (10) before it is handled and every accepted message is stamped with `time.monotonic()` when the
emulator has answered it (CLOCK_MONOTONIC is one clock for every process on Linux). One `relay serve` process has
three mailgun workspaces, each with its own domain, in one `capacity_weighted` pool; the sender's domain is the
pool's pattern, so every message takes the pool path (decision, reservation, send). Limits are in memory (no
Redis), generous enough never to refuse.

A small asyncio SMTP client in this process (`bench.relayproc.submit`, each session keeping its connection)
submits messages carrying a unique `X-Bench-Seq` header and stamps the moment each `250` arrived. Accept-to-sent
latency is emulator stamp minus client stamp, matched by `X-Bench-Seq`, so it includes the provider's 10 ms.
Two phases on the same process:

1. **flood**: `--messages` over `--sessions` sessions as fast as Relay answers. Messages/s end to end = messages
   sent / (last provider acceptance - first submission). Its latency mostly measures the queue's backlog.
2. **paced**: `--paced-seconds` of an open-loop feed at `--paced-rate` (default: half the flood's end-to-end rate):
   the accept-to-sent latency of a Relay that keeps up.

CPU seconds of Relay, the emulator and this client are recorded: all three share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import Row, Section, free_port, percentile, wait_port
from bench.relayproc import (
    Meter,
    RelayServer,
    dot_stuffed,
    fresh_postgres,
    meter_table,
    postgres_reachable,
    profiled,
    relay_config,
    submit,
    wait_until,
)

SENDER = "bench@pool.e2e.bench.org"
RECIPIENT = "sink@example.org"
DOMAINS = [f"mg{n}.e2e.bench.org" for n in (1, 2, 3)]
_SEQ = re.compile(rb"^X-Bench-Seq: (\d+)\r?$", re.MULTILINE)


def serve_emulator() -> None:
    """The emulator process: `python -c 'from bench.e2e_http import serve_emulator; serve_emulator()' PORT MS`
    with the API key in RELAY_BENCH_MAILGUN_KEY. `GET /_bench/count` and `/_bench/stamps` report what it accepted."""
    import uvicorn
    from tests.emulators.mailgun import MailgunState, create_app

    port, latency = int(sys.argv[1]), float(sys.argv[2]) / 1000
    state = MailgunState(api_key=os.environ["RELAY_BENCH_MAILGUN_KEY"], domains=dict.fromkeys(DOMAINS, "active"))
    inner = create_app(state)
    stamps: list[tuple[int, float]] = []  # (X-Bench-Seq, when the emulator answered)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/_bench/"):
            body = {"count": len(stamps)} if scope["path"] == "/_bench/count" else {"stamps": stamps}
            await _json(send, body)
            return
        if scope["type"] == "http" and scope["path"].endswith("/messages.mime"):
            await asyncio.sleep(latency)
        await inner(scope, receive, send)
        now = time.monotonic()
        # Everything accepted so far and not yet stamped (one event loop: nothing runs between the copy and the
        # clear); clearing keeps memory flat, the stamps are all this benchmark needs.
        accepted, state.deliveries[:] = list(state.deliveries), []
        for delivery in accepted:
            found = _SEQ.search(delivery.mime)
            stamps.append((int(found.group(1)) if found else -1, now))

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off")


async def _json(send: Any, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class Emulator:
    def __init__(self, latency_ms: float, key: str) -> None:
        self.port = free_port()
        code = "from bench.e2e_http import serve_emulator; serve_emulator()"
        env = {**os.environ, "RELAY_BENCH_MAILGUN_KEY": key}
        root = Path(__file__).resolve().parent.parent  # `-c` imports from the working directory: bench, tests
        command = [sys.executable, "-c", code, str(self.port), str(latency_ms)]
        self.process = subprocess.Popen(command, env=env, cwd=root)
        wait_port(self.port, what="the Mailgun emulator")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as response:
            return json.loads(response.read())

    def count(self) -> int:
        return int(self._get("/_bench/count")["count"])

    def stamps(self) -> dict[int, float]:
        first: dict[int, float] = {}
        for seq, at in self._get("/_bench/stamps")["stamps"]:
            first.setdefault(int(seq), float(at))  # a message sent twice counts from its first acceptance
        return first

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def message(n: int, size: int) -> bytes:
    head = (
        f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: bench {n}\r\nMessage-ID: <e2e-{n}@pool.e2e.bench.org>\r\n"
        f"X-Bench-Seq: {n}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n"
    )
    line = f"message {n:06d}: the quick brown fox jumps over the lazy dog, again and again.\r\n"
    return dot_stuffed((head + line * max(1, size // len(line))).encode())


def workspaces(emulator_url: str) -> list[dict[str, Any]]:
    mailgun = {"api_key": "env:RELAY_BENCH_MAILGUN_KEY", "base_url": emulator_url}
    return [{"id": f"mg-{n}", "domains": [domain], "mailgun": mailgun} for n, domain in enumerate(DOMAINS, 1)]


def pool() -> dict[str, Any]:
    members = [{"workspace_id": f"mg-{n}"} for n in (1, 2, 3)]
    return {"id": "e2e", "name": "e2e", "domain_patterns": ["pool.e2e.bench.org"], "workspaces": members}


def phase(
    relay: RelayServer, emulator: Emulator, first: int, count: int, args: argparse.Namespace, rate: float | None
) -> dict[str, Any]:
    """Submit messages first..first+count-1 and wait until the emulator accepted every one Relay accepted."""
    bodies = [message(n, args.size) for n in range(first, first + count)]
    before = emulator.count()
    submitted = asyncio.run(submit(relay.smtp_port, bodies, args.sessions, SENDER, RECIPIENT, rate=rate))
    accepted = {first + i: at for i, at in enumerate(submitted.accepted_at) if at is not None}
    wait_until(lambda: emulator.count() >= before + len(accepted), args.timeout, "the emulator to get every message")
    stamps = emulator.stamps()
    latencies = [stamps[n] - at for n, at in accepted.items() if n in stamps]
    last_sent = max(stamps[n] for n in accepted if n in stamps)
    return {
        "submitted": count,
        "accepted": len(accepted),
        "refused": submitted.refused[:5],
        "sent": len(latencies),
        "accept_per_second": round(len(accepted) / (submitted.finished - submitted.started), 1),
        "end_to_end_per_second": round(len(latencies) / (last_sent - submitted.started), 1),
        "offered_per_second": rate,
        "latency_p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "latency_p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "latency_max_ms": round(max(latencies) * 1000, 1),
    }


def run(database_url: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    key = secrets.token_hex(16)
    emulator = Emulator(args.latency_ms, key)
    try:
        data = relay_config(database_url, workspaces(emulator.url), load_balancing_pools=[pool()])
        with RelayServer(data, workdir, name="relay-e2e", env={"RELAY_BENCH_MAILGUN_KEY": key}) as relay:
            phase(relay, emulator, 0, args.warmup, args, None)  # untimed: imports, connections, caches
            meter = Meter({"relay": relay.pid, "emulator": emulator.process.pid, "client": os.getpid()})
            with profiled(relay.pid, args.profile):
                flood = phase(relay, emulator, args.warmup, args.messages, args, None)
            usage = meter.read()
            rate = args.paced_rate or max(10.0, round(flood["end_to_end_per_second"] / 2))
            paced = {}
            if args.paced_seconds > 0:
                first = args.warmup + args.messages
                paced = phase(relay, emulator, first, int(rate * args.paced_seconds), args, rate)
    finally:
        emulator.stop()
    return {"flood": flood, "paced": paced, "usage_flood": usage}


def section(result: dict[str, Any], args: argparse.Namespace, backend: str, command: str) -> Section:
    flood, paced = result["flood"], result["paced"]
    setup = f"3 mailgun workspaces in a pool, {args.latency_ms:g} ms per call, {backend}"
    rows = [
        Row("End to end through an HTTP provider (flood)", flood["end_to_end_per_second"], "msg/s", note=setup),
        Row("Accept-to-sent latency p50 (flood: includes the backlog)", flood["latency_p50_ms"], "ms"),
        Row("Accept-to-sent latency p99 (flood: includes the backlog)", flood["latency_p99_ms"], "ms"),
    ]
    if paced:
        offered = f"{paced['offered_per_second']:g} msg/s offered"
        rows += [
            Row("Accept-to-sent latency p50 (paced)", paced["latency_p50_ms"], "ms", note=offered),
            Row("Accept-to-sent latency p99 (paced)", paced["latency_p99_ms"], "ms", note=offered),
        ]
    notes = (
        (__doc__ or "").split("\n\n", 2)[2].strip()
        + f"\n\nFlood: {flood['accepted']} accepted at {flood['accept_per_second']} msg/s, {flood['sent']} sent. "
        + "CPU during the flood:\n\n"
        + meter_table(result["usage_flood"])
        + "\n\nNo peer and no target rate in the issue: Postfix has no HTTP provider path."
    )
    return Section("e2e_http", "End to end through an HTTP provider", command, rows, notes, result)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=3000, help="flood phase")
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=5000, help="message size in bytes")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--latency-ms", type=float, default=10.0, help="added to every provider call")
    parser.add_argument("--paced-seconds", type=float, default=15.0, help="0 skips the paced phase")
    parser.add_argument("--paced-rate", type=float, help="msg/s; default: half the flood's end-to-end rate")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for delivery in each phase")
    parser.add_argument("--profile", type=Path, help="py-spy the Relay process during the flood to FILE")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="relay-bench-e2e-") as tmp:
        workdir = Path(tmp)
        if args.database == "postgresql":
            if not postgres_reachable():
                raise SystemExit("PostgreSQL is not reachable on 127.0.0.1:5432")
            with fresh_postgres() as url:
                result = run(url, workdir, args)
        else:
            result = run(f"sqlite:///{workdir / 'relay.db'}", workdir, args)
    print(f"bench.e2e_http: {json.dumps(result)}")
    command = " ".join([".venv/bin/python -m bench.e2e_http", *(argv if argv is not None else sys.argv[1:])])
    section(result, args, args.database, command).write()


if __name__ == "__main__":
    main()

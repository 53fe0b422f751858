"""Mail throughput with webhooks on vs off (issue 8: within 10 %), one `relay serve` process on SQLite.

    python -m bench.webhooks --messages 10000

Each run: `smtp-source` submits the messages, the sandbox provider delivers them; the run ends when every message
is delivered. With webhooks on, every event (`message.queued`, `message.sent`) is also written to the outbox in
the message's own transactions and posted to a local receiver; the post-backlog drain time is reported apart.
Ratios from one run are what to compare.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import free_port, wait_port

RECEIVER = r"""
import asyncio, sys

async def main(port, counter_path):
    count = 0

    async def handle(reader, writer):
        nonlocal count
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                count += 1
                writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def report():
        while True:
            await asyncio.sleep(0.2)
            with open(counter_path, "w") as f:
                f.write(str(count))

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    asyncio.create_task(report())
    async with server:
        await server.serve_forever()

asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
"""


class Counter:
    """A minimal HTTP/1.1 receiver in its own process (keep-alive, 204 to every POST), counting what it gets: as
    cheap as a receiver can be, so the comparison measures Relay, not the receiver."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.path = workdir / "posts.txt"
        self.process = subprocess.Popen([sys.executable, "-c", RECEIVER, str(self.port), str(self.path)])
        wait_port(self.port)

    @property
    def posts(self) -> int:
        try:
            return int(self.path.read_text() or 0)
        except (OSError, ValueError):
            return 0

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def run(webhooks: bool, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    label = "on" if webhooks else "off"
    outbox = workdir / f"outbox-{label}"
    port = free_port()
    receiver = Counter(workdir) if webhooks else None
    config: dict[str, Any] = {
        "smtp": {"port": port, "hostname": "relay.bench", "allowed_networks": ["127.0.0.0/8"]},
        "http": {"port": free_port()},
        "database_url": f"sqlite:///{workdir / f'relay-{label}.db'}",
        "workspaces": [{"id": "sandbox", "domains": ["joinmednet.org"], "sandbox": {"outbox_dir": str(outbox)}}],
        "delivery": {"concurrency": 64},
        "default_per_user_daily": 10_000_000,
        "log_level": "warning",
    }
    if receiver is not None:
        config["webhooks"] = [{"url": f"http://127.0.0.1:{receiver.port}/hooks", "secret": "bench-secret"}]
    config_path = workdir / f"relay-{label}.json"
    config_path.write_text(json.dumps(config))
    log = (workdir / f"relay-{label}.log").open("wb")
    relay = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "serve", "--config", str(config_path)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_port(port)
        started = time.perf_counter()
        subprocess.run(
            ["smtp-source", "-c", "-s", str(args.sessions), "-m", str(args.messages), "-l", str(args.size),
             "-f", "bench@joinmednet.org", "-t", "sink@example.org", f"127.0.0.1:{port}"],
            check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        accepted = time.perf_counter() - started
        deadline = time.monotonic() + 900
        while len(list(outbox.glob("*.eml"))) < args.messages and time.monotonic() < deadline:
            time.sleep(0.05)
        delivered = time.perf_counter() - started
        posts_at_delivery = receiver.posts if receiver else 0
        expected_posts = 2 * args.messages + 1  # queued and sent per message, and the workspace seeded at start
        while receiver is not None and receiver.posts < expected_posts and time.monotonic() < deadline:
            time.sleep(0.05)
        drained = time.perf_counter() - started
    finally:
        relay.terminate()
        relay.wait(timeout=30)
        log.close()
        if receiver is not None:
            final_posts = receiver.posts
            receiver.stop()
    count = len(list(outbox.glob("*.eml")))
    return {
        "webhooks": label,
        "messages": args.messages,
        "accept_per_second": round(args.messages / accepted, 1),
        "delivered": count,
        "end_to_end_per_second": round(count / delivered, 1),
        "posts": final_posts if receiver else 0,
        "posts_when_mail_done": posts_at_delivery,
        "webhooks_drained_seconds": round(drained, 2) if receiver else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=2048)
    args = parser.parse_args()
    if shutil.which("smtp-source") is None:
        raise SystemExit("smtp-source is missing: apt-get install postfix")
    with tempfile.TemporaryDirectory(prefix="relay-bench-hooks-") as tmp:
        off = run(False, Path(tmp), args)
        on = run(True, Path(tmp), args)
    for r in (off, on):
        print(
            f"webhooks {r['webhooks']:>3}: {r['messages']} messages, accepted at {r['accept_per_second']}/s, "
            f"delivered end to end at {r['end_to_end_per_second']}/s; {r['posts']} webhook posts"
            + (f" (all in {r['webhooks_drained_seconds']} s)" if r["webhooks_drained_seconds"] else "")
        )
    ratio = on["end_to_end_per_second"] / off["end_to_end_per_second"]
    print(f"end-to-end throughput with webhooks on / off: {ratio:.3f} (target: ≥ 0.90)")


if __name__ == "__main__":
    main()

"""Accept and delivery throughput of one `relay serve` process, driven by Postfix's `smtp-source`.

    make bench                       # SQLite, and PostgreSQL when it is reachable
    python -m bench.run --messages 5000 --sessions 50 --size 4096

Results are printed and written to bench/results/<timestamp>.json. Compare ratios from one run, not
absolute figures across machines. The comparison with Postfix itself belongs to the benchmarks issue.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"relay did not listen on {port}")


def postgres_url() -> str | None:
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=0.5).close()
    except OSError:
        return None
    name = f"relay_bench_{uuid.uuid4().hex[:8]}"
    subprocess.run(["psql", "-h", "127.0.0.1", "-d", "postgres", "-qc", f'CREATE DATABASE "{name}"'], check=True)
    return f"postgresql://{os.environ.get('USER', 'root')}@127.0.0.1/{name}"


def run(backend: str, database_url: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    outbox = workdir / f"outbox-{backend}"
    port = free_port()
    config = {
        "smtp": {"port": port, "hostname": "relay.bench", "allowed_networks": ["127.0.0.0/8"]},
        "http": {"port": free_port()},
        "database_url": database_url,
        "workspaces": [{"id": "sandbox", "domains": ["joinmednet.org"], "sandbox": {"outbox_dir": str(outbox)}}],
        "delivery": {"concurrency": 64},
        "log_level": "warning",
    }
    config_path = workdir / f"relay-{backend}.json"
    config_path.write_text(json.dumps(config))
    log = (workdir / f"relay-{backend}.log").open("wb")
    relay = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "serve", "--config", str(config_path)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_port(port)
        started = time.perf_counter()
        subprocess.run(
            [
                "smtp-source",
                "-c",
                "-s",
                str(args.sessions),
                "-m",
                str(args.messages),
                "-l",
                str(args.size),
                "-f",
                "bench@joinmednet.org",
                "-t",
                "sink@example.org",
                f"127.0.0.1:{port}",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        accepted = time.perf_counter() - started
        deadline = time.monotonic() + 600
        while len(list(outbox.glob("*.eml"))) < args.messages and time.monotonic() < deadline:
            time.sleep(0.05)
        delivered = time.perf_counter() - started
        count = len(list(outbox.glob("*.eml")))
    finally:
        relay.terminate()
        relay.wait(timeout=30)
        log.close()
    return {
        "backend": backend,
        "messages": args.messages,
        "sessions": args.sessions,
        "size": args.size,
        "accept_seconds": round(accepted, 3),
        "accept_per_second": round(args.messages / accepted, 1),
        "delivered": count,
        "end_to_end_per_second": round(count / delivered, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=2048, help="message size in bytes")
    args = parser.parse_args()
    if shutil.which("smtp-source") is None:
        raise SystemExit("smtp-source is missing: apt-get install postfix")
    results = []
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        workdir = Path(tmp)
        results.append(run("sqlite", f"sqlite:///{workdir / 'relay.db'}", workdir, args))
        url = postgres_url()
        if url:
            results.append(run("postgresql", url, workdir, args))
    for r in results:
        print(
            f"{r['backend']:>10}: accepted {r['messages']} in {r['accept_seconds']} s "
            f"({r['accept_per_second']}/s, {r['sessions']} sessions, {r['size']} B); "
            f"delivered {r['delivered']} end to end at {r['end_to_end_per_second']}/s"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps({"cpu_count": os.cpu_count(), "results": results}, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()

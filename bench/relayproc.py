"""Real `relay serve` processes for benchmarks, and what drives and watches them.

- `relay_config()` builds a complete config on free ports; `RelayServer` writes it, starts
  `sys.executable -m relay.cli serve --config FILE` with its output in a log file, waits until both the SMTP and
  the HTTP ports listen (failing with the log's tail if the process exits), and stops it with SIGTERM.
- `fresh_postgres()` creates a uniquely named PostgreSQL database and drops it afterwards.
- `smtp_source()` starts Postfix's `smtp-source`; `submit()` is a small asyncio SMTP client that records, per
  message, the moment its `250` after DATA arrived (for accept-to-delivery latency).
- `count_files()`, `wait_until()` and `cpu_seconds()` watch a run without sleeping blindly.

Nothing here asserts a figure: the benchmark modules measure and write their sections.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import free_port

__all__ = [
    "Meter",
    "RelayServer",
    "Submitted",
    "count_files",
    "cpu_seconds",
    "dot_stuffed",
    "fresh_postgres",
    "meter_table",
    "postgres_reachable",
    "profiled",
    "relay_config",
    "run_delay_seconds",
    "smtp_source",
    "submit",
    "summarize_profile",
    "wait_until",
]

POSTGRES_HOST = os.environ.get("RELAY_BENCH_POSTGRES_HOST", "127.0.0.1")
POSTGRES_USER = os.environ.get("RELAY_BENCH_POSTGRES_USER", os.environ.get("USER", "root"))
_TICKS = os.sysconf("SC_CLK_TCK")


def relay_config(database_url: str, workspaces: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    """A complete config with SMTP and HTTP on free loopback ports and production delivery timings.

    The per-user daily limit is raised because a benchmark sends thousands of messages from one sender; every
    other limit is whatever `overrides` say. Top-level keys in `overrides` replace the default's, except `smtp`
    and `http`, which are merged key by key."""
    data: dict[str, Any] = {
        "smtp": {
            "host": "127.0.0.1",
            "port": free_port(),
            "hostname": "relay.bench",
            "allowed_networks": ["127.0.0.0/8"],
        },
        "http": {"host": "127.0.0.1", "port": free_port()},
        "database_url": database_url,
        "workspaces": workspaces,
        "default_per_user_daily": 10_000_000,
        "log_level": "warning",
    }
    for key, value in overrides.items():
        data[key] = {**data[key], **value} if key in ("smtp", "http") else value
    return data


@dataclass
class RelayServer:
    """One `relay serve` process; use it as a context manager (stops on exit)."""

    data: dict[str, Any]
    workdir: Path
    name: str = "relay"
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def smtp_port(self) -> int:
        return int(self.data["smtp"]["port"])

    @property
    def http_port(self) -> int:
        return int(self.data["http"]["port"])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 60.0) -> RelayServer:
        config_path = self.workdir / f"{self.name}.json"
        config_path.write_text(json.dumps(self.data))
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "relay.cli", "serve", "--config", str(config_path)],
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
            )
        for port in (self.smtp_port, self.http_port):
            wait_until(functools.partial(self._listening, port), timeout, f"{self.name} to listen on {port}")
        return self

    def _listening(self, port: int) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise SystemExit(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
        return _port_open(port)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> RelayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll `predicate` until it holds; return the seconds it took. SystemExit after `timeout`."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise SystemExit(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started


def count_files(directory: Path, suffix: str = ".eml") -> int:
    """Files ending in `suffix` (the sandbox writes `.<name>.tmp` first and renames, so a count is never partial)."""
    try:
        with os.scandir(directory) as entries:
            return sum(1 for e in entries if e.name.endswith(suffix) and not e.name.startswith("."))
    except FileNotFoundError:
        return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def run_delay_seconds(pid: int) -> float:
    """Seconds the main thread of `pid` (Relay's event loop) spent runnable but waiting for a core (Linux
    schedstat): how much a busy machine held it back, as opposed to waiting on I/O or having nothing to do."""
    return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[1]) / 1e9


class Meter:
    """CPU used and time spent waiting for a core, per process, from creation to `read()`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._started = time.perf_counter()
        self._start = self._sample()

    def _sample(self) -> dict[str, tuple[float, float]]:
        return {name: (cpu_seconds(pid), run_delay_seconds(pid)) for name, pid in self.pids.items()}

    def read(self) -> dict[str, dict[str, float]]:
        """Per process: `cpu_s`, `cpu_share` (of one core, over the wall time) and `waiting_for_cpu_s`."""
        wall = time.perf_counter() - self._started
        now = self._sample()
        out = {}
        for name, (cpu, delay) in now.items():
            used, waited = cpu - self._start[name][0], delay - self._start[name][1]
            out[name] = {
                "cpu_s": round(used, 2),
                "cpu_share": round(used / wall, 2),
                "waiting_for_cpu_s": round(waited, 2),
            }
        return out


def meter_table(usage: dict[str, dict[str, float]]) -> str:
    """A markdown table of `Meter.read()`."""
    rows = [f"| {name} | {u['cpu_s']} | {u['cpu_share']} | {u['waiting_for_cpu_s']} |" for name, u in usage.items()]
    head = (
        "| process | CPU, s | share of one core | main thread runnable but waiting for a core, s |\n|---|---|---|---|\n"
    )
    return head + "\n".join(rows)


def postgres_reachable() -> bool:
    return shutil.which("psql") is not None and _port_open(5432, POSTGRES_HOST)


def _psql(statement: str) -> None:
    command = ["psql", "-h", POSTGRES_HOST, "-U", POSTGRES_USER, "-d", "postgres", "-qc", statement]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


@contextlib.contextmanager
def fresh_postgres(prefix: str = "relay_bench") -> Iterator[str]:
    """A new, empty PostgreSQL database's URL; the database is dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    _psql(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{POSTGRES_USER}@{POSTGRES_HOST}/{name}"
    finally:
        _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def smtp_source(
    port: int, messages: int, sessions: int, size: int, sender: str, recipient: str = "sink@example.org"
) -> subprocess.Popen[bytes]:
    """Start Postfix's `smtp-source` (one connection per message, as its default is); wait on the returned process."""
    if shutil.which("smtp-source") is None:
        raise SystemExit("smtp-source is missing: apt-get install postfix")
    command = ["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size), "-f", sender, "-t", recipient]
    return subprocess.Popen([*command, f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL)


@dataclass
class Submitted:
    """What `submit()` saw: per message index, the monotonic time its 250 arrived (None when it was refused)."""

    accepted_at: list[float | None]
    refused: list[str]
    started: float
    finished: float


async def _reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("the server closed the connection")
        if line[3:4] != b"-":
            return int(line[:3]), line.rstrip()


async def _session(
    port: int,
    sender: str,
    recipient: str,
    messages: Sequence[bytes],
    next_index: Callable[[], Awaitable[int | None]],
    out: Submitted,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await _reply(reader)
        writer.write(b"EHLO bench.client\r\n")
        await _reply(reader)
        commands = [f"MAIL FROM:<{sender}>\r\n".encode(), f"RCPT TO:<{recipient}>\r\n".encode(), b"DATA\r\n"]
        while (index := await next_index()) is not None:
            codes = []
            for command in commands:
                writer.write(command)
                codes.append(await _reply(reader))
            if [code for code, _ in codes] != [250, 250, 354]:
                out.refused.append(repr(codes[-1][1]))
                writer.write(b"RSET\r\n")
                await _reply(reader)
                continue
            writer.write(messages[index])
            code, line = await _reply(reader)
            if code == 250:
                out.accepted_at[index] = time.monotonic()
            else:
                out.refused.append(line.decode(errors="replace"))
        writer.write(b"QUIT\r\n")
        await writer.drain()
    finally:
        writer.close()


def dot_stuffed(message: bytes) -> bytes:
    """The DATA payload for `message` (CRLF lines), ending with the lone dot."""
    lines = message.split(b"\r\n")
    body = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)
    return body.rstrip(b"\r\n") + b"\r\n.\r\n"


async def submit(
    port: int,
    messages: Sequence[bytes],
    sessions: int,
    sender: str,
    recipient: str = "sink@example.org",
    rate: float | None = None,
) -> Submitted:
    """Send every message (already dot-stuffed, see `dot_stuffed`) over `sessions` concurrent SMTP sessions.

    Without `rate` the sessions send as fast as Relay answers (a closed loop); with `rate`, message i is released
    at `started + i / rate` to whichever session is free (an open loop, while enough sessions are free)."""
    out = Submitted([None] * len(messages), [], time.monotonic(), 0.0)
    due: asyncio.Queue[int | None] = asyncio.Queue()

    async def schedule() -> None:
        for index in range(len(messages)):
            if rate is not None and (delay := out.started + index / rate - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            due.put_nowait(index)
        for _ in range(sessions):
            due.put_nowait(None)

    sessions_done = [_session(port, sender, recipient, messages, due.get, out) for _ in range(sessions)]
    await asyncio.gather(schedule(), *sessions_done)
    out.finished = time.monotonic()
    return out


@contextlib.contextmanager
def profiled(pid: int | None, output: Path | None) -> Iterator[None]:
    """Sample `pid` with py-spy while the block runs (only the thread holding the GIL: where Python spends CPU),
    writing collapsed stacks (`--format raw`) to `output`.

    Does nothing when `output` is None. `summarize_profile()` reads the result."""
    if output is None or pid is None:
        yield
        return
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    command = [spy, "record", "--pid", str(pid), "--format", "raw", "--output", str(output), "--rate", "250", "--gil"]
    recorder = subprocess.Popen([*command, "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        recorder.wait(timeout=60)


def summarize_profile(path: Path, top: int = 25) -> str:
    """The functions with the most samples in a collapsed-stack file: inclusive (on the stack) and self (leaf)."""
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        frames = [frame.split(" (")[0] + " " + frame.rpartition("/")[2].split(":")[0] for frame in stack.split(";")]
        total += samples
        leaf[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    rows = [f"{total} samples; inclusive % / function"]
    rows += [f"{100 * n / total:5.1f}  {name}" for name, n in inclusive.most_common(top)]
    rows += ["self % / function"]
    rows += [f"{100 * n / total:5.1f}  {name}" for name, n in leaf.most_common(top)]
    return "\n".join(rows)

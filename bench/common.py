# ruff: noqa: RUF002, RUF003 (figures use the typographic ×, ≥, µ and en dashes of the docs)
"""What every benchmark shares: ports, percentiles, and the section each one writes for `bench.report`.

Each benchmark module measures one thing and writes `bench/results/latest/<section>.json`; `python -m
bench.report` turns every section there into `docs/BENCHMARKS.md`. A row is one figure: the value measured,
the peer's value from the same run when there is a peer, the ratio, the target the issue sets and whether
it holds. The notes say how it was measured and, when a target is missed, what limits it.
"""

from __future__ import annotations

import json
import math
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
LATEST = RESULTS / "latest"


@dataclass
class Row:
    measure: str  # "SMTP accept rate, durable (fsync before 250)"
    value: float | None  # Relay's figure; None when it could not be measured (say why in note)
    unit: str  # "msg/s", "µs", "MB per 1,000 workspaces", "%"
    peer: float | None = None  # the peer's figure from the same run (Postfix), if any
    peer_name: str | None = None  # "Postfix 3.7.11"
    ratio: float | None = None  # value / peer (or whatever the target compares), from this run
    target: str | None = None  # "≥ 1.5× Postfix", "≤ 20 µs"
    met: bool | None = None  # None when there is no target
    note: str = ""


@dataclass
class Section:
    section: str  # file name and anchor: "smtp", "decision", "memory", ...
    title: str
    command: str  # how to reproduce: "python -m bench.smtp --messages 10000"
    rows: list[Row] = field(default_factory=list)
    notes: str = ""  # markdown: method, setup, what limits a missed target
    details: dict[str, Any] = field(default_factory=dict)  # raw figures, kept in the JSON only
    measured_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def write(self) -> Path:
        LATEST.mkdir(parents=True, exist_ok=True)
        path = LATEST / f"{self.section}.json"
        path.write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n")
        print(f"bench: {self.title}: written to {path}")
        return path


def load_sections() -> list[Section]:
    sections = []
    for path in sorted(LATEST.glob("*.json")):
        raw = json.loads(path.read_text())
        raw["rows"] = [Row(**row) for row in raw["rows"]]
        sections.append(Section(**raw))
    return sections


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0–100), nearest rank: a value that was actually observed."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[min(len(ordered), max(1, rank)) - 1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30, what: str = "server") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on {port} within {timeout} s")

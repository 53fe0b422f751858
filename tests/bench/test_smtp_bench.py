"""`bench.smtp` end to end at a small size: a private Postfix and Relay each take smtp-source's load, accept only
and relaying to one smtp-sink, and the section names the gap to each target from that run. What `make bench` runs
at 10,000 messages; here 60, so a broken benchmark fails `make test` instead of the next benchmark run."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from bench.report import render
from bench.smtp import run_all, section

from tests.support.services import services_required

pytestmark = pytest.mark.slow


def test_the_smtp_benchmark_measures_postfix_and_relay_and_reports_each_target() -> None:
    tools = ("postfix", "smtp-source", "smtp-sink")
    if os.geteuid() != 0 or not all(shutil.which(t) or Path(f"/usr/sbin/{t}").exists() for t in tools):
        if services_required():
            pytest.fail("the SMTP benchmark needs root and Postfix (RELAY_REQUIRE_SERVICES=1)")
        pytest.skip("the SMTP benchmark needs root and Postfix")
    args = argparse.Namespace(messages=60, sessions=4, size=2000, backends=["sqlite"], drain_timeout=120.0)
    # As `bench.smtp` does: pytest's own tmp_path sits under a directory only root may enter, and the private
    # Postfix's processes run as `postfix`.
    with tempfile.TemporaryDirectory(prefix="relay-bench-test-") as tmp:
        os.chmod(tmp, 0o755)
        results = run_all(args, Path(tmp))

    assert [(r.server.split()[0], r.scenario) for r in results] == [
        ("Postfix", "accept"),
        ("Relay", "accept"),
        ("Postfix", "deliver"),
        ("Relay", "deliver"),
    ]
    for result in results:
        assert result.accept_rate > 0
        assert result.cpu_seconds > 0
        if result.scenario == "deliver":
            assert result.received is not None
            assert result.received >= 60  # every message reached the sink (the probe's too)
    page = render([section(results, args)])
    for target in ("SMTP accept rate, not delivering, SQLite", "End-to-end drain rate to smtp-sink, SQLite"):
        rows = [line for line in page.splitlines() if line.startswith(f"| {target} |")]
        assert len(rows) == 2  # in the targets table and in the section's own
        for row in rows:
            assert "Postfix" in row
            assert row.endswith(("| **met** |", "| **missed** |"))
    assert "**What limits Relay here.**" in page

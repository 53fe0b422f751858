# ruff: noqa: RUF001 (the page uses the typographic multiplication sign)
"""`make bench`'s page: every target is shown met or missed with the peer's figure from the same run, and the
private Postfix instance never listens where the machine's own would (port 25) or on another interface."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.common import Row, Section, percentile
from bench.postfix import PostfixInstance
from bench.report import render


def test_the_page_lists_every_target_met_or_missed_with_the_peer_of_the_same_run() -> None:
    smtp = Section(
        "smtp",
        "SMTP: Relay vs Postfix",
        "python -m bench.smtp",
        [
            Row("accept", 815.0, "msg/s", 1321.0, "Postfix 3.7.11", 0.62, "≥ 1.5× Postfix", False),
            Row("latency p50", 21.5, "ms", 11.4, "Postfix 3.7.11", 1.88),
        ],
        notes="**What limits Relay here.** one core",
    )
    decision = Section(
        "decision", "Routing decision", "python -m bench.decision", [Row("p99", 15.8, "µs", target="≤ 20 µs", met=True)]
    )
    page = render([decision, smtp])  # the page orders the sections itself: SMTP first

    assert "## Targets (1 of 2 met)" in page
    assert "| accept | 815 msg/s | 1,321 msg/s (Postfix 3.7.11) | 0.62× | ≥ 1.5× Postfix | **missed** |" in page
    assert "| p99 | 15.8 µs | — | — | ≤ 20 µs | **met** |" in page
    assert page.index("## SMTP: Relay vs Postfix") < page.index("## Routing decision")
    assert "**What limits Relay here.** one core" in page
    assert "latency p50" not in page.split("## SMTP")[0]  # rows without a target stay in their section


def test_percentiles_are_observed_values() -> None:
    values = [float(v) for v in range(1, 1001)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (500.0, 990.0, 1000.0)
    assert percentile([3.0], 99) == 3.0


def test_the_private_postfix_listens_on_its_own_loopback_port_and_holds_mail_when_not_delivering(
    tmp_path: Path,
) -> None:
    if not Path("/etc/postfix/master.cf").exists():
        pytest.skip("Postfix is not installed")
    holding = PostfixInstance(tmp_path, relay_to=2599, deliver=False)
    master = holding._master_cf()
    assert f"127.0.0.1:{holding.port} inet" in master
    assert not any(line.startswith("smtp inet") or line.startswith("smtp      inet") for line in master.splitlines())
    delivering = PostfixInstance(tmp_path, relay_to=2599, deliver=True)
    assert f"127.0.0.1:{delivering.port} inet" in delivering._master_cf()

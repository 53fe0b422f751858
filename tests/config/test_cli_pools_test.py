"""`relay pools test`: a dry run printing each member's weight, health, sender, capacity and status.

The pool `invite` has three sandbox workspaces: mg-1 (weight 3, `sender_rewrite: domain`, so brian@invite.com
is sent as brian@joinmednet.org), mg-2 (weight 1, at most 40 messages a day per sender) and mg-3 (listed with
`enabled: false`). The table is parsed by its header rather than matched as a whole.
"""

from __future__ import annotations

import asyncio
import json
import smtplib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from relay.store import Database
from tests.support.net import wait_for
from tests.support.relay import RelayProcess, config, sandbox_workspace

SENDER = "brian@invite.com"


def pool_config(tmp_path: Path) -> dict[str, Any]:
    mg1 = sandbox_workspace("mg-1", ["joinmednet.org"], tmp_path / "outbox-mg-1")
    mg1["load_balancing"] = {"sender_rewrite": "domain"}
    mg2 = sandbox_workspace("mg-2", ["mg-2.test"], tmp_path / "outbox-mg-2")
    mg2["rate_limits"] = {"per_user_daily": 40}
    mg3 = sandbox_workspace("mg-3", ["mg-3.test"], tmp_path / "outbox-mg-3")
    pool = {
        "id": "invite",
        "name": "Invite",
        "domain_patterns": ["invite.com"],
        "strategy": "random_weighted",
        "workspaces": [
            {"workspace_id": "mg-1", "weight": 3},
            {"workspace_id": "mg-2"},
            {"workspace_id": "mg-3", "enabled": False},
        ],
    }
    data = config(f"sqlite:///{tmp_path / 'relay.db'}", [mg1, mg2, mg3], load_balancing_pools=[pool], http={"port": 0})
    data["default_per_user_daily"] = 2000
    return data


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "relay.json"
    path.write_text(json.dumps(pool_config(tmp_path)))
    return path


def relay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay.cli", *args], capture_output=True, text=True, timeout=60)


def pools_test(config_path: Path, *args: str) -> tuple[str, dict[str, dict[str, str]]]:
    """Run the command; its first line and the table as workspace -> column -> cell."""
    result = relay("pools", "test", "invite", "--sender", SENDER, "--config", str(config_path), *args)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if "workspace" in line and "┃" in line)
    columns = [c.strip() for c in header.split("┃")[1:-1]]
    rows = {}
    for line in lines:
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == len(columns):
            rows[cells[0]] = dict(zip(columns, cells, strict=True))
    return lines[0], rows


def percent(cell: str) -> float:
    return float(cell.removesuffix("%")) / 100


def test_every_member_with_its_weight_and_status_on_a_fresh_database(config_path: Path, tmp_path: Path) -> None:
    assert not (tmp_path / "relay.db").exists()
    first, rows = pools_test(config_path)
    assert first == (
        f"pool invite (random_weighted), sender {SENDER}; "
        "pools read from the config file (the database is not set up: `relay db upgrade` creates its tables)"
    )
    assert list(rows) == ["mg-1", "mg-2", "mg-3"]
    assert [rows[ws]["weight"] for ws in rows] == ["3", "1", "1"]
    assert [rows[ws]["health"] for ws in rows] == ["healthy", "healthy", "disabled"]
    assert rows["mg-3"]["status"] == "excluded: disabled"
    assert rows["mg-3"]["score"] == "-"
    assert sorted(rows[ws]["status"] for ws in ("mg-1", "mg-2")) == ["chosen", "eligible"]
    assert float(rows["mg-1"]["score"]) > 0 and float(rows["mg-2"]["score"]) > 0
    # sender_rewrite: domain presents the sender on mg-1's primary domain; the others keep it.
    assert [rows[ws]["sends as"] for ws in rows] == ["brian@joinmednet.org", SENDER, SENDER]
    assert rows["mg-1"]["remaining"] == "2000/2000 (100%)"
    assert rows["mg-2"]["remaining"] == "40/40 (100%)"
    assert {rows[ws]["next capacity"] for ws in rows} == {"now"}
    assert "picks" not in rows["mg-1"]


def test_count_prints_picks_and_shares_near_the_expected_ones(config_path: Path) -> None:
    _, rows = pools_test(config_path, "--count", "3000")
    assert sum(int(row["picks"]) for row in rows.values()) == 3000
    assert [rows[ws]["expected"] for ws in rows] == ["75.0%", "25.0%", "-"]
    assert (rows["mg-3"]["picks"], rows["mg-3"]["share"]) == ("0", "0.0%")
    for ws in ("mg-1", "mg-2"):
        share = int(rows[ws]["picks"]) / 3000
        assert share == pytest.approx(percent(rows[ws]["share"]), abs=0.0005)
        # The binomial standard deviation is under 0.8 points here: 4 points is 5 of them.
        assert share == pytest.approx(percent(rows[ws]["expected"]), abs=0.04), rows[ws]


def test_an_unknown_pool_exits_1(config_path: Path) -> None:
    result = relay("pools", "test", "x", "--sender", SENDER, "--config", str(config_path))
    assert (result.returncode, result.stderr.strip()) == (1, 'unknown pool "x"')
    assert result.stdout == ""


def test_after_serve_the_pools_and_counters_come_from_the_database(config_path: Path, tmp_path: Path) -> None:
    serve = RelayProcess(json.loads(config_path.read_text()), tmp_path, name="serve").start()
    try:
        with smtplib.SMTP("127.0.0.1", serve.smtp_port, timeout=30) as client:
            for number in range(8):
                client.sendmail(SENDER, ["someone@dest.test"], f"Subject: {number}\r\n\r\nhello\r\n".encode())
        counted = wait_for(lambda: delivered(tmp_path, 8), timeout=15, what="8 messages in the outboxes")
    finally:
        assert serve.stop() == 0, serve.log()[-3000:]

    first, rows = pools_test(config_path)
    assert first.endswith("; pools read from the database")
    # Live counters, each under the sender the workspace presents.
    assert rows["mg-1"]["remaining"].startswith(f"{2000 - counted['mg-1']}/2000 ")
    assert rows["mg-2"]["remaining"].startswith(f"{40 - counted['mg-2']}/40 ")

    # The database, not the file (which still says 1), now sets mg-2's weight.
    asyncio.run(execute(config_path, "UPDATE pool_workspaces SET weight = 2 WHERE workspace_id = 'mg-2'"))
    _, rows = pools_test(config_path, "--count", "10")
    assert [rows[ws]["weight"] for ws in rows] == ["3", "2", "1"]
    assert [rows[ws]["expected"] for ws in rows] == ["60.0%", "40.0%", "-"]


def delivered(tmp_path: Path, total: int) -> dict[str, int] | None:
    counts = {ws: len(list((tmp_path / f"outbox-{ws}").glob("*.eml"))) for ws in ("mg-1", "mg-2", "mg-3")}
    return counts if sum(counts.values()) == total else None


async def execute(config_path: Path, statement: str) -> None:
    db = Database(json.loads(config_path.read_text())["database_url"], pool_size=1)
    try:
        async with db.begin() as connection:
            await connection.execute(sa.text(statement))
    finally:
        await db.dispose()

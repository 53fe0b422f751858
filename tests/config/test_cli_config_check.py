from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parents[2] / "examples" / "relay.json"


def relay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay.cli", *args], capture_output=True, text=True, timeout=60)


def test_config_check_accepts_the_example() -> None:
    result = relay("config", "check", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert "ok (2 workspaces, 1 pools)" in result.stdout


def test_config_check_prints_one_line_per_problem_and_exits_1(tmp_path: Path) -> None:
    data = json.loads(EXAMPLE.read_text())
    data["load_balancing_pools"][0]["workspaces"][1]["workspace_id"] = "mailgn-1"
    data["smtp"]["max_message_size"] = 10
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    result = relay("config", "check", str(path))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0] == f"invalid configuration in {path}:"
    assert lines[1:] == ["  smtp.max_message_size: Input should be greater than or equal to 1024"]


def test_serve_refuses_invalid_config_the_same_way(tmp_path: Path) -> None:
    data = json.loads(EXAMPLE.read_text())
    data["load_balancing_pools"][0]["workspaces"][1]["workspace_id"] = "mailgn-1"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    result = relay("serve", "--config", str(path))
    assert result.returncode == 1
    assert '  load_balancing_pools[0].workspaces[1].workspace_id: unknown workspace "mailgn-1"' in result.stderr


def test_config_check_refuses_an_unsupported_database_url(tmp_path: Path) -> None:
    data = json.loads(EXAMPLE.read_text())
    data["database_url"] = "oracle://scott:tiger@db.internal/relay"
    path = tmp_path / "oracle.json"
    path.write_text(json.dumps(data))
    result = relay("config", "check", str(path))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[1].startswith('  database_url: unsupported database "oracle"')
    assert "tiger" not in result.stderr

"""`relay serve` start-up failures: one line on stderr and exit status 1, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

from relay.cli import app
from tests.support.relay import config, sandbox_workspace
from tests.support.services import POSTGRES_HOST, POSTGRES_PORT, POSTGRES_USER, require


def test_a_missing_postgresql_database_is_one_line_and_exit_1(tmp_path: Path) -> None:
    require("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
    name = f"relay_missing_{uuid.uuid4().hex[:12]}"  # never created
    url = f"postgresql://{POSTGRES_USER}@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"
    path = tmp_path / "relay.json"
    path.write_text(json.dumps(config(url, [sandbox_workspace("box", ["box.test"], tmp_path / "outbox")])))
    result = subprocess.run(
        [sys.executable, "-m", "relay.cli", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("relay: cannot start: "), lines[0]
    assert name in lines[0]  # the driver's own words: database "relay_missing_…" does not exist
    assert "Traceback" not in result.stderr


def test_tracebacks_never_show_local_variables() -> None:
    # Locals of a failing frame can hold the settings with their passwords and API keys.
    assert app.pretty_exceptions_show_locals is False

"""The README's quick start, literally: a fresh clone, `make run`, a message sent with swaks, and the dashboard."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support.net import free_port, port_open, wait_for
from tests.support.services import services_required

REPO = Path(__file__).parents[2]


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        message = f"{tool} is not installed (apt-get install {'postfix' if tool == 'smtp-source' else tool})"
        if services_required():
            pytest.fail(message)
        pytest.skip(message)


@pytest.mark.slow
def test_make_run_in_a_fresh_clone_accepts_and_delivers(tmp_path: Path) -> None:
    for tool in ("git", "make", "swaks"):
        need(tool)
    clone = tmp_path / "relay"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    smtp_port, http_port = free_port(), free_port()
    env = {
        **os.environ,
        "RELAY_SMTP__PORT": str(smtp_port),
        "RELAY_HTTP__PORT": str(http_port),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    env.pop("VIRTUAL_ENV", None)
    log = (tmp_path / "make-run.log").open("wb")
    make = subprocess.Popen(
        ["make", "run"], cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:

        def listening() -> bool:
            if make.poll() is not None:
                raise AssertionError(f"make run exited with {make.returncode}:\n{_read(tmp_path)}")
            return port_open(smtp_port)

        wait_for(listening, timeout=600, interval=0.5, what="make run to create .venv, install and listen")
        swaks = subprocess.run(
            [
                "swaks",
                "--server",
                f"127.0.0.1:{smtp_port}",
                "--from",
                "brian@invite.com",
                "--to",
                "someone@example.org",
                "--auth",
                "PLAIN",
                "--auth-user",
                "app",
                "--auth-password",
                "app-password",
                "--header",
                "Subject: quick start",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        match = re.search(r"<-  250 2\.0\.0 Ok: queued as (\w+)", swaks.stdout)
        assert match, swaks.stdout + swaks.stderr
        delivered = clone / "var" / "outbox" / f"{match.group(1)}.eml"
        wait_for(delivered.exists, timeout=30, what=f"{delivered} in the sandbox outbox")
        assert b"Subject: quick start" in delivered.read_bytes()

        # The dashboard opens with the admin key `make run` made (kept in var/, never printed).
        key = (clone / "var" / "dashboard-key").read_text().strip()
        assert len(key) >= 24 and (clone / "var" / "dashboard-key").stat().st_mode & 0o077 == 0
        with httpx.Client(base_url=f"http://127.0.0.1:{http_port}") as web:
            login = web.post("/dashboard/login", data={"key": key, "next": "/dashboard/pools"})
            assert login.status_code == 303 and login.headers["location"] == "/dashboard/pools"
            pools = web.get("/dashboard/pools")
            assert pools.status_code == 200 and 'data-pool="invite-domain-pool"' in pools.text
        assert key not in _read(tmp_path)
    finally:
        os.killpg(make.pid, signal.SIGTERM)
        make.wait(timeout=30)
        log.close()


def _read(tmp_path: Path) -> str:
    return (tmp_path / "make-run.log").read_text(errors="replace")

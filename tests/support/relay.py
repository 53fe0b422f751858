"""Build Relay configs for tests and run Relay in-process or as a real `relay serve` process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from relay.config import Settings, load_settings
from relay.runtime import Relay

from .net import free_port, port_open, wait_for


def sandbox_workspace(workspace_id: str, domains: list[str], outbox: Path, **sandbox: Any) -> dict[str, Any]:
    return {"id": workspace_id, "domains": domains, "sandbox": {"outbox_dir": str(outbox), **sandbox}}


def smtp_workspace(workspace_id: str, domains: list[str], port: int, **smtp: Any) -> dict[str, Any]:
    return {"id": workspace_id, "domains": domains, "smtp": {"host": "127.0.0.1", "port": port, "tls": "none", **smtp}}


def config(database_url: str, workspaces: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    """A complete config: SMTP on a free port, no HTTP port clash, fast delivery timings for tests."""
    data: dict[str, Any] = {
        "smtp": {
            "host": "127.0.0.1",
            "port": free_port(),
            "hostname": "relay.test",
            "allowed_networks": ["127.0.0.0/8"],
        },
        "http": {"host": "127.0.0.1", "port": free_port()},
        "database_url": database_url,
        "workspaces": workspaces,
        # Tests of delivery mechanics send thousands of messages from one sender; the limits have their own tests.
        "default_per_user_daily": 1_000_000,
        "delivery": {
            "poll_interval_seconds": 0.2,
            "lease_seconds": 30,
            "send_timeout_seconds": 10,
            "retry": {"base_seconds": 0.2, "max_seconds": 2},
        },
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = _merge(data[key], value)
        else:
            data[key] = value
    return data


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def settings_from(data: dict[str, Any], tmp_path: Path) -> Settings:
    path = tmp_path / f"relay-{free_port()}.json"
    path.write_text(json.dumps(data))
    return load_settings(path)


async def start_relay(data: dict[str, Any], tmp_path: Path, **kwargs: Any) -> Relay:
    relay = Relay(settings_from(data, tmp_path), http=False, **kwargs)
    await relay.start()
    return relay


class RelayProcess:
    """`relay serve` in its own process, as an operator runs it; `kill()` is a real SIGKILL."""

    def __init__(self, data: dict[str, Any], workdir: Path, *, name: str = "relay", env: dict[str, str] | None = None):
        self.data = data
        self.workdir = workdir
        self.name = name
        self.env = {**os.environ, **(env or {})}
        self.config_path = workdir / f"{name}.json"
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def smtp_port(self) -> int:
        return int(self.data["smtp"]["port"])

    def start(self, timeout: float = 30.0) -> RelayProcess:
        self.config_path.write_text(json.dumps(self.data))
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "relay.cli", "serve", "--config", str(self.config_path)],
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        log.close()

        def listening() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.log()}")
            return port_open(self.smtp_port)

        wait_for(listening, timeout=timeout, what=f"{self.name} to listen on {self.smtp_port}")
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, exactly like a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> int | None:
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

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

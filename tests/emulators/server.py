"""Serve an ASGI app on a free loopback port, in a thread, for end-to-end tests."""

from __future__ import annotations

import threading
from typing import Any

import uvicorn

from tests.support.net import free_port, wait_for


class ServedApp:
    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off", access_log=False)
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServedApp:
        self._thread.start()
        wait_for(lambda: self._server.started, timeout=10, what="the emulator to listen")
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

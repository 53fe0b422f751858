"""The HTTP app. This stage serves the orchestrator probes; the `/api/v1` routers come later."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from fastapi.responses import JSONResponse

__all__ = ["create_app"]


def create_app(readiness: Callable[[], Awaitable[str | None]]) -> FastAPI:
    """`readiness()` returns None when ready, else the reason it is not."""
    app = FastAPI(title="Relay", version="0.1.0")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        problem = await readiness()
        if problem is None:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready", "reason": problem}, status_code=503)

    return app

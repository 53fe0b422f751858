"""The HTTP app: orchestrator probes, and the `/api/v1` routers when the runtime hands in its services."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from ..metrics import CONTENT_TYPE
from .auth import ApiKeys
from .errors import install_error_handlers
from .inbound import inbound_router
from .messages import messages_router
from .pool_writes import pool_writes_router
from .pools import pools_router
from .services import ApiServices
from .suppressions import suppressions_router
from .webhooks import webhooks_router
from .workspaces import workspaces_router

__all__ = ["create_app"]


def create_app(
    readiness: Callable[[], Awaitable[str | None]],
    services: ApiServices | None = None,
    keys: ApiKeys | None = None,
    metrics: Callable[[], Awaitable[bytes]] | None = None,
) -> FastAPI:
    """`readiness()` returns None when ready, else the reason it is not. OpenAPI at `/openapi.json`, docs at
    `/docs`."""
    app = FastAPI(title="Relay", version="0.1.0", description="SMTP relay with load-balanced provider workspaces.")
    install_error_handlers(app)

    @app.get("/healthz", tags=["probes"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["probes"])
    async def readyz() -> JSONResponse:
        problem = await readiness()
        if problem is None:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready", "reason": problem}, status_code=503)

    if metrics is not None:
        scrape = metrics

        @app.get("/metrics", tags=["probes"], response_class=Response)
        async def prometheus() -> Response:
            """Prometheus text format (no key, like the probes: bind `http.host` to a private address)."""
            return Response(await scrape(), media_type=CONTENT_TYPE)

    if services is not None:
        keys = keys if keys is not None else ApiKeys(())
        app.include_router(pools_router(services, keys))
        app.include_router(pool_writes_router(services, keys))
        app.include_router(workspaces_router(services, keys))
        app.include_router(messages_router(services.messages, services.queue, keys, services.ingress))
        if services.suppressions is not None:
            app.include_router(suppressions_router(services.suppressions, services.clock, keys))
            if services.inbound is not None:
                app.include_router(
                    inbound_router(services.settings, services.clock, services.inbound, services.suppressions)
                )
        if services.webhooks is not None:
            app.include_router(webhooks_router(services.webhooks, keys, services.webhooks_changed))
    return app

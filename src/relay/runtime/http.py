"""The HTTP side of one Relay process: the app (probes, `/metrics`, `/api/v1`, the dashboard) over the process's
parts, and the uvicorn server that serves it inside the process's event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import uvicorn
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from ..api import ApiKeys, ApiServices, create_app
from ..api.messages import Ingress
from ..config import Workspace
from ..dashboard import STATIC_DIR as DASHBOARD_STATIC
from ..dashboard import DashboardServices, dashboard_router
from ..pools import ConfigStore
from ..providers import ProviderContext, build_provider
from ..store import Activity, AuditLog, Messages, NewMessage

if TYPE_CHECKING:
    from .relay import Relay

__all__ = ["HttpServer", "http_app", "start_http_server"]


class HttpServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the Relay process owns signal handling, not uvicorn


async def start_http_server(app: FastAPI, host: str, port: int, tasks: list[asyncio.Task[None]]) -> HttpServer:
    """Serve `app` in a task appended to `tasks`; returns once it listens, or raises why it could not."""
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="off")
    server = HttpServer(config)
    tasks.append(asyncio.create_task(server.serve(), name="relay-http"))
    while not server.started:
        if tasks[-1].done():
            tasks[-1].result()  # raises the reason, e.g. the port is taken
            raise OSError(f"HTTP server on port {port} did not start")
        await asyncio.sleep(0.01)
    return server


def http_app(relay: Relay) -> FastAPI:
    audit = AuditLog(relay.db)

    async def check_provider(workspace: Workspace) -> None:
        provider = build_provider(workspace, ProviderContext(rng=relay.rng, clock=relay.clock))
        await provider.aclose()

    async def refresh_after_write() -> bool:
        await relay.live.changed_here("api")
        return True

    async def store_and_notify(message: NewMessage) -> None:
        await relay.ingest.store(message)  # on_commit wakes the delivery worker

    services = ApiServices(
        balancer=relay.balancer,
        selections=relay.selections,
        capacity_report=relay.capacity_report,
        settings=lambda: relay.settings,
        clock=relay.clock,
        pool_tables=relay.pool_tables,
        refresh_pools=refresh_after_write,
        config=ConfigStore(
            relay.db,
            relay.pool_tables,
            relay.workspace_tables,
            audit,
            lambda: relay.live.file_settings,
            provider_check=check_provider,
        ),
        audit=audit,
        webhooks=relay.webhook_store,
        webhooks_changed=relay.dispatcher.forget_endpoints,
        messages=Messages(relay.db),
        queue=relay.queue,
        ingress=Ingress(
            store_and_notify,
            relay.router.serves,
            relay.settings.smtp.max_message_size,
            relay.settings.smtp.max_recipients,
            relay.clock,
            refuses=relay.suppressions.refuses,  # suppression list (issue 8)
        ),
        suppressions=relay.suppressions,  # suppression list and inbound provider events (issue 8)
        inbound=relay.inbound,
    )
    keys = ApiKeys((k.name, k.key.get_secret_value(), k.role) for k in relay.settings.http.api_keys)
    app = create_app(relay.readiness, services, keys, metrics=relay.scrape)
    # The dashboard (issue 9): pages over the same services, and its stylesheet and script.
    dashboard = DashboardServices(services, Activity(relay.db), relay.health.health)
    app.include_router(dashboard_router(dashboard, keys))
    app.mount("/dashboard/static", StaticFiles(directory=DASHBOARD_STATIC), name="dashboard-static")
    return app

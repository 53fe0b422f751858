"""The operators' dashboard at `/dashboard` (issue 9): server-rendered pages over the same services as the API,
a login with an API key, and live regions that refresh in place."""

from fastapi import APIRouter

from ..api import ApiKeys
from .activity import activity_routes
from .capacity import capacity_routes
from .login import login_routes
from .messages import message_routes
from .overview import overview_routes
from .pools import pool_routes
from .session import Sessions
from .site import STATIC_DIR, DashboardServices, Site
from .workspaces import workspace_routes

__all__ = ["STATIC_DIR", "DashboardServices", "dashboard_router"]


def dashboard_router(services: DashboardServices, keys: ApiKeys) -> APIRouter:
    site = Site(services, Sessions(keys, services.api.clock))
    router = APIRouter(include_in_schema=False)
    for routes in (
        login_routes, overview_routes, pool_routes, workspace_routes, message_routes, capacity_routes,
        activity_routes,
    ):  # fmt: skip
        router.include_router(routes(site), prefix="/dashboard")
    return router

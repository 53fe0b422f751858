"""Logging in with an API key, and out."""

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from ..api import Caller
from .session import read_form, safe_next
from .site import Site, page, redirect

__all__ = ["login_routes"]


def login_routes(site: Site) -> APIRouter:
    router = APIRouter()
    sessions = site.sessions
    Viewer = Annotated[Caller, Depends(sessions.require("viewer"))]  # noqa: N806 (a type, used as one)

    @router.get("/login")
    async def login_page(request: Request) -> Response:
        context = {"next": safe_next(request.query_params.get("next")), "no_keys": not sessions.keys}
        return page(site.templates, request, "login.html", context)

    @router.post("/login")
    async def log_in(request: Request) -> Response:
        # The login form has no session yet, so no form token; SameSite=Strict on the cookie it sets, and a key
        # that only its holder knows, are what stand in for one.
        fields = await read_form(request)
        target = safe_next(fields.get("next"))
        caller = sessions.keys.login(fields.get("key", ""))
        if caller is None:
            return redirect(f"/dashboard/login?next={quote(target)}", "that API key is not known here", error=True)
        response = redirect(target)
        sessions.open(response, caller, secure=request.url.scheme == "https")
        return response

    @router.post("/logout")
    async def log_out(request: Request, caller: Viewer) -> Response:
        await sessions.form(request, caller)
        response = redirect("/dashboard/login", "logged out")
        sessions.close(response)
        return response

    return router

"""What every dashboard page shares: the services it reads, the templates, and rendering with the session's
caller, its form token and a one-line notice after a form was handled."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from ..api import ApiServices, Caller
from ..api.auth import allows
from ..pools import WorkspaceHealth
from ..store import Activity
from .charts import NONE, share_bars, stacked_columns
from .session import Sessions

__all__ = ["STATIC_DIR", "DashboardServices", "Site", "duration", "page", "redirect", "take_flash"]

STATIC_DIR = Path(__file__).parent / "static"
_TEMPLATES = Path(__file__).parent / "templates"
_FLASH = "relay_flash"


@dataclass(frozen=True, slots=True)
class DashboardServices:
    api: ApiServices
    activity: Activity
    health: Callable[[str], WorkspaceHealth]


def duration(seconds: float | None) -> str:
    """`3 h 12 min`, `45 s`: how far away a reset or an exhaustion is, at a glance."""
    if seconds is None:
        return NONE
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{hours // 24} d {hours % 24} h"


def _stamp(value: datetime | None) -> str:
    return NONE if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def redirect(path: str, notice: str | None = None, error: bool = False) -> Response:
    """After a form: back to a page (303, so a reload does not post again), with the outcome as a notice. The
    notice rides in a short-lived cookie, not in the address: a link from elsewhere cannot put words in the
    dashboard's mouth."""
    response = RedirectResponse(path, status_code=303)
    if notice:
        value = base64.urlsafe_b64encode(json.dumps([error, notice[:500]]).encode()).decode()
        response.set_cookie(_FLASH, value, max_age=60, httponly=True, samesite="strict", path="/dashboard")
    return response


def take_flash(request: Request, response: Response) -> tuple[str | None, str | None]:
    """The (notice, problem) a redirect left for this page, forgotten once shown."""
    value = request.cookies.get(_FLASH)
    if value is None:
        return None, None
    response.delete_cookie(_FLASH, path="/dashboard")
    try:
        error, text = json.loads(base64.urlsafe_b64decode(value.encode()))
    except (ValueError, TypeError):
        return None, None
    if not isinstance(text, str):
        return None, None
    return (None, text) if error else (text, None)


def page(templates: Jinja2Templates, request: Request, template: str, values: dict[str, Any]) -> Response:
    """A page with the notice a redirect left for it (then forgotten), never cached, never framed."""
    carrier = Response()
    notice, problem = take_flash(request, carrier)
    response = templates.TemplateResponse(request, template, {"notice": notice, "problem": problem, **values})
    response.raw_headers.extend(h for h in carrier.raw_headers if h[0] == b"set-cookie")
    # Pages show live state and carry a form token: never cache them, never frame them.
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'"
    )
    return response


class Site:
    def __init__(self, services: DashboardServices, sessions: Sessions) -> None:
        self.services = services
        self.sessions = sessions
        self.templates = Jinja2Templates(directory=_TEMPLATES)
        env = self.templates.env
        env.filters["duration"] = duration
        env.filters["stamp"] = _stamp
        env.globals["stacked_columns"] = stacked_columns
        env.globals["share_bars"] = share_bars

    def render(self, request: Request, caller: Caller, template: str, section: str, **context: Any) -> Response:
        values = {
            "caller": caller,
            "csrf": self.sessions.csrf(request, caller),
            "section": section,
            "can_operate": allows(caller, "operator"),
            "can_admin": allows(caller, "admin"),
            "now": self.services.api.clock.now(),
            **context,
        }
        return page(self.templates, request, template, values)

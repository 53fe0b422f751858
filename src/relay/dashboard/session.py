"""Dashboard sessions: the login form takes an API key and answers with a signed cookie (the key itself is never
stored in it), and every form carries a token tied to that cookie, so another site cannot post as the operator.

Cookie: `<name, base64url>.<expires, unix seconds>.<HMAC of both under the key's digest>`, HttpOnly, SameSite=Strict,
Secure behind HTTPS. It is checked against the keys of the running settings on every request, so removing or
rotating a key logs its sessions out.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import Awaitable, Callable
from typing import cast
from urllib.parse import parse_qsl, quote, urlsplit

from fastapi import HTTPException, Request, Response

from ..api import ApiKeys, Caller
from ..api.auth import Role, allows
from ..clock import Clock

__all__ = ["COOKIE", "SESSION_SECONDS", "Sessions", "read_form", "safe_next", "same_origin"]

COOKIE = "relay_session"
SESSION_SECONDS = 12 * 3600
_MAX_FORM_BYTES = 64 * 1024  # the dashboard's forms are a few fields
_TOKEN = re.compile(r"([A-Za-z0-9_-]{1,400})\.(viewer|operator|admin)\.([0-9]{1,12})\.([0-9a-f]{64})")


def _encode(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def _decode(text: str) -> str | None:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


class Sessions:
    def __init__(self, keys: ApiKeys, clock: Clock) -> None:
        self.keys = keys
        self._clock = clock

    def open(self, response: Response, caller: Caller, secure: bool) -> None:
        expires = int(self._clock.now().timestamp()) + SESSION_SECONDS
        body = f"{_encode(caller.name)}.{caller.role}.{expires}"
        mac = self.keys.sign(caller, f"session|{body}")
        assert mac is not None  # the caller came from these keys
        response.set_cookie(
            COOKIE, f"{body}.{mac}", max_age=SESSION_SECONDS, httponly=True, samesite="strict", secure=secure,
            path="/dashboard",
        )  # fmt: skip

    @staticmethod
    def close(response: Response) -> None:
        response.delete_cookie(COOKIE, path="/dashboard")

    def caller(self, request: Request) -> Caller | None:
        found = _TOKEN.fullmatch(request.cookies.get(COOKIE, ""))
        if found is None:
            return None
        encoded, role, expires, mac = found.groups()
        name = _decode(encoded)
        if name is None or int(expires) < self._clock.now().timestamp():
            return None
        holder = Caller(name, cast(Role, role))
        return self.keys.verify(holder, f"session|{encoded}.{role}.{expires}", mac)

    def csrf(self, request: Request, caller: Caller) -> str:
        """The token every form of this session carries."""
        return self.keys.sign(caller, f"csrf|{request.cookies.get(COOKIE, '')}") or ""

    def require(self, role: Role = "viewer") -> Callable[[Request], Awaitable[Caller]]:
        """A FastAPI dependency: the logged-in caller holding `role`; else a redirect to the login page (a 403
        when logged in without the role)."""

        async def dependency(request: Request) -> Caller:
            caller = self.caller(request)
            if caller is None:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                if request.method != "GET":  # a form posted after the session ended: back to its page
                    referer = urlsplit(request.headers.get("referer", ""))
                    target = safe_next(referer.path + (f"?{referer.query}" if referer.query else ""))
                raise HTTPException(303, "log in first", headers={"Location": f"/dashboard/login?next={quote(target)}"})
            if not allows(caller, role):
                raise HTTPException(403, f'this needs the "{role}" role; "{caller.name}" is a {caller.role}')
            return caller

        return dependency

    async def form(self, request: Request, caller: Caller) -> dict[str, str]:
        """The posted form's fields, once its token is checked."""
        fields = await read_form(request)
        if not hmac.compare_digest(fields.get("csrf", ""), self.csrf(request, caller)):
            raise HTTPException(403, "the form's session token does not match; reload the page and try again")
        return fields


async def read_form(request: Request) -> dict[str, str]:
    """A posted form's fields, from a same-site page, read without ever holding more than the largest form."""
    same_origin(request)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM_BYTES:
            raise HTTPException(413, "the form is too large")
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def same_origin(request: Request) -> None:
    """Refuse a form posted from another site's page (browsers send `Origin` with every POST): the login form has
    no session token yet, and for the others this is a second lock besides it."""
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host", ""):
        raise HTTPException(403, "this form was posted from another site")


def safe_next(target: str | None) -> str:
    """Only a dashboard path may be the place to go after logging in (never another site)."""
    if target and target.startswith("/dashboard") and "//" not in target and "\\" not in target:
        return target
    return "/dashboard"

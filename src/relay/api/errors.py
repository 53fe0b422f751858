"""Every API error has one shape (DESIGN.md): `{"error": {"code": "...", "message": "...", "field": "..."}}`."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ERROR_RESPONSES", "ApiError", "ErrorOut", "install_error_handlers"]

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          409: "conflict", 412: "precondition_failed", 422: "invalid", 429: "too_many_requests",
          503: "unavailable"}  # fmt: skip


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorOut(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


# Declared on every router, so the OpenAPI document says what an error looks like (and schemathesis can hold
# the API to it).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": code.replace("_", " ")}
    for status, code in {
        400: "bad_request",
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        409: "conflict",
        412: "precondition_failed",
        422: "invalid",
    }.items()
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "error")
        self.message = message
        self.field = field


def _body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return {"error": error}


def _field(location: Any) -> str:
    """`body.workspaces.2.weight` -> `workspaces[2].weight` (the config's JSON path style)."""
    parts = [p for p in location if p not in ("body", "query", "path", "header")]
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class RefuseNul:
    """No identifier or filter contains NUL, and PostgreSQL cannot even compare text with one: refuse it here
    instead of failing in the driver. A plain ASGI middleware: `@app.middleware("http")` runs every request in
    a task of its own, which cost 7 % of the CPU of a `POST /api/v1/messages`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if "\x00" in path or "%00" in path or b"%00" in scope.get("query_string", b""):
            await _refuse("NUL characters are not allowed in paths or queries")(scope, receive, send)
            return
        content_type = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
        if scope["method"] not in ("POST", "PUT", "PATCH") or b"json" not in content_type:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nothing to answer
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if b"\\u0000" in body or b"\x00" in body:
            await _refuse("NUL characters are not allowed in JSON bodies")(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:  # the route reads the body again
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _refuse(message: str) -> JSONResponse:
    return JSONResponse(_body("bad_request", message), 400)


def install_error_handlers(app: FastAPI) -> None:
    app.add_middleware(RefuseNul)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(_body(exc.code, exc.message, exc.field), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = _field(first.get("loc", ()))
        return JSONResponse(_body("invalid", str(first.get("msg")), field or None), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODES.get(exc.status_code, "error")
        # Headers kept: the dashboard's "log in first" is a 303 whose Location matters.
        headers = getattr(exc, "headers", None)
        return JSONResponse(_body(code, str(exc.detail)), status_code=exc.status_code, headers=headers)

"""Mailgun emulator: `POST /v3/{domain}/messages.mime` and `GET /v3/domains/{domain}`, as strict as the docs.

Sources (see also shared/notes/provider-apis.md §2):
- documentation.mailgun.com/docs/mailgun/api-reference/send/mailgun/messages/post-v3--domain-name--messages-mime:
  basic auth, multipart/form-data, `to` (required, repeated or comma separated) and `message` (required, the
  MIME "as a file upload"); o:, h:, v: and t: options together at most 16 KB.
- documentation.mailgun.com/docs/mailgun/user-manual/sending-messages: 25 MB maximum message size; a bad
  recipient gives 400 "… parameter is not a valid address".
- The legacy status table (api-intro): 400, 401, 402, 403, 404, 413, 429, 5xx. A wrong key is a bare 401
  (anymail tests/test_mailgun_integration.py); an unknown domain is 404 {"message": "Domain not found"}; a
  path Mailgun does not route answers 200 "Mailgun Magnificent API" (anymail backends/mailgun.py).

`create_app(state)` returns the ASGI app; `MailgunState` holds the domains, the key, every request and every
accepted delivery (envelope `to` list and raw MIME), and answers queued with `inject()` or the named
`fail_*` helpers, consumed one per matching request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import itertools
import re
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

__all__ = [
    "INVALID_ADDRESS",
    "MAX_MESSAGE_BYTES",
    "MAX_OPTIONS_BYTES",
    "Delivery",
    "Injected",
    "MailgunState",
    "RecordedRequest",
    "create_app",
]

MAX_MESSAGE_BYTES = 25 * 1024 * 1024
MAX_OPTIONS_BYTES = 16 * 1024
_OPTION_PREFIXES = ("o:", "h:", "v:", "t:")
_ADDR_SPEC = re.compile(r"^[^@\s<>(),;:\"\[\]\\]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$")

INVALID_ADDRESS = "'to' parameter is not a valid address. please check documentation"

Endpoint = Literal["messages", "domains"]


@dataclass(frozen=True)
class Delivery:
    """One accepted `messages.mime` call."""

    id: str
    domain: str
    to: list[str]  # every address from every `to` field, in order, duplicates dropped (as Mailgun does)
    to_fields: list[str]  # the `to` form values exactly as sent
    mime: bytes
    options: list[tuple[str, str]]  # o:/h:/v:/t: fields in order


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    status: int
    username: str | None  # the Basic-auth user; the password is never recorded


@dataclass(frozen=True)
class Injected:
    """An answer to give instead of the normal one. `delay` seconds pass first (a slow or hung Mailgun)."""

    status: int
    body: dict[str, Any] | str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    endpoint: Endpoint = "messages"


@dataclass
class MailgunState:
    api_key: str = "key-emulator-0123456789abcdef"
    domains: dict[str, str] = field(default_factory=lambda: {"mg.example.org": "active"})  # name -> state
    requests: list[RecordedRequest] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    pending: list[Injected] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1), repr=False)

    # -- failure injection --------------------------------------------------------------------------------------

    def inject(
        self,
        status: int,
        body: dict[str, Any] | str | None = None,
        *,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
        endpoint: Endpoint = "messages",
        times: int = 1,
    ) -> None:
        with self._lock:
            self.pending.extend([Injected(status, body, headers or {}, delay, endpoint)] * times)

    def fail_bad_request(self, message: str = INVALID_ADDRESS) -> None:
        self.inject(400, {"message": message})

    def fail_unauthorized(self) -> None:
        self.inject(401, "Forbidden")  # bare: no JSON

    def fail_payment_required(self) -> None:
        self.inject(402, {"message": "Parameters were valid but request failed. Please upgrade your plan."})

    def fail_forbidden(self) -> None:
        self.inject(403, {"message": "Forbidden"})

    def fail_domain_not_found(self) -> None:
        self.inject(404, {"message": "Domain not found"})

    def fail_too_large(self) -> None:
        self.inject(413, {"message": "Request entity too large"})

    def fail_rate_limited(self, retry_after: str | None = None) -> None:
        self.inject(429, {"message": "Too many requests"}, headers={"Retry-After": retry_after} if retry_after else {})

    def fail_server_error(self, status: int = 500, retry_after: str | None = None) -> None:
        self.inject(
            status,
            {"message": "Internal Server Error"} if status == 500 else "<html>Service unavailable</html>",
            headers={"Retry-After": retry_after} if retry_after else {},
        )

    def hang(self, seconds: float, endpoint: Endpoint = "messages") -> None:
        """Answer 200 only after `seconds`: a client with a shorter timeout sees a timeout."""
        self.inject(200, {"id": "<late@emulator>", "message": "Queued. Thank you."}, delay=seconds, endpoint=endpoint)

    def _take(self, endpoint: Endpoint) -> Injected | None:
        with self._lock:
            for index, injected in enumerate(self.pending):
                if injected.endpoint == endpoint:
                    return self.pending.pop(index)
        return None

    def _record(self, request: Request, status: int, username: str | None) -> None:
        with self._lock:
            self.requests.append(RecordedRequest(request.method, request.url.path, status, username))

    def _next_id(self, domain: str) -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
        return f"<{stamp}.{next(self._counter)}.{secrets.token_hex(8).upper()}@{domain}>"


def create_app(state: MailgunState) -> Starlette:
    async def messages_mime(request: Request) -> Response:
        return await _answer(state, request, "messages", _messages_mime)

    async def get_domain(request: Request) -> Response:
        return await _answer(state, request, "domains", _get_domain)

    async def magnificent(request: Request) -> Response:
        # Mailgun answers paths it does not route with a 200 that sends nothing.
        response = PlainTextResponse("Mailgun Magnificent API")
        state._record(request, response.status_code, None)
        return response

    return Starlette(
        routes=[
            Route("/v3/{domain}/messages.mime", messages_mime, methods=["POST"]),
            Route("/v3/domains/{domain}", get_domain, methods=["GET"]),
            Route("/{rest:path}", magnificent, methods=["GET", "POST", "PUT", "DELETE"]),
        ]
    )


async def _answer(state: MailgunState, request: Request, endpoint: Endpoint, handler: Any) -> Response:
    username = _basic_user(request)
    injected = state._take(endpoint)
    if injected is not None:
        await request.body()
        if injected.delay:
            await asyncio.sleep(injected.delay)
        response = _injected_response(injected)
    elif not _authorized(request, state.api_key):
        response = PlainTextResponse("Forbidden", status_code=401)
    elif request.path_params["domain"] not in state.domains:
        response = JSONResponse({"message": "Domain not found"}, status_code=404)
    else:
        response = await handler(state, request)
    state._record(request, response.status_code, username)
    return response


def _injected_response(injected: Injected) -> Response:
    if isinstance(injected.body, dict):
        return JSONResponse(injected.body, status_code=injected.status, headers=injected.headers)
    return PlainTextResponse(injected.body or "", status_code=injected.status, headers=injected.headers)


async def _get_domain(state: MailgunState, request: Request) -> Response:
    name = request.path_params["domain"]
    return JSONResponse(
        {
            "domain": {
                "name": name,
                "state": state.domains[name],
                "type": "custom",
                "smtp_login": f"postmaster@{name}",
                "spam_action": "disabled",
                "wildcard": False,
                "created_at": "Tue, 14 Jan 2025 10:00:00 GMT",
            },
            "receiving_dns_records": [],
            "sending_dns_records": [],
        }
    )


async def _messages_mime(state: MailgunState, request: Request) -> Response:
    domain = request.path_params["domain"]
    body = await request.body()
    content_type = request.headers.get("content-type", "")
    boundary = _boundary(content_type)
    if boundary is None:
        return _bad_request("Content-Type must be multipart/form-data (the message goes as a file upload)")
    try:
        parts = _parse_multipart(body, boundary)
    except ValueError as exc:
        return _bad_request(f"malformed multipart body: {exc}")
    to_fields = [part.text() for part in parts if part.name == "to"]
    messages = [part for part in parts if part.name == "message"]
    if not to_fields:
        return _bad_request("to parameter is missing")
    if not messages:
        return _bad_request("message parameter is missing")
    if len(messages) > 1 or messages[0].filename is None:
        return _bad_request("message parameter must be a single file upload")
    mime = messages[0].data
    if len(mime) > MAX_MESSAGE_BYTES:
        return JSONResponse({"message": "Message size exceeds the 25 MB limit"}, status_code=413)
    recipients: list[str] = []
    for value in to_fields:
        for _name, address in email.utils.getaddresses([value]):
            if not _ADDR_SPEC.match(address):
                return _bad_request(INVALID_ADDRESS)
            if address.lower() not in (r.lower() for r in recipients):
                recipients.append(address)
    if not recipients:
        return _bad_request(INVALID_ADDRESS)
    options = [(part.name, part.text()) for part in parts if part.name.startswith(_OPTION_PREFIXES)]
    if sum(len(name.encode()) + len(value.encode()) for name, value in options) > MAX_OPTIONS_BYTES:
        return _bad_request("Send options (parameters starting with o:, h:, v:, or t:) are limited to 16 KB total")
    message_id = state._next_id(domain)
    delivery = Delivery(message_id, domain, recipients, to_fields, mime, options)
    with state._lock:
        state.deliveries.append(delivery)
    return JSONResponse({"id": message_id, "message": "Queued. Thank you."})


def _bad_request(message: str) -> Response:
    return JSONResponse({"message": message}, status_code=400)


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def _basic_user(request: Request) -> str | None:
    credentials = _basic_credentials(request)
    return credentials[0] if credentials else None


def _authorized(request: Request, api_key: str) -> bool:
    credentials = _basic_credentials(request)
    if credentials is None:
        return False
    user, password = credentials
    return user == "api" and secrets.compare_digest(password.encode(), api_key.encode())


# -- multipart/form-data (RFC 7578), parsed by hand so the file part's bytes are kept exactly ---------------------


@dataclass(frozen=True)
class _Part:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes

    def text(self) -> str:
        return self.data.decode("utf-8")


def _boundary(content_type: str) -> str | None:
    header = Message()
    header["Content-Type"] = content_type
    if header.get_content_type() != "multipart/form-data":
        return None
    boundary = header.get_param("boundary")
    return boundary if isinstance(boundary, str) and boundary else None


def _parse_multipart(body: bytes, boundary: str) -> list[_Part]:
    delimiter = b"--" + boundary.encode("ascii")
    if not body.startswith(delimiter):
        raise ValueError("does not start with the boundary")
    parts: list[_Part] = []
    position = len(delimiter)
    while True:
        if body.startswith(b"--", position):
            return parts  # close-delimiter; anything after it is the epilogue
        if not body.startswith(b"\r\n", position):
            raise ValueError("boundary not followed by CRLF")
        start = position + 2
        end = body.find(b"\r\n" + delimiter, start)
        if end == -1:
            raise ValueError("missing closing boundary")
        parts.append(_parse_part(body[start:end]))
        position = end + 2 + len(delimiter)


def _parse_part(raw: bytes) -> _Part:
    head, sep, data = raw.partition(b"\r\n\r\n")
    if not sep:
        if raw.startswith(b"\r\n"):  # no headers at all
            head, data = b"", raw[2:]
        else:
            raise ValueError("part without a header block")
    headers = Message()
    for line in head.decode("utf-8").split("\r\n"):
        if line:
            name, colon, value = line.partition(":")
            if not colon:
                raise ValueError(f"bad part header {line!r}")
            headers[name.strip()] = value.strip()
    if headers.get_content_disposition() != "form-data":
        raise ValueError("part without Content-Disposition: form-data")
    field_name = headers.get_param("name", header="content-disposition")
    if not isinstance(field_name, str):
        raise ValueError("part without a name")
    return _Part(field_name, headers.get_filename(), headers.get("content-type"), data)

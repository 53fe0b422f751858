"""Mandrill (Mailchimp Transactional) API emulator: `messages/send-raw` and `users/ping2`, strict about the wire.

Written from the documentation (notes §3; Mailchimp Transactional reference for /messages/send-raw and
/users/ping2; rubydoc mandrill-api `Mandrill::Messages#send_raw`):
- JSON body only, the key in the body. No JSON (or no JSON content type) → 500 ValidationError code -1 "You must
  specify a key value" (observed, Wylio/meteor-mandrill#12); unknown key → 500 Invalid_Key "Invalid API key".
- send-raw: `raw_message` required (a string, whose UTF-8 bytes are recorded as the MIME); `to` an array of
  strings (else the To/Cc/Bcc headers are read); `from_email` a single-@ address; any other field is refused
  so a field send-raw does not have (e.g. `subaccount`, which Mandrill would silently ignore) is caught.
- 200: one entry per recipient, `{"email","status","reject_reason","queued_reason"?,"_id"?}`; over 10
  recipients, or `async`, every entry is `queued` (the documented async mode).
- Errors: HTTP 500 `{"status":"error","code","name","message"}`.

    state.answer("gone@example.org", "rejected", reject_reason="hard-bounce")   # every time
    state.answer("later@example.org", "rejected", reject_reason="soft-bounce", times=1)
    state.fail("GeneralError")                      # the next call answers 500 GeneralError
    state.fail_raw(502, "<html>Bad Gateway</html>")  # the next call answers a gateway's page
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from email.utils import getaddresses
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.mime import header_values

STATUSES = ("sent", "queued", "scheduled", "rejected", "invalid")
REJECT_REASONS = (
    "hard-bounce",
    "soft-bounce",
    "spam",
    "unsub",
    "custom",
    "invalid-sender",
    "invalid",
    "test-mode-limit",
    "unsigned",
    "rule",
)
QUEUED_REASONS = (
    "attachments",
    "multiple-recipients",
    "free-trial-sends-exhausted",
    "hourly-quota-exhausted",
    "monthly-limit-reached",
    "sending-paused",
    "sending-suspended",
    "account-suspended",
    "sending-backlogged",
)
ERROR_CODES = {  # the docs' error names; codes as in their examples where given
    "ValidationError": -2,
    "Invalid_Key": -1,
    "PaymentRequired": -1,
    "Unknown_Subaccount": 12,
    "GeneralError": -1,
    "ServiceUnavailable": -1,
}
SEND_RAW_FIELDS = frozenset(
    {"key", "raw_message", "from_email", "from_name", "to", "async", "ip_pool", "send_at", "return_path_domain"}
)
ASYNC_OVER = 10  # "messages with more than 10 recipients are always sent asynchronously"


@dataclass(frozen=True)
class RecipientAnswer:
    status: str
    reject_reason: str | None = None
    queued_reason: str | None = None


@dataclass
class Delivery:
    """One accepted send-raw call: the envelope Mandrill was given and the raw MIME, as bytes."""

    from_email: str | None
    to: list[str]
    raw: bytes
    fields: dict[str, Any]  # everything else that was sent, without the key
    results: list[dict[str, Any]]


@dataclass
class MandrillState:
    keys: set[str] = field(default_factory=lambda: {"md-test-key-0123456789"})
    deliveries: list[Delivery] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)  # paths, in order, for every request that arrived
    lock: threading.Lock = field(default_factory=threading.Lock)
    _answers: dict[str, tuple[RecipientAnswer, int | None]] = field(default_factory=dict)
    _failures: list[Response] = field(default_factory=list)

    def answer(
        self,
        email: str,
        status: str,
        *,
        reject_reason: str | None = None,
        queued_reason: str | None = None,
        times: int | None = None,
    ) -> None:
        """Answer `status` for `email` (every time, or the next `times` sends to it); only documented values."""
        assert status in STATUSES, status
        assert reject_reason is None or reject_reason in REJECT_REASONS, reject_reason
        assert queued_reason is None or queued_reason in QUEUED_REASONS, queued_reason
        with self.lock:
            self._answers[email.lower()] = (RecipientAnswer(status, reject_reason, queued_reason), times)

    def fail(self, name: str, message: str | None = None, *, code: int | None = None, times: int = 1) -> None:
        """The next `times` calls answer HTTP 500 with Mandrill's error body."""
        body = {"status": "error", "code": ERROR_CODES.get(name, -1) if code is None else code, "name": name}
        body["message"] = message or f"emulated {name}"
        with self.lock:
            self._failures.extend(JSONResponse(body, status_code=500) for _ in range(times))

    def fail_raw(self, status_code: int, text: str, *, headers: dict[str, str] | None = None, times: int = 1) -> None:
        """The next `times` calls answer something that is not Mandrill's error body (a proxy, a gateway)."""
        with self.lock:
            self._failures.extend(
                Response(text, status_code=status_code, media_type="text/html", headers=headers) for _ in range(times)
            )

    def _next_failure(self) -> Response | None:
        with self.lock:
            return self._failures.pop(0) if self._failures else None

    def _result(self, email: str) -> dict[str, Any]:
        with self.lock:
            stored = self._answers.get(email.lower())
            if stored is not None:
                answer, times = stored
                if times is not None:
                    if times <= 1:
                        del self._answers[email.lower()]
                    else:
                        self._answers[email.lower()] = (answer, times - 1)
            elif email.count("@") != 1:
                answer = RecipientAnswer("invalid")
            else:
                answer = RecipientAnswer("sent")
        result: dict[str, Any] = {"email": email, "status": answer.status, "reject_reason": answer.reject_reason}
        if answer.status == "queued":
            result["queued_reason"] = answer.queued_reason
        if answer.status != "invalid":  # "_id may be missing on invalid or rejected entries"
            result["_id"] = uuid.uuid4().hex
        return result


def _error(name: str, message: str, code: int | None = None) -> JSONResponse:
    body = {"status": "error", "code": ERROR_CODES[name] if code is None else code, "name": name, "message": message}
    return JSONResponse(body, status_code=500)


def _validation(problem: dict[str, Any]) -> JSONResponse:
    return _error("ValidationError", "Validation error: " + json.dumps(problem))


async def _authenticated(request: Request, state: MandrillState) -> dict[str, Any] | Response:
    """The JSON body with a known key, or the error Mandrill answers."""
    state.calls.append(request.url.path)
    failure = state._next_failure()
    if failure is not None:
        return failure
    body: Any = None
    if request.headers.get("content-type", "").split(";")[0].strip() == "application/json":
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
    if not isinstance(body, dict) or not body.get("key"):
        return _error("ValidationError", "You must specify a key value", code=-1)
    if body["key"] not in state.keys:
        return _error("Invalid_Key", "Invalid API key")
    return body


def create_app(state: MandrillState) -> Starlette:
    async def send_raw(request: Request) -> Response:
        body = await _authenticated(request, state)
        if isinstance(body, Response):
            return body
        unknown = sorted(set(body) - SEND_RAW_FIELDS)
        if unknown:
            return _validation(
                dict.fromkeys(unknown, "emulator: send-raw has no such field (Mandrill would ignore it)")
            )
        raw_message = body.get("raw_message")
        if not isinstance(raw_message, str) or not raw_message:
            return _validation({"raw_message": "Sorry, this field can't be left blank."})
        try:
            raw = raw_message.encode("utf-8")
        except UnicodeEncodeError:
            return _validation({"raw_message": "not valid UTF-8 text (a lone surrogate)"})
        from_email = body.get("from_email")
        if from_email is not None and (not isinstance(from_email, str) or from_email.count("@") != 1):
            return _validation({"from_email": "An email address must contain a single @"})
        to = body.get("to")
        if to is None:
            to = [a for _, a in getaddresses([v for h in ("To", "Cc", "Bcc") for v in header_values(raw, h)]) if a]
        elif not isinstance(to, list) or not all(isinstance(a, str) for a in to):
            return _validation({"to": "must be an array of strings"})
        if not to:
            return _validation({"to": "no recipients: none given and none in the To, Cc or Bcc headers"})
        if body.get("async") or len(to) > ASYNC_OVER:
            results = [{"email": a, "status": "queued", "reject_reason": None, "_id": uuid.uuid4().hex} for a in to]
        else:
            results = [state._result(a) for a in to]
        fields = {k: v for k, v in body.items() if k not in ("key", "raw_message", "from_email", "to")}
        with state.lock:
            state.deliveries.append(Delivery(from_email, list(to), raw, fields, results))
        return JSONResponse(results)

    async def ping2(request: Request) -> Response:
        body = await _authenticated(request, state)
        if isinstance(body, Response):
            return body
        return JSONResponse({"PING": "PONG!"})

    routes = [Route(f"/api/1.0/messages/send-raw{suffix}", send_raw, methods=["POST"]) for suffix in ("", ".json")] + [
        Route(f"/api/1.0/users/ping2{suffix}", ping2, methods=["POST"]) for suffix in ("", ".json")
    ]
    return Starlette(routes=routes)

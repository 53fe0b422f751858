"""What one delivery posts: Relay's JSON event, or Mandrill's form-encoded `mandrill_events` for endpoints in
`mandrill` format (a drop-in for consumers of the previous relay).

Relay format: the body is the event (`{"event", "timestamp", "data"}`) as JSON; headers `X-Relay-Event`,
`X-Relay-Event-Id` (for de-duplication: delivery is at least once) and, with a secret, `X-Relay-Signature`.

Mandrill format: `mandrill_events=<JSON array>`, one Mandrill event per recipient, Mandrill's event names —
`send`, `deferral`, `soft_bounce` (a provider's temporary refusal), `hard_bounce`, `reject` (refused before any
provider took it) — and message shape (`_id`, `ts`, `msg{_id, ts, state, email, subject, sender, tags, opens,
clicks, metadata}`), signed with `X-Mandrill-Signature`. Events Mandrill has no name for are not posted there.
"""

from __future__ import annotations

import calendar
import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from ..store import ClaimedDelivery, EndpointRow
from .endpoints import resolved_secret
from .signing import mandrill_signature, relay_signature

__all__ = ["Request", "UnsignableError", "mandrill_events", "request_for"]


class UnsignableError(Exception):
    """The endpoint has a secret this process cannot read (`env:NAME` not set): posting unsigned is not an option."""


@dataclass(frozen=True, slots=True)
class Request:
    content: bytes
    headers: dict[str, str]


def request_for(endpoint: EndpointRow, delivery: ClaimedDelivery, now: float | None = None) -> Request | None:
    """The POST for `delivery` to `endpoint`; None when the endpoint's format has nothing for this event."""
    if endpoint.format == "mandrill":
        batch = mandrill_events(delivery.payload)
        if not batch:
            return None
        fields = {"mandrill_events": json.dumps(batch, separators=(",", ":"))}
        headers = {"Content-Type": "application/x-www-form-urlencoded", "User-Agent": "Mandrill-Webhook/1.0"}
        secret = _secret(endpoint)
        if secret:
            headers["X-Mandrill-Signature"] = mandrill_signature(secret, endpoint.url, fields)
        return Request(urlencode(fields).encode(), headers)
    body = json.dumps(delivery.payload, separators=(",", ":"), sort_keys=True).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "relay-webhooks/1",
        "X-Relay-Event": delivery.event_type,
        "X-Relay-Event-Id": str(delivery.event_id),
    }
    secret = _secret(endpoint)
    if secret:
        headers["X-Relay-Signature"] = relay_signature(secret, int(now or time.time()), body)
    return Request(body, headers)


_MANDRILL_STATE = {
    "send": "sent",
    "deferral": "deferred",
    "soft_bounce": "soft-bounced",
    "hard_bounce": "bounced",
    "reject": "rejected",
}


def mandrill_events(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Relay event → Mandrill events (one per recipient), as Mandrill posts them."""
    event, data = payload.get("event"), payload.get("data") or {}
    name: str | None
    if event == "message.sent":
        name = "send"
    elif event == "message.deferred":
        name = "soft_bounce" if data.get("outcome") == "retry" else "deferral"
    elif event == "message.bounced":
        name = "hard_bounce"
    elif event == "message.failed":
        name = "hard_bounce" if data.get("workspace_id") else "reject"
    else:
        return []
    ts = _unix(str(payload.get("timestamp", "")))
    recipients = [data["recipient"]] if "recipient" in data else list(data.get("recipients") or [])
    out = []
    for email in recipients:
        msg: dict[str, Any] = {
            "_id": data.get("message_id"),
            "ts": ts,
            "state": _MANDRILL_STATE[name],
            "email": email,
            "subject": data.get("subject", ""),
            "sender": data.get("sender_email"),
            "tags": [],
            "opens": [],
            "clicks": [],
            "metadata": data.get("metadata") or {},
        }
        if name in ("hard_bounce", "soft_bounce", "reject"):
            msg["bounce_description"] = data.get("reason") or data.get("provider_status") or ""
            msg["diag"] = data.get("reason") or ""
        if name == "deferral":
            msg["smtp_events"] = [{"ts": ts, "type": "deferred", "diag": data.get("reason") or ""}]
        out.append({"event": name, "_id": data.get("message_id"), "ts": ts, "msg": msg})
    return out


def _secret(endpoint: EndpointRow) -> str | None:
    secret = resolved_secret(endpoint.secret)
    if endpoint.secret and not secret:
        raise UnsignableError(f"the endpoint's secret {endpoint.secret} is not set in this process's environment")
    return secret


def _unix(stamp: str) -> int:
    try:
        return calendar.timegm(datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").timetuple())
    except ValueError:
        return int(time.time())

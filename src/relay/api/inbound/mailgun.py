"""Mailgun's webhook POSTs: the signature and the events, read as Mailgun documents them. No I/O.

documentation.mailgun.com user-manual/webhooks: a webhook POSTs a JSON body
`{"signature": {"timestamp", "token", "signature"}, "event-data": {...}}`, one event per request.

- Securing webhooks: `signature` is the hex HMAC-SHA256 of `timestamp` followed by `token` (no separator), keyed
  with the account's HTTP webhook signing key; for a subaccount's domain a `parent-signature` computed the same
  way with the primary account's key comes along. The signature covers only the timestamp and the token, not
  the event, so a token must be good for one request only: the caller refuses a timestamp more than
  `MAX_AGE_SECONDS` away from now and a token seen before.
- Payloads: `event-data.event` is `delivered`, `failed` (with `severity` `permanent` or `temporary` and a
  `reason`), `complained`, `unsubscribed`, or one Relay does not map (`accepted`, `opened`, `clicked`, ...);
  `recipient` is the address; `message.headers.message-id` is the id the messages API answered, without its
  angle brackets (Relay records it with them: both forms are looked up).
- Retries: any answer but 200 and 406 makes Mailgun retry (5 min, 10 min, 15 min, 1 h, 2 h, 4 h).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ...store import ProviderEvent
from .values import mapping, text, when

__all__ = ["MAX_AGE_SECONDS", "event", "expected_signature", "signed_by"]

MAX_AGE_SECONDS = 15 * 60

# A permanent failure because Mailgun itself keeps the address on one of its suppression lists says why.
_SUPPRESSED_BY_MAILGUN = {"suppress-complaint": "complaint", "suppress-unsubscribe": "unsubscribe"}


def expected_signature(key: str, timestamp: str, token: str) -> str:
    return hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()


def signed_by(keys: Sequence[tuple[str, str]], signature: dict[str, Any]) -> str | None:
    """The workspace (of `keys`: (workspace id, signing key)) whose key made `signature` or its
    `parent-signature`, or None. Every key is tried, each compared in constant time."""
    timestamp, token = signature.get("timestamp"), signature.get("token")
    given = [s for s in (signature.get("signature"), signature.get("parent-signature")) if isinstance(s, str)]
    if not isinstance(timestamp, str | int) or not isinstance(token, str) or not given:
        return None
    found = None
    for workspace_id, key in keys:
        expected = expected_signature(key, str(timestamp), token).encode()
        for candidate in given:
            if hmac.compare_digest(expected, candidate.lower().encode()) and found is None:
                found = workspace_id
    return found


def event(data: dict[str, Any], workspace_id: str | None, now: datetime) -> ProviderEvent | None:
    """The Relay event of one `event-data`, or None for an event Relay does not map."""
    name = data.get("event")
    recipient = data.get("recipient")
    if not isinstance(recipient, str) or not recipient:
        return None
    message = mapping(data.get("message"))
    headers = mapping(message.get("headers"))
    details: dict[str, Any] = {"provider_event_id": text(data.get("id")), "subject": text(headers.get("subject"))}
    suppress = None
    if name == "delivered":
        relay_event = "message.delivered"
    elif name == "failed" and data.get("severity") == "permanent":
        relay_event = "message.bounced"
        reason = text(data.get("reason"))
        suppress = _SUPPRESSED_BY_MAILGUN.get(reason or "", "hard_bounce")
        details |= {"type": "hard", "reason": _failure(data), "provider_reason": reason}
    elif name == "complained":
        relay_event, suppress = "message.complained", "complaint"
    elif name == "unsubscribed":
        relay_event, suppress = "message.unsubscribed", "unsubscribe"
    else:  # temporary failures (Mailgun retries them), accepted, opened, clicked, stored, rejected, ...
        return None
    return ProviderEvent(
        provider="mailgun",
        workspace_id=workspace_id,
        event=relay_event,
        recipient=recipient,
        provider_message_ids=_ids(headers.get("message-id")),
        occurred_at=when(data.get("timestamp"), now),
        suppress=suppress,
        details={k: v for k, v in details.items() if v is not None},
    )


def _ids(value: Any) -> tuple[str, ...]:
    """Mailgun's message id as the messages API answered it (`<id>`) and as events carry it (bare)."""
    if not isinstance(value, str) or not value.strip():
        return ()
    bare = value.strip().removeprefix("<").removesuffix(">")
    return (f"<{bare}>", bare)


def _failure(data: dict[str, Any]) -> str | None:
    status = mapping(data.get("delivery-status"))
    code = status.get("code")
    said = text(status.get("description")) or text(status.get("message")) or text(data.get("reason"))
    if code not in (None, "", 0) and said:
        return f"{code} {said}"
    return said

"""Mandrill's (Mailchimp Transactional's) webhook POSTs: the signature and the events, as Mandrill documents
them. No I/O.

- "Authenticating webhook requests": `X-Mandrill-Signature` is the base64 of the HMAC-SHA1, keyed with the
  webhook's key, of the webhook's URL exactly as it was entered at Mandrill (query string included, a trailing
  slash matters) followed by every POST variable's key and value, sorted by key, with no delimiter.
- "Webhook format": a form-encoded POST with one variable, `mandrill_events`, a JSON array of up to 1000 events.
- "Message event webhook format": `event` is one of send, deferral, hard_bounce, soft_bounce, open, click, spam,
  unsub, reject; `ts` is when it happened (Unix seconds); `msg` has `_id` (the id send-raw answered for that
  recipient, which Relay records), `email` (the recipient), `subject`, `state`, and for bounces
  `bounce_description` and `diag` (the receiving server's reply). Sync events (denylist and allowlist changes)
  have `type` and `action` instead of `event` and are not mapped.
- "Introduction to webhooks": before posting to a new webhook URL Mandrill checks that it exists (a HEAD
  request), which must answer 200.

Mapping: `send` (the receiving server accepted the message: Mandrill's state `sent`) is `message.delivered`;
`hard_bounce` is `message.bounced` (type hard) and lists the recipient; `soft_bounce` (Mandrill has stopped
trying) is `message.bounced` (type soft) without listing; `spam` is `message.complained` and `unsub`
`message.unsubscribed`, each listing the recipient. `deferral` (Mandrill keeps trying), `open`, `click` and
`reject` (a refusal Relay already learnt from send-raw's answer) are not mapped.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ...store import ProviderEvent
from .values import mapping, text, when

__all__ = ["event", "expected_signature", "signed_by"]

_EVENTS: dict[str, tuple[str, str | None, str | None]] = {  # Mandrill event → (Relay event, listing, bounce type)
    "send": ("message.delivered", None, None),
    "hard_bounce": ("message.bounced", "hard_bounce", "hard"),
    "soft_bounce": ("message.bounced", None, "soft"),
    "spam": ("message.complained", "complaint", None),
    "unsub": ("message.unsubscribed", "unsubscribe", None),
}


def expected_signature(key: str, url: str, params: Sequence[tuple[str, str]]) -> str:
    signed = url + "".join(name + value for name, value in sorted(params, key=lambda pair: pair[0]))
    return base64.b64encode(hmac.new(key.encode(), signed.encode(), hashlib.sha1).digest()).decode()


def signed_by(keys: Sequence[tuple[str, str, str]], params: Sequence[tuple[str, str]], given: str) -> str | None:
    """The workspace (of `keys`: (workspace id, webhook key, webhook URL)) whose key and URL made `given`, or
    None. Every key is tried, each compared in constant time."""
    found = None
    for workspace_id, key, url in keys:
        if hmac.compare_digest(expected_signature(key, url, params).encode(), given.encode()) and found is None:
            found = workspace_id
    return found


def event(item: Any, workspace_id: str | None, now: datetime) -> ProviderEvent | None:
    """The Relay event of one element of `mandrill_events`, or None for an event Relay does not map."""
    if not isinstance(item, dict) or item.get("event") not in _EVENTS:
        return None
    relay_event, suppress, bounce = _EVENTS[item["event"]]
    msg = mapping(item.get("msg"))
    recipient = msg.get("email")
    if not isinstance(recipient, str) or not recipient:
        return None
    ids = [i for i in (msg.get("_id"), item.get("_id")) if isinstance(i, str) and i]
    details: dict[str, Any] = {"subject": text(msg.get("subject"))}
    if bounce is not None:
        details |= {"type": bounce, "reason": text(msg.get("diag")) or text(msg.get("bounce_description"))}
        details["provider_reason"] = text(msg.get("bounce_description"))
    return ProviderEvent(
        provider="mandrill",
        workspace_id=workspace_id,
        event=relay_event,
        recipient=recipient,
        provider_message_ids=tuple(dict.fromkeys(ids)),
        occurred_at=when(item.get("ts"), now),
        suppress=suppress,
        details={k: v for k, v in details.items() if v is not None},
    )

"""Signatures of outbound webhook posts.

Relay's own: `X-Relay-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` — the receiver recomputes
it with the shared secret, compares in constant time, and refuses a `t` too far from its clock (replay).

Mandrill's, for consumers of the previous relay (Mandrill's "Authenticating webhook requests"): the base64 of an
HMAC-SHA1, keyed with the webhook key, of the webhook URL exactly as registered followed by every POST field name
and value, sorted by name, all concatenated.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping

__all__ = ["mandrill_signature", "relay_signature"]


def relay_signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def mandrill_signature(key: str, url: str, fields: Mapping[str, str]) -> str:
    signed = url + "".join(name + fields[name] for name in sorted(fields))
    return base64.b64encode(hmac.new(key.encode(), signed.encode(), hashlib.sha1).digest()).decode()

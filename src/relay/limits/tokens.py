"""Reservation tokens: self-describing, opaque strings that say exactly what a reservation counted.

A token names the backend, a random id (so `release` can be made idempotent), and one `Hold` per limit:
which counter (rolling bucket index, calendar date), how much was added (units, or microseconds of TAT for
gcra) and until when giving it back still changes anything. `release` therefore needs no server-side
record of the reservation. The encoding is base64url(JSON); callers must treat it as opaque.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast, get_args

from .types import LimitKind

__all__ = ["Hold", "Ticket", "decode", "encode"]

_VERSION = "1"


@dataclass(frozen=True, slots=True)
class Hold:
    """What one reservation added to one counter."""

    kind: LimitKind
    key: str  # the limit key, without any backend prefix
    amount: int  # units (rolling, calendar) or microseconds of TAT (gcra)
    where: str  # rolling: the bucket index; calendar: the ISO local date; gcra: ""
    until_us: int  # after this instant, releasing changes nothing (the units no longer count)


@dataclass(frozen=True, slots=True)
class Ticket:
    backend: str
    id: str
    holds: tuple[Hold, ...]


def encode(backend: str, holds: Sequence[Hold]) -> str:
    body = {"i": secrets.token_hex(12), "h": [[h.kind, h.key, h.amount, h.where, h.until_us] for h in holds]}
    raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return f"{backend}{_VERSION}.{base64.urlsafe_b64encode(raw).decode().rstrip('=')}"


def decode(token: str, backend: str) -> Ticket:
    """Parse a token issued by `backend`. ValueError for anything else."""
    head, dot, payload = token.partition(".")
    if not dot or head != f"{backend}{_VERSION}":
        raise ValueError(f"not a {backend} reservation token")
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        body = cast(dict[str, Any], json.loads(raw))
        holds = tuple(_hold(item) for item in body["h"])
        ident = body["i"]
    except (binascii.Error, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed {backend} reservation token") from exc
    if not isinstance(ident, str) or not ident:
        raise ValueError(f"malformed {backend} reservation token")
    return Ticket(backend, ident, holds)


def _hold(item: Any) -> Hold:
    kind, key, amount, where, until = item
    if kind not in get_args(LimitKind) or not isinstance(key, str) or not isinstance(where, str):
        raise ValueError("bad hold")
    if type(amount) is not int or type(until) is not int or amount < 0:
        raise ValueError("bad hold")
    return Hold(kind, key, amount, where, until)

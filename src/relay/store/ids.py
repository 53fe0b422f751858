"""Queue ids: 26-character, time-ordered, unique across processes (the ULID layout, Crockford base32)."""

from __future__ import annotations

import os
import time

__all__ = ["new_message_id"]

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_message_id() -> str:
    """48 bits of milliseconds then 80 random bits: sorts by arrival, no coordination needed."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        value, index = divmod(value, 32)
        chars.append(_ALPHABET[index])
    return "".join(reversed(chars))

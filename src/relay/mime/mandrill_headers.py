"""Mandrill-style `X-MC-*` headers: parsed into message metadata at ingress, removed before delivery."""

from __future__ import annotations

import json
from typing import Any

from .headers import header_values

__all__ = ["PRIVATE_HEADERS", "PRIVATE_PREFIXES", "extract_metadata"]

# Never reach a recipient: Bcc (RFC 5322 §3.6.3) and the instructions meant for the relay only.
PRIVATE_HEADERS: tuple[str, ...] = ("Bcc", "Resent-Bcc", "X-MC-Tags", "X-MC-Metadata")
# Every `X-MC-*` field is an instruction to a relay (Mandrill reads them: X-MC-BccAddress adds a recipient,
# X-MC-Subaccount picks an account), never content: a client must not steer a workspace through them.
PRIVATE_PREFIXES: tuple[str, ...] = ("X-MC-",)


def extract_metadata(raw: bytes) -> dict[str, Any]:
    """`{"tags": [...], "metadata": {...}}` from `X-MC-Tags` (JSON array or comma list) and `X-MC-Metadata`."""
    result: dict[str, Any] = {}
    tags: list[str] = []
    for value in header_values(raw, "X-MC-Tags"):
        tags.extend(_parse_tags(value))
    if tags:
        result["tags"] = list(dict.fromkeys(tags))
    metadata: dict[str, Any] = {}
    for value in header_values(raw, "X-MC-Metadata"):
        try:
            parsed = _strict_json(value)
        except ValueError:
            result.setdefault("invalid_headers", []).append("X-MC-Metadata")
            continue
        if isinstance(parsed, dict):
            metadata.update(parsed)
        else:
            result.setdefault("invalid_headers", []).append("X-MC-Metadata")
    if metadata:
        result["metadata"] = metadata
    return result


def _parse_tags(value: str) -> list[str]:
    if value.startswith("["):
        try:
            parsed = _strict_json(value)
        except ValueError:
            parsed = None
        if isinstance(parsed, list):
            return [str(t).strip() for t in parsed if str(t).strip()]
    return [t.strip() for t in value.split(",") if t.strip()]


def _strict_json(value: str) -> Any:
    """JSON that every database accepts: no NaN or Infinity, bounded nesting. Raises ValueError."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    try:
        return json.loads(value, parse_constant=refuse)
    except RecursionError:  # a header of thousands of nested brackets
        raise ValueError("nested too deeply") from None

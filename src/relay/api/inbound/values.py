"""Reading loosely typed provider JSON: a value is used only when it has the documented type. No I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

__all__ = ["mapping", "text", "when"]


def when(value: Any, now: datetime) -> datetime:
    """Unix seconds (an int or a float) as a time; `now` for anything else."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            return now
    return now


def text(value: Any, limit: int = 1000) -> str | None:
    """A non-blank string, trimmed and cut to `limit` characters; None for anything else."""
    return (value.strip()[:limit] or None) if isinstance(value, str) else None


def mapping(value: Any) -> dict[str, Any]:
    """A JSON object as a dict; an empty one for anything else."""
    return value if isinstance(value, dict) else {}

"""The database holds naive UTC timestamps; the rest of Relay uses aware ones."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["from_db", "to_db"]


def to_db(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None)


def from_db(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC)

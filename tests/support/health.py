"""Workspace health in end-to-end tests (issue 6): health config, `workspace.health_changed` events, exclusions."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from relay.store import AttemptView

from .services import redis_keys

HEALTH_CHANGED = "workspace.health_changed"


@contextmanager
def redis_run() -> Iterator[str]:
    """An id for this run's workspace ids, so that its breaker, lease and limit keys in the shared Redis are its
    own (they all contain the workspace id); every key containing it is deleted afterwards. Skips without Redis."""
    run = uuid.uuid4().hex[:10]
    with redis_keys(f"*{run}*"):
        yield run


def with_health(workspace: dict[str, Any], **health: Any) -> dict[str, Any]:
    """`workspace` with its `health` section set to `health` (the rest at their defaults)."""
    return {**workspace, "health": dict(health)}


def changes(events: Iterable[Mapping[str, Any]], workspace_id: str) -> list[tuple[str, str]]:
    """(old, new) of every `workspace.health_changed` event of `workspace_id`, in order."""
    return [
        (e["old"], e["new"])
        for e in events
        if e.get("event") == HEALTH_CHANGED and e.get("workspace_id") == workspace_id
    ]


def json_events(log: str) -> list[dict[str, Any]]:
    """The JSON log lines of a `relay serve` process with `log_format: json`, parsed."""
    events = []
    for line in log.splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:  # a line being written while we read
                continue
    return events


def logged_at(event: Mapping[str, Any]) -> datetime:
    """When a JSON log event was written (structlog's ISO UTC timestamp)."""
    return datetime.fromisoformat(event["timestamp"])


def exclusion(attempt: AttemptView, workspace_id: str) -> str | None:
    """Why the decision behind `attempt` left `workspace_id` out (None: it was a candidate, or no decision)."""
    if attempt.selection is None:
        return None
    reason = attempt.selection.get("excluded", {}).get(workspace_id)
    return str(reason) if reason is not None else None

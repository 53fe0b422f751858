"""Events and audit: the latest events (by type), and the configuration audit log (by target) with each entry's
changed fields, before and after. Audit documents can hold a workspace's literal secrets: every value shown comes
from the documents masked by `relay.config.documents.redact` (a rotated secret shows as a change between masks).

No `from __future__ import annotations`: FastAPI reads these annotations at definition time (see api/pools.py).
"""

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from ..api import Caller
from ..config.documents import SECRET_MASK, redact
from ..store import EVENT_TYPES
from .site import Site

__all__ = ["Change", "activity_routes", "changes", "compact", "flatten", "parse_target", "short"]

EVENTS_SHOWN = 100
AUDIT_SHOWN = 100
_FIELDS_SHOWN = 8  # of an event's payload
_CHANGES_SHOWN = 12  # of an audit entry (a created workspace has a few dozen fields)
_VALUE_CHARS = 80
_ABSENT = object()
_KEYS = ("workspace_id", "id")  # list items named by one of these are compared by it, not by position


@dataclass(frozen=True, slots=True)
class Change:
    field: str  # a dotted path: `smtp.port`, `workspaces[ws-b].weight`
    before: str  # "—" when the field was not there
    after: str


def short(value: Any) -> str:
    """A value in at most 80 characters: text as is, lists joined, anything else as compact JSON."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        text = ", ".join(str(v) for v in value)
    else:
        text = json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False)
    return text if len(text) <= _VALUE_CHARS else text[: _VALUE_CHARS - 1] + "…"


def compact(payload: Mapping[str, Any]) -> tuple[list[tuple[str, str]], int]:
    """An event's data as (field, short value) pairs, empty ones and the message id (the row links to it) left
    out, at most 8; and how many more there were."""
    data = payload.get("data", payload)
    if not isinstance(data, Mapping):
        return [("data", short(data))], 0
    pairs = [
        (str(key), short(value))
        for key, value in data.items()
        if key != "message_id" and value not in (None, "", [], {})
    ]
    return pairs[:_FIELDS_SHOWN], max(len(pairs) - _FIELDS_SHOWN, 0)


def flatten(document: Mapping[str, Any] | None) -> dict[str, Any]:
    """A document as dotted paths to its leaves: `smtp.port`; a list of named items (pool members) by name,
    `workspaces[ws-b].weight`; any other list is one value."""
    if document is not None and not isinstance(document, Mapping):
        return {"(document)": document}
    out: dict[str, Any] = {}
    for key, item in (document or {}).items():
        _flatten(item, str(key), out)
    return out


def _flatten(value: Any, path: str, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            _flatten(item, f"{path}.{key}", out)
    elif isinstance(value, list) and value and all(_key_of(item) for item in value):
        for item in value:
            name, ident = _key_of(item) or ("", "")
            _flatten({k: v for k, v in item.items() if k != name}, f"{path}[{ident}]", out)
    else:
        out[path] = value


def _key_of(item: Any) -> tuple[str, str] | None:
    """The field naming a list item (a pool member's `workspace_id`), and its value."""
    if isinstance(item, Mapping):
        for name in _KEYS:
            if isinstance(item.get(name), str):
                return name, item[name]
    return None


def changes(
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    mask: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
) -> tuple[list[Change], int]:
    """The fields that differ between two documents, in document order, at most 12; and how many more there
    were. A created document lists all its fields (before "—"), a deleted one likewise (after "—").

    With `mask`, the documents are compared as they are but shown as `mask` makes them: a rotated secret is a
    changed field whose values both show masked. A field the masked document lacks shows as the mask."""
    old, new = flatten(before), flatten(after)
    shown_old = flatten(mask(before)) if mask is not None and isinstance(before, Mapping) else old
    shown_new = flatten(mask(after)) if mask is not None and isinstance(after, Mapping) else new
    found = [
        Change(name, _shown(name, old, shown_old), _shown(name, new, shown_new))
        for name in dict.fromkeys([*old, *new])
        if old.get(name, _ABSENT) != new.get(name, _ABSENT)
    ]
    return found[:_CHANGES_SHOWN], max(len(found) - _CHANGES_SHOWN, 0)


def _shown(name: str, document: Mapping[str, Any], shown: Mapping[str, Any]) -> str:
    if name not in document:
        return "—"
    return short(shown[name]) if name in shown else SECRET_MASK


def parse_target(text: str) -> tuple[str | None, str | None]:
    """`pool:invite` → ("pool", "invite"); `workspace` → ("workspace", None); "" → (None, None)."""
    kind, _, ident = text.strip().partition(":")
    return (kind[:32] or None), (ident[:255] or None)


def activity_routes(site: Site) -> APIRouter:
    router = APIRouter()
    Viewer = Annotated[Caller, Depends(site.sessions.require("viewer"))]  # noqa: N806 (a type, used as one)
    api = site.services.api

    @router.get("/activity")
    async def activity(request: Request, caller: Viewer) -> Response:
        params = request.query_params
        event_type = params.get("type", "")
        event_type = event_type if event_type in EVENT_TYPES else ""
        found = await site.services.activity.events(types=(event_type,) if event_type else (), limit=EVENTS_SHOWN)
        events = [{"e": e, "fields": compact(e.payload)} for e in found]
        target = params.get("target", "")[:300]
        target_type, target_id = parse_target(target)
        entries = await api.audit.entries(target_type=target_type, target_id=target_id, limit=AUDIT_SHOWN)
        # Compared as stored, shown masked: no literal secret reaches the page.
        audit = [{"e": e, "changes": changes(e.before, e.after, mask=redact)} for e in entries]
        return site.render(
            request, caller, "activity.html", "activity",
            event_types=EVENT_TYPES,
            event_type=event_type,
            events=events,
            target=target if target_type else "",
            audit=audit,
        )  # fmt: skip

    return router

"""Values the store hands in and out. Frozen dataclasses; tables never leave `store/`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

__all__ = [
    "AttemptRecord",
    "Deferred",
    "Failed",
    "MessageStatus",
    "NewMessage",
    "QueuedMessage",
    "Sent",
    "Transition",
    "WorkspaceState",
]

MessageStatus = Literal["queued", "sending", "deferred", "sent", "failed"]


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message accepted from a client, before it is stored."""

    id: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    raw: bytes
    received_at: datetime
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = "smtp"
    client_address: str | None = None
    authenticated_user: str | None = None
    idempotency_key: str | None = None  # API sends: a repeated key within 24 h is the same message
    resent_from: str | None = None  # a resend: the id of the message this one copies


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A message claimed by one worker; `lease_owner` proves the claim when the outcome is written."""

    id: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    pending_rcpts: tuple[str, ...]
    raw: bytes
    attempts: int
    temp_failures: int
    created_at: datetime
    metadata: dict[str, Any]
    lease_owner: str


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One try to hand a message to one workspace, as written to `delivery_attempts`."""

    workspace_id: str | None
    provider_kind: str | None
    started_at: datetime
    finished_at: datetime
    outcome: str
    provider_status: str | None = None
    provider_response: str | None = None
    provider_message_id: str | None = None
    recipients: dict[str, str] | None = None  # per-recipient result, when the provider gives one
    pool_id: str | None = None  # the load-balancing pool that chose `workspace_id`, if one did
    selection: dict[str, Any] | None = None  # that choice's evidence (strategy, scores, candidates)
    sent_as: str | None = None  # the envelope sender actually used, when it was rewritten for the workspace
    # Recipients the provider refused for good in this attempt, with why (`message.bounced` events; not a column).
    rejected_recipients: dict[str, str] = field(default_factory=dict)

    @property
    def latency_ms(self) -> int:
        return max(0, round((self.finished_at - self.started_at).total_seconds() * 1000))


@dataclass(frozen=True, slots=True)
class Sent:
    """Delivered; `note` records recipients the provider refused for good, if any."""

    note: str | None = None


@dataclass(frozen=True, slots=True)
class Deferred:
    """Back to the queue until `until`; `pending_rcpts` narrows who is still to receive it."""

    until: datetime
    reason: str
    pending_rcpts: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    reason: str


Transition = Sent | Deferred | Failed


@dataclass(frozen=True, slots=True)
class WorkspaceState:
    id: str
    state: Literal["active", "broken", "paused"]
    reason: str | None
    changed_at: datetime
    recheck_at: datetime | None

"""What goes into a provider and what comes out. Frozen values, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Health", "OutboundMessage", "Outcome", "OutcomeKind"]

# sent: accepted by the provider. retry: temporary, try later. quota: a rate or daily limit was hit.
# auth: credentials or account refused, the workspace is broken. permanent: this message can never go.
OutcomeKind = Literal["sent", "retry", "quota", "auth", "permanent"]


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """A message ready to leave: private headers already removed, recipients already narrowed."""

    id: str
    mail_from: str
    recipients: tuple[str, ...]
    data: bytes


@dataclass(frozen=True, slots=True)
class Outcome:
    """The provider's answer, classified. `retry_recipients` narrows a partial success to who is left."""

    kind: OutcomeKind
    status: str | None = None  # the provider's own code: SMTP reply code, HTTP status, API error name
    response: str = ""
    provider_message_id: str | None = None
    retry_after: float | None = None  # seconds, when the provider said how long to wait
    retry_recipients: tuple[str, ...] = ()
    rejected_recipients: dict[str, str] = field(default_factory=dict)
    # What the provider said about each recipient when it says it per recipient (Mandrill):
    # recipient -> "sent" | "queued" | "scheduled" | "rejected: <reason>" | "invalid" | ...
    recipient_results: dict[str, str] = field(default_factory=dict)
    # Seconds the whole workspace should get no new mail: an account-level quota was reached even though this
    # message was taken (Mandrill holds it). Unlike `retry_after`, this is about the workspace, not the message.
    workspace_wait: float | None = None
    # Whose quota a `quota` outcome is about: the whole workspace (the default: the worker pauses it until the
    # wait is over), or only this sender (Gmail's per-user limits: only this message waits).
    quota_scope: Literal["workspace", "sender"] = "workspace"


@dataclass(frozen=True, slots=True)
class Health:
    """An active check's answer. `auth`: the failure is refused credentials (the workspace is auth-broken,
    not merely unreachable)."""

    ok: bool
    detail: str = ""
    auth: bool = False

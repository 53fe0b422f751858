"""Providers: one module per kind behind one interface, `send(message) -> Outcome` and `check() -> Health`."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from ..clock import Clock, SystemClock
from ..config import SandboxSettings, UpstreamSmtpSettings, Workspace
from ..errors import ProviderError
from .base import Provider
from .gmail import GmailProvider
from .mailgun import MailgunProvider, sending_domain
from .mandrill import MandrillProvider
from .sandbox import SandboxProvider
from .smtp import SmtpProvider
from .smtp_replies import classify_reply, enhanced_code
from .types import Health, OutboundMessage, Outcome, OutcomeKind

__all__ = [
    "PROVIDERS",
    "Health",
    "OutboundMessage",
    "Outcome",
    "OutcomeKind",
    "Provider",
    "ProviderContext",
    "SandboxProvider",
    "SmtpProvider",
    "build_provider",
    "classify_reply",
    "enhanced_code",
]


@dataclass(frozen=True, slots=True)
class ProviderContext:
    """What a provider may need besides its config section: chance and time, injected."""

    rng: random.Random = field(default_factory=random.Random)
    clock: Clock = field(default_factory=SystemClock)


def _smtp(workspace: Workspace, _context: ProviderContext) -> Provider:
    assert isinstance(workspace.provider, UpstreamSmtpSettings)
    return SmtpProvider(workspace.id, workspace.provider)


def _sandbox(workspace: Workspace, context: ProviderContext) -> Provider:
    assert isinstance(workspace.provider, SandboxSettings)
    return SandboxProvider(workspace.id, workspace.provider, context.rng)


def _mailgun(workspace: Workspace, context: ProviderContext) -> Provider:
    settings = workspace.mailgun
    assert settings is not None
    return MailgunProvider(workspace.id, settings, sending_domain(workspace, settings), clock=context.clock)


def _mandrill(workspace: Workspace, context: ProviderContext) -> Provider:
    assert workspace.mandrill is not None
    return MandrillProvider(workspace.id, workspace.mandrill, clock=context.clock)


def _gmail(workspace: Workspace, context: ProviderContext) -> Provider:
    assert workspace.gmail is not None
    return GmailProvider(workspace.id, workspace.gmail, domains=workspace.all_domains, clock=context.clock)


# One line per provider kind; the kinds match the config's provider section names.
PROVIDERS: dict[str, Callable[[Workspace, ProviderContext], Provider]] = {
    "smtp": _smtp,
    "sandbox": _sandbox,
    "gmail": _gmail,
    "mailgun": _mailgun,
    "mandrill": _mandrill,
}


def build_provider(workspace: Workspace, context: ProviderContext | None = None) -> Provider:
    factory = PROVIDERS.get(workspace.provider.kind)
    if factory is None:
        raise ProviderError(
            f'workspace "{workspace.id}": provider kind "{workspace.provider.kind}" is not available in this '
            f"version (available: {', '.join(sorted(PROVIDERS))})"
        )
    return factory(workspace, context or ProviderContext())

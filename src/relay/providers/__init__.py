"""Providers: one module per kind behind one interface, `send(message) -> Outcome` and `check() -> Health`."""

from __future__ import annotations

import random
from collections.abc import Callable

from ..config import SandboxSettings, UpstreamSmtpSettings, Workspace
from ..errors import ProviderError
from .base import Provider
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
    "SandboxProvider",
    "SmtpProvider",
    "build_provider",
    "classify_reply",
    "enhanced_code",
]


def _smtp(workspace: Workspace, _rng: random.Random) -> Provider:
    assert isinstance(workspace.provider, UpstreamSmtpSettings)
    return SmtpProvider(workspace.id, workspace.provider)


def _sandbox(workspace: Workspace, rng: random.Random) -> Provider:
    assert isinstance(workspace.provider, SandboxSettings)
    return SandboxProvider(workspace.id, workspace.provider, rng)


# One line per provider kind; the kinds match the config's provider section names.
PROVIDERS: dict[str, Callable[[Workspace, random.Random], Provider]] = {
    "smtp": _smtp,
    "sandbox": _sandbox,
}


def build_provider(workspace: Workspace, rng: random.Random | None = None) -> Provider:
    factory = PROVIDERS.get(workspace.provider.kind)
    if factory is None:
        raise ProviderError(
            f'workspace "{workspace.id}": provider kind "{workspace.provider.kind}" is not available in this '
            f"version (available: {', '.join(sorted(PROVIDERS))})"
        )
    return factory(workspace, rng or random.Random())

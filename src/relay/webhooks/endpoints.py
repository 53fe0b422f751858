"""The config file's `webhooks` as endpoint rows (the database's `webhook_endpoints` is what the dispatcher reads).

A secret given as `env:NAME` is stored as that reference and read from the environment of the process that posts;
a literal one is stored as given. Without an `id`, an endpoint is named after its URL, so the same entry keeps its
delivery log across restarts.
"""

from __future__ import annotations

import hashlib
import os

from ..config import Settings, Webhook
from ..store import EndpointRow

__all__ = ["endpoint_id", "endpoints_from_settings", "resolved_secret"]


def endpoint_id(webhook: Webhook) -> str:
    return webhook.id or "wh-" + hashlib.sha256(str(webhook.url).encode()).hexdigest()[:12]


def endpoints_from_settings(settings: Settings) -> list[EndpointRow]:
    rows = []
    for webhook in settings.webhooks:
        secret = None
        if webhook.secret is not None:
            secret = getattr(webhook.secret, "reference", None) or webhook.secret.get_secret_value()
        rows.append(
            EndpointRow(
                id=endpoint_id(webhook),
                url=str(webhook.url),
                secret=secret,
                events=tuple(webhook.events),
                format=webhook.format,
                workspace_selected_sample=webhook.workspace_selected_sample,
                enabled=webhook.enabled,
            )
        )
    return rows


def resolved_secret(stored: str | None) -> str | None:
    """The secret to sign with: an `env:NAME` reference read now, from this process's environment."""
    if stored is not None and stored.startswith("env:"):
        return os.environ.get(stored[4:]) or None
    return stored

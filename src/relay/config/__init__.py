"""Configuration: pydantic models for the config file, `RELAY_*` overrides, validation with JSON paths."""

from .checks import MAX_POOL_MEMBERS, MAX_POOLS
from .domains import normalize_domain, normalize_pattern
from .loader import json_path, load_settings, validation_problems
from .models import (
    ApiKey,
    DeliverySettings,
    HealthSettings,
    HttpSettings,
    Pool,
    PoolMember,
    RateLimits,
    RetryPolicySettings,
    SenderRewrite,
    SmtpSettings,
    SmtpUser,
    Strategy,
    Webhook,
    Workspace,
    WorkspaceLoadBalancing,
)
from .providers import (
    PROVIDER_KINDS,
    GmailSettings,
    MailgunSettings,
    MandrillSettings,
    ProviderSettings,
    SandboxSettings,
    UpstreamSmtpSettings,
)
from .settings import Settings

__all__ = [
    "MAX_POOLS",
    "MAX_POOL_MEMBERS",
    "PROVIDER_KINDS",
    "ApiKey",
    "DeliverySettings",
    "GmailSettings",
    "HealthSettings",
    "HttpSettings",
    "MailgunSettings",
    "MandrillSettings",
    "Pool",
    "PoolMember",
    "ProviderSettings",
    "RateLimits",
    "RetryPolicySettings",
    "SandboxSettings",
    "SenderRewrite",
    "Settings",
    "SmtpSettings",
    "SmtpUser",
    "Strategy",
    "UpstreamSmtpSettings",
    "Webhook",
    "Workspace",
    "WorkspaceLoadBalancing",
    "json_path",
    "load_settings",
    "normalize_domain",
    "normalize_pattern",
    "validation_problems",
]

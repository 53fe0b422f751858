"""The configuration file's shape (DESIGN.md "Configuration file"), validated with pydantic.

Only structure and single-field rules live here; rules that relate objects to each other
(unknown workspace in a pool, a domain served twice) are in `checks.py`.
"""

from __future__ import annotations

import ipaddress
import socket
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, HttpUrl, field_validator, model_validator

from .domains import normalize_domain, normalize_pattern
from .providers import (
    GmailSettings,
    MailgunSettings,
    MandrillSettings,
    ProviderSettings,
    SandboxSettings,
    UpstreamSmtpSettings,
)
from .secrets import NonEmptySecret, Secret

__all__ = [
    "ApiKey",
    "DeliverySettings",
    "HealthSettings",
    "HttpSettings",
    "Pool",
    "PoolMember",
    "RateLimits",
    "RetryPolicySettings",
    "SenderRewrite",
    "SmtpSettings",
    "SmtpUser",
    "Strategy",
    "Webhook",
    "Workspace",
    "WorkspaceLoadBalancing",
]

Identifier = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")]
Domain = Annotated[str, AfterValidator(normalize_domain)]
DomainPattern = Annotated[str, AfterValidator(normalize_pattern)]
Strategy = Literal["capacity_weighted", "round_robin", "least_used", "random_weighted"]


def _two_decimals(value: float) -> float:
    if round(value, 2) != value:
        raise ValueError(f"{value} has more than 2 decimal places (weights are stored as DECIMAL(5,2))")
    return value


# PRD TR4 stores weights as DECIMAL(5,2): 0 to 999.99 in steps of 0.01; 0 turns a member off.
Weight = Annotated[float, Field(ge=0.0, le=999.99), AfterValidator(_two_decimals)]


def _email(value: str) -> str:
    """`local@domain` lower-cased, the domain normalised; raise ValueError naming the value."""
    local, at, domain = value.strip().rpartition("@")
    if not at or not local or any(c.isspace() or c in '<>(),;:"' for c in local):
        raise ValueError(f'"{value}" is not an email address (local@domain)')
    try:
        return f"{local.lower()}@{normalize_domain(domain)}"
    except ValueError:
        raise ValueError(f'"{value}" is not an email address (local@domain)') from None


EmailAddress = Annotated[str, AfterValidator(_email)]


class _Model(BaseModel):
    # No infinities or NaN: they cannot be stored (PostgreSQL, MariaDB) nor shown back as JSON.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError as exc:
        raise ValueError(f'"{value}" is not an IP network (e.g. "127.0.0.0/8")') from exc


class SmtpUser(_Model):
    username: str = Field(min_length=1)
    password: NonEmptySecret  # "" (or env:X with X set to "") would be no password at all


class SmtpSettings(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=2525, ge=0, le=65535)
    hostname: str = Field(default_factory=socket.getfqdn)
    max_message_size: int = Field(default=26_214_400, ge=1024)
    max_recipients: int = Field(default=100, ge=1, le=10_000)
    users: list[SmtpUser] = []
    allowed_networks: list[Annotated[str, AfterValidator(_network)]] = ["127.0.0.0/8", "::1/128"]
    auth_require_tls: bool = True
    tls_cert: Path | None = None
    tls_key: Path | None = None
    timeout_seconds: float = Field(default=300.0, gt=0)

    @model_validator(mode="after")
    def _tls_pair(self) -> SmtpSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self


class ApiKey(_Model):
    name: str = Field(min_length=1)
    key: Secret
    role: Literal["admin", "operator", "viewer"] = "viewer"


class HttpSettings(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    api_keys: list[ApiKey] = []


SenderRewrite = Literal["keep", "domain", "default_sender"]


class WorkspaceLoadBalancing(_Model):
    """How a workspace takes part in pools. `sender_rewrite` applies only to mail a pool routed here:
    `keep` the sender, rewrite its `domain` to the workspace's primary domain (its first non-wildcard
    domain), or send as `default_sender` (else the gmail section's `default_sender`)."""

    enabled: bool = False
    pools: list[Identifier] = []
    default_weight: Weight = 1.0
    min_capacity_threshold: float = Field(default=0.1, ge=0.0, le=1.0)
    priority: int = Field(default=0, ge=0)
    sender_rewrite: SenderRewrite = "keep"
    default_sender: EmailAddress | None = None


def _timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f'"{value}" is not an IANA time zone (e.g. "America/New_York")') from exc
    return value


class RateLimits(_Model):
    """Daily limits (PRD TR5) and optional pacing. `workspace_daily` 0 or absent means no workspace limit, as
    in the previous relay; the per-user limit is `custom_user_limits[email]`, else `per_user_daily`, else the
    global `default_per_user_daily`."""

    workspace_daily: int | None = Field(default=None, ge=0)
    per_user_daily: int | None = Field(default=None, ge=0)
    custom_user_limits: dict[str, Annotated[int, Field(ge=0)]] = {}
    window: Literal["rolling_24h", "calendar_day"] = "rolling_24h"
    reset_timezone: Annotated[str, AfterValidator(_timezone)] = "UTC"
    count_by: Literal["message", "recipient"] = "message"
    per_second: int | None = Field(default=None, ge=1)
    per_minute: int | None = Field(default=None, ge=1)

    @field_validator("custom_user_limits")
    @classmethod
    def _lower_emails(cls, value: dict[str, int]) -> dict[str, int]:
        return {email.strip().lower(): limit for email, limit in value.items()}


class HealthSettings(_Model):
    """Active checks and the passive circuit breaker of one workspace (issue 6); the defaults suit most."""

    checks_enabled: bool = True
    check_interval_seconds: float = Field(default=60.0, ge=1.0)
    check_timeout_seconds: float = Field(default=10.0, gt=0)
    consecutive_failures: int = Field(default=5, ge=1)
    failure_rate: float = Field(default=0.5, gt=0.0, le=1.0)
    window_seconds: float = Field(default=60.0, gt=0)
    min_requests: int = Field(default=20, ge=1)
    base_open_seconds: float = Field(default=30.0, gt=0)
    max_open_seconds: float = Field(default=600.0, gt=0)
    decay_seconds: float = Field(default=300.0, gt=0)

    @model_validator(mode="after")
    def _open_bounds(self) -> HealthSettings:
        if self.max_open_seconds < self.base_open_seconds:
            raise ValueError("max_open_seconds must be at least base_open_seconds")
        return self


_LATER_PROVIDERS = ("sendgrid", "ses", "postmark")


class Workspace(_Model):
    id: Identifier
    domains: list[DomainPattern] = []
    domain: DomainPattern | None = None  # legacy single-domain form of the previous relay
    display_name: str | None = None
    # What the provider charges per 1,000 messages, in the operator's currency: the dashboard's spend figures.
    cost_per_1000: float | None = Field(default=None, ge=0, le=1_000_000)
    load_balancing: WorkspaceLoadBalancing = WorkspaceLoadBalancing()
    rate_limits: RateLimits = RateLimits()
    health: HealthSettings = HealthSettings()
    gmail: GmailSettings | None = None
    mailgun: MailgunSettings | None = None
    mandrill: MandrillSettings | None = None
    smtp: UpstreamSmtpSettings | None = None
    sandbox: SandboxSettings | None = None

    @model_validator(mode="before")
    @classmethod
    def _later_providers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for kind in _LATER_PROVIDERS:
                if kind in data:
                    raise ValueError(
                        f'provider kind "{kind}" is not supported yet (use gmail, mailgun, mandrill, smtp or sandbox)'
                    )
        return data

    @model_validator(mode="after")
    def _one_provider(self) -> Workspace:
        sections = [s for s in (self.gmail, self.mailgun, self.mandrill, self.smtp, self.sandbox) if s]
        if len(sections) != 1:
            raise ValueError(
                "a workspace needs exactly one provider section: gmail, mailgun, mandrill, smtp "
                f"or sandbox (found {len(sections)})"
            )
        return self

    @property
    def provider(self) -> ProviderSettings:
        for section in (self.gmail, self.mailgun, self.mandrill, self.smtp, self.sandbox):
            if section is not None:
                return section
        raise AssertionError("validated to have one provider section")

    @property
    def all_domains(self) -> list[str]:
        extra = [self.domain] if self.domain and self.domain not in self.domains else []
        return [*self.domains, *extra]

    @property
    def primary_domain(self) -> str | None:
        """The first domain in `all_domains` that is not a wildcard: where `sender_rewrite: domain` points."""
        return next((d for d in self.all_domains if not d.startswith("*.")), None)


class PoolMember(_Model):
    workspace_id: Identifier
    weight: Weight = 1.0
    enabled: bool = True


class Pool(_Model):
    id: Identifier
    name: str = Field(min_length=1, max_length=255)
    domain_patterns: list[DomainPattern] = Field(min_length=1)
    strategy: Strategy = "capacity_weighted"
    enabled: bool = True
    workspaces: list[PoolMember] = []
    # Other workspaces one delivery pass may fail over to after the first pick; None means every member.
    max_failover_attempts: int | None = Field(default=None, ge=0, le=49)
    # Never eject more than this share of the pool's members at once, counted after the ejection (Envoy's
    # max_ejection_percent): the last healthy-looking members keep taking mail rather than none.
    max_ejection_percent: float = Field(default=50.0, ge=0.0, le=100.0)


EVENT_PATTERN = r"^(\*|[a-z_]+\.\*|[a-z_]+\.[a-z_]+)$"


class Webhook(_Model):
    """An endpoint Relay posts events to (issue 8). `format: relay` posts each event as JSON signed with
    `X-Relay-Signature`; `mandrill` posts Mandrill's form-encoded `mandrill_events` signed as Mandrill does, for
    consumers of the previous relay. `events` are patterns: `*`, `message.*`, `load_balancing.pool_exhausted`."""

    id: Identifier | None = None  # default: derived from the URL
    url: HttpUrl
    secret: Secret | None = None
    events: list[Annotated[str, Field(pattern=EVENT_PATTERN)]] = ["*"]
    format: Literal["relay", "mandrill"] = "relay"
    # Share of `load_balancing.workspace_selected` events posted (one per pool send): 0.1 posts one in ten.
    workspace_selected_sample: float = Field(default=1.0, ge=0.0, le=1.0)
    enabled: bool = True


class RetryPolicySettings(_Model):
    base_seconds: float = Field(default=30.0, gt=0)
    factor: float = Field(default=2.0, ge=1.0)
    max_seconds: float = Field(default=1800.0, gt=0)
    max_attempts: int = Field(default=15, ge=1)
    max_age_seconds: float = Field(default=172_800.0, gt=0)
    quota_retry_seconds: float = Field(default=300.0, gt=0)
    auth_recheck_seconds: float = Field(default=300.0, gt=0)


class DeliverySettings(_Model):
    # false: this process accepts and queues but never delivers (an ingress-only node; another process on the
    # same database delivers). Also how `bench.smtp` measures accepting alone, as Postfix does with qmgr stopped.
    enabled: bool = True
    concurrency: int = Field(default=64, ge=1, le=10_000)
    lease_seconds: float = Field(default=300.0, gt=0)
    poll_interval_seconds: float = Field(default=1.0, gt=0)
    send_timeout_seconds: float = Field(default=120.0, gt=0)
    retry: RetryPolicySettings = RetryPolicySettings()

    @model_validator(mode="after")
    def _lease_outlives_send(self) -> DeliverySettings:
        if self.lease_seconds <= self.send_timeout_seconds:
            raise ValueError(
                "lease_seconds must be longer than send_timeout_seconds, or a slow send could be "
                "claimed and sent again by another worker"
            )
        return self


SuppressionReason = Literal["hard_bounce", "complaint", "unsubscribe"]


class SuppressionSettings(_Model):
    """The suppression list (issue 8): recipients a provider reported as hard-bounced, complaining or unsubscribed
    join it (`on` names which of these do); with `enabled`, a new message to a listed recipient is refused
    (SMTP RCPT and `POST /api/v1/messages`). `enabled: false` keeps recording but refuses nothing."""

    enabled: bool = True
    on: list[SuppressionReason] = ["hard_bounce", "complaint", "unsubscribe"]

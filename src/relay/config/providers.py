"""Provider sections of a workspace, one model per provider kind (the section's key in the config)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, HttpUrl, ValidationError, model_validator

from .secrets import NonEmptySecret, Secret

__all__ = [
    "PROVIDER_KINDS",
    "GmailSettings",
    "HeaderRewrite",
    "HeaderRewriteRule",
    "MailgunSettings",
    "MailgunTracking",
    "MandrillSettings",
    "MandrillTracking",
    "ProviderSettings",
    "SandboxSettings",
    "UpstreamSmtpSettings",
]


def _exact_http_url(value: str) -> str:
    """An http(s) URL, returned exactly as given (a signature covers its bytes)."""
    try:
        HttpUrl(value)
    except ValidationError as exc:
        problem = exc.errors()[0].get("msg", "invalid") if exc.errors() else "invalid"
        raise ValueError(f"not an http(s) URL: {problem}") from None
    if value != value.strip():
        raise ValueError("the URL has leading or trailing spaces")
    return value


class _Section(BaseModel):
    # No infinities or NaN: they cannot be stored (PostgreSQL, MariaDB) nor shown back as JSON.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class HeaderRewriteRule(_Section):
    """Set `header_name` to `new_value` (replacing it, or adding it when missing); an empty value removes it."""

    header_name: str = Field(min_length=1, max_length=76, pattern=r"^[!-9;-~]+$")  # RFC 5322 field-name
    new_value: str = Field(default="", max_length=900, pattern=r"^[^\r\n]*$")  # no header injection


class HeaderRewrite(_Section):
    enabled: bool = False
    rules: list[HeaderRewriteRule] = []


class _ProviderSection(_Section):
    enabled: bool = True
    enable_webhooks: bool = False
    header_rewrite: HeaderRewrite = HeaderRewrite()


class GmailSettings(_ProviderSection):
    kind: Literal["gmail"] = "gmail"
    service_account_file: Path | None = None
    service_account_env: str | None = None
    service_account_json: Secret | None = None
    default_sender: str | None = None
    require_valid_sender: bool = False
    base_url: HttpUrl = HttpUrl("https://gmail.googleapis.com")

    @model_validator(mode="after")
    def _one_key_source(self) -> GmailSettings:
        given = [
            self.service_account_file is not None,
            self.service_account_env is not None,
            self.service_account_json is not None,
        ]
        if sum(given) != 1:
            raise ValueError("give exactly one of service_account_file, service_account_env, service_account_json")
        return self


class MailgunTracking(_Section):
    opens: bool = False
    clicks: bool = False
    unsubscribe: bool = False


class MailgunSettings(_ProviderSection):
    kind: Literal["mailgun"] = "mailgun"
    api_key: Secret
    domain: str | None = None  # default: the workspace's first domain
    region: Literal["us", "eu"] = "us"
    base_url: HttpUrl | None = None  # default: by region
    tracking: MailgunTracking = MailgunTracking()
    default_tags: list[str] = []
    # The account's "HTTP webhook signing key" (Mailgun: Settings > API Security), which signs every webhook
    # POST; `POST /webhooks/inbound/mailgun` accepts events signed with the key of any mailgun workspace.
    webhook_signing_key: NonEmptySecret | None = None


class MandrillTracking(_Section):
    opens: bool = False
    clicks: bool = False
    auto_text: bool = False
    auto_html: bool = False
    inline_css: bool = False
    url_strip_qs: bool = False


class MandrillSettings(_ProviderSection):
    kind: Literal["mandrill"] = "mandrill"
    api_key: Secret
    base_url: HttpUrl = HttpUrl("https://mandrillapp.com/api/1.0")
    subaccount: str | None = None
    tracking: MandrillTracking = MandrillTracking()
    default_tags: list[str] = []
    # The key Mandrill generated for the webhook (webhooks/add, or the Webhooks page), and the URL exactly as it
    # was registered there: Mandrill signs that string, so it is kept byte for byte (no normalising).
    webhook_key: NonEmptySecret | None = None
    webhook_url: Annotated[str, AfterValidator(_exact_http_url)] | None = None


class UpstreamSmtpSettings(_ProviderSection):
    kind: Literal["smtp"] = "smtp"
    host: str = Field(min_length=1)
    port: int = Field(default=587, ge=1, le=65535)
    username: str | None = None
    password: Secret | None = None
    tls: Literal["starttls", "implicit", "none"] = "starttls"
    tls_verify: bool = True
    ca_file: Path | None = None
    timeout_seconds: float = Field(default=60.0, gt=0)
    max_connections: int = Field(default=4, ge=1, le=100)
    helo_name: str | None = None

    @model_validator(mode="after")
    def _credentials_pair(self) -> UpstreamSmtpSettings:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        return self


class SandboxSettings(_ProviderSection):
    kind: Literal["sandbox"] = "sandbox"
    outbox_dir: Path = Path("var/outbox")
    latency_ms: int = Field(default=0, ge=0)
    fail_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    fail_with: Annotated[str, Field(pattern=r"^[245]\d\d( .*)?$")] = "503"
    # The active health check answers this reply instead of checking the outbox ("535 5.7.8 …" = refused
    # credentials, anything else = unreachable); null: a real check of the outbox directory.
    check_fail_with: Annotated[str, Field(pattern=r"^[45]\d\d( .*)?$")] | None = None


ProviderSettings = GmailSettings | MailgunSettings | MandrillSettings | UpstreamSmtpSettings | SandboxSettings

PROVIDER_KINDS: tuple[str, ...] = ("gmail", "mailgun", "mandrill", "smtp", "sandbox")

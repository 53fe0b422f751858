"""The root of the configuration: the JSON file, overridden by `RELAY_*` environment variables."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .legacy_env import LegacyEnvSource
from .models import DeliverySettings, HttpSettings, Pool, SmtpSettings, SuppressionSettings, Webhook, Workspace

__all__ = ["Settings"]

# The URL schemes the store knows (`relay.store.database`); config must not import the store itself.
_DATABASE_BACKENDS = ("sqlite", "postgresql", "postgres", "mysql", "mariadb")


class Settings(BaseSettings):
    """Everything Relay reads at start.

    Precedence: `RELAY_*` env > the file > the previous relay's env names > defaults. The previous relay's
    names only fill what the file leaves out, so a file's `database_url` wins over `MYSQL_HOST`.
    """

    model_config = SettingsConfigDict(
        env_prefix="RELAY_",
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
        frozen=True,
    )

    smtp: SmtpSettings = SmtpSettings()
    http: HttpSettings = HttpSettings()
    database_url: str = "sqlite:///relay.db"
    redis_url: str | None = None
    fallback_workspace: str | None = None
    workspaces: list[Workspace] = []
    load_balancing_pools: list[Pool] = []
    webhooks: list[Webhook] = []
    delivery: DeliverySettings = DeliverySettings()
    suppression: SuppressionSettings = SuppressionSettings()
    default_per_user_daily: int = Field(default=2000, ge=0)  # RELAY_DEFAULT_PER_USER_DAILY
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["console", "json"] = "console"
    instance_name: str | None = Field(default=None, description="names this process in leases and logs")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Earlier sources win; nested objects are merged key by key, lists are replaced whole.
        return env_settings, init_settings, LegacyEnvSource(settings_cls)

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        try:
            backend = make_url(value).drivername.partition("+")[0]
        except (ArgumentError, ValueError):
            # The value is not echoed: it may carry a password.
            raise ValueError(
                'not a database URL (e.g. "sqlite:///var/relay.db", "postgresql://user@host/relay")'
            ) from None
        if backend not in _DATABASE_BACKENDS:
            raise ValueError(
                f'unsupported database "{backend}" (use sqlite://, postgresql:// or mysql:// / mariadb://, '
                "optionally with +driver)"
            )
        return value

    def workspace(self, workspace_id: str) -> Workspace | None:
        return next((w for w in self.workspaces if w.id == workspace_id), None)

    def redacted(self) -> dict[str, Any]:
        """The settings as JSON-able data with every secret masked, for logs and `config check`."""
        return self.model_dump(mode="json")

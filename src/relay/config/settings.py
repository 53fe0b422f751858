"""The root of the configuration: the JSON file, overridden by `RELAY_*` environment variables."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .legacy_env import LegacyEnvSource
from .models import DeliverySettings, HttpSettings, Pool, SmtpSettings, Webhook, Workspace

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Everything Relay reads at start. Precedence: `RELAY_*` env > the previous relay's env names > file."""

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
        return env_settings, LegacyEnvSource(settings_cls), init_settings

    def workspace(self, workspace_id: str) -> Workspace | None:
        return next((w for w in self.workspaces if w.id == workspace_id), None)

    def redacted(self) -> dict[str, Any]:
        """The settings as JSON-able data with every secret masked, for logs and `config check`."""
        return self.model_dump(mode="json")

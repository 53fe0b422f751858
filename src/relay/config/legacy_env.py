"""The previous (Go) relay's environment variable names, mapped onto Relay's settings.

Kept so an existing deployment's environment keeps working; `RELAY_*` variables win over these.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

from pydantic.fields import FieldInfo
from pydantic_settings import PydanticBaseSettingsSource

__all__ = ["LegacyEnvSource", "legacy_overrides"]

_SIMPLE: dict[str, tuple[str, ...]] = {
    "SMTP_HOST": ("smtp", "host"),
    "SMTP_PORT": ("smtp", "port"),
    "SMTP_MAX_SIZE": ("smtp", "max_message_size"),
    "WEB_UI_PORT": ("http", "port"),
    "QUEUE_MAX_RETRIES": ("delivery", "retry", "max_attempts"),
}


def legacy_overrides(env: dict[str, str]) -> dict[str, Any]:
    """Nested settings data taken from the previous relay's variables present in `env`."""
    data: dict[str, Any] = {}
    for name, path in _SIMPLE.items():
        if env.get(name):
            _set(data, path, env[name])
    user, password = env.get("SMTP_AUTH_USERNAME"), env.get("SMTP_AUTH_PASSWORD")
    if user and password:
        _set(data, ("smtp", "users"), [{"username": user, "password": password}])
    if env.get("MYSQL_HOST"):
        credentials = quote(env.get("MYSQL_USER", "root"), safe="")
        if env.get("MYSQL_PASSWORD"):
            credentials += ":" + quote(env["MYSQL_PASSWORD"], safe="")
        url = f"mysql://{credentials}@{env['MYSQL_HOST']}:{env.get('MYSQL_PORT', '3306')}"
        _set(data, ("database_url",), f"{url}/{env.get('MYSQL_DATABASE', 'relay')}")
    return data


def _set(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        data = data.setdefault(key, {})
    data[path[-1]] = value


class LegacyEnvSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return legacy_overrides(dict(os.environ))

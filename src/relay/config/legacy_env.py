"""The previous (Go) relay's environment variable names, mapped onto Relay's settings.

Kept so an existing deployment's environment keeps working. They only fill gaps: `RELAY_*` variables and
the config file both win over them (see `Settings`).

Kubernetes service links inject variables such as `SMTP_PORT=tcp://10.96.0.12:25` for a Service named
"smtp"; a value that is not a plain integer where one is expected is therefore ignored, not an error.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import quote

from pydantic.fields import FieldInfo
from pydantic_settings import PydanticBaseSettingsSource

__all__ = ["LegacyEnvSource", "legacy_overrides"]

_INTEGERS: dict[str, tuple[str, ...]] = {
    "SMTP_PORT": ("smtp", "port"),
    "SMTP_MAX_SIZE": ("smtp", "max_message_size"),
    "WEB_UI_PORT": ("http", "port"),
    "QUEUE_MAX_RETRIES": ("delivery", "retry", "max_attempts"),
    "QUEUE_DAILY_RATE_LIMIT": ("default_per_user_daily",),
}
_STRINGS: dict[str, tuple[str, ...]] = {
    "SMTP_HOST": ("smtp", "host"),
}


def _integer(value: str | None) -> int | None:
    """`"25"` → 25; anything else (unset, empty, `tcp://10.96.0.12:25`) → None."""
    if value is None or not re.fullmatch(r"[0-9]+", value.strip()):
        return None
    return int(value)


def legacy_overrides(env: dict[str, str]) -> dict[str, Any]:
    """Nested settings data taken from the previous relay's variables present in `env`."""
    data: dict[str, Any] = {}
    for name, path in _STRINGS.items():
        if env.get(name):
            _set(data, path, env[name])
    for name, path in _INTEGERS.items():
        number = _integer(env.get(name))
        if number is not None:
            _set(data, path, number)
    user, password = env.get("SMTP_AUTH_USERNAME"), env.get("SMTP_AUTH_PASSWORD")
    if user and password:
        _set(data, ("smtp", "users"), [{"username": user, "password": password}])
    if env.get("MYSQL_HOST"):
        credentials = quote(env.get("MYSQL_USER", "root"), safe="")
        if env.get("MYSQL_PASSWORD"):
            credentials += ":" + quote(env["MYSQL_PASSWORD"], safe="")
        port = _integer(env.get("MYSQL_PORT"))  # a Service named "mysql" injects MYSQL_PORT=tcp://…
        url = f"mysql://{credentials}@{env['MYSQL_HOST']}:{3306 if port is None else port}"
        _set(data, ("database_url",), f"{url}/{env.get('MYSQL_DATABASE', 'relay')}")
    if env.get("MANDRILL_WEBHOOK_URL", "").strip():
        # The previous relay posted Mandrill-shaped message events to this one URL (unsigned); Relay signs them
        # when RELAY_MANDRILL_WEBHOOK_KEY is set, as Mandrill does.
        hook: dict[str, Any] = {
            "id": "mandrill-legacy",
            "url": env["MANDRILL_WEBHOOK_URL"].strip(),
            "format": "mandrill",
            "events": ["message.*"],
        }
        if env.get("RELAY_MANDRILL_WEBHOOK_KEY"):
            hook["secret"] = "env:RELAY_MANDRILL_WEBHOOK_KEY"  # noqa: S105 (a reference, not a secret)
        _set(data, ("webhooks",), [hook])
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

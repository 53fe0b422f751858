"""Secret values in the config file: literal strings or `env:NAME` references, never printed."""

from __future__ import annotations

import os
from typing import Annotated, Any

from pydantic import BeforeValidator, SecretStr, ValidationInfo

__all__ = ["UNRESOLVED", "EnvSecret", "NonEmptySecret", "Secret", "resolve_secret"]

_ENV_PREFIX = "env:"


class EnvSecret(SecretStr):
    """A secret read from the environment, remembering where from: a workspace stored in the database keeps the
    `env:NAME` reference, never the value."""

    def __init__(self, value: str, reference: str) -> None:
        super().__init__(value)
        self.reference = reference


UNRESOLVED = {"resolve_env": False}
"""Validation context that checks `env:NAME` references without reading them (`relay config apply` runs where
the serving processes' environment is not)."""


def resolve_secret(value: Any, info: ValidationInfo | None) -> Any:
    """Replace `env:NAME` with the value of environment variable NAME; raise if it is not set."""
    if isinstance(value, str) and value.startswith(_ENV_PREFIX):
        name = value[len(_ENV_PREFIX) :]
        if not name:
            raise ValueError('"env:" needs a variable name, e.g. "env:RELAY_ADMIN_KEY"')
        if _unresolved(info):
            return EnvSecret(os.environ.get(name, ""), value)
        resolved = os.environ.get(name)
        if resolved is None:
            raise ValueError(f"environment variable {name} is not set")
        return EnvSecret(resolved, value)
    return value


def resolve_non_empty_secret(value: Any, info: ValidationInfo | None) -> Any:
    """`resolve_secret`, and refuse an empty result, naming the variable when it came from one."""
    resolved = resolve_secret(value, info)
    if isinstance(resolved, EnvSecret) and _unresolved(info):
        return resolved
    if resolved == "" or (isinstance(resolved, SecretStr) and resolved.get_secret_value() == ""):
        if isinstance(value, str) and value.startswith(_ENV_PREFIX):
            raise ValueError(f"environment variable {value[len(_ENV_PREFIX) :]} is empty")
        raise ValueError("must not be empty")
    return resolved


def _unresolved(info: ValidationInfo | None) -> bool:
    return info is not None and isinstance(info.context, dict) and info.context.get("resolve_env") is False


Secret = Annotated[SecretStr, BeforeValidator(resolve_secret)]
NonEmptySecret = Annotated[SecretStr, BeforeValidator(resolve_non_empty_secret)]
